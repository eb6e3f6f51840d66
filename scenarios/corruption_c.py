"""Real CIFAR10-C and ImageNet-C test-time streams, read from a local directory (no download).

- ``cifar10_c``: Hendrycks & Dietterich's release layout, ``<dir>/<corruption>.npy`` (uint8,
  (5·n, 32, 32, 3): severities 1..5 stacked, n = 10,000 in the release) and ``<dir>/labels.npy``
  (the labels, repeated per severity). Default directory ``$CLBENCH_DATA_DIR/CIFAR-10-C`` (or
  ``../shared/data/CIFAR-10-C``). Batch size 200, as the CoTTA CIFAR protocol.
- ``imagenet_c``: the folder release, ``<dir>/<corruption>/<severity>/<wnid>/*.JPEG``; classes
  are the sorted class folder names of the first corruption. ``n_examples`` images (5,000, the
  CoTTA subset size) are picked by a fixed-seed permutation of the sorted file list, the same
  files for every corruption (RobustBench ships a fixed id list that is not bundled here, so the
  subset differs from it). Images are resized (shorter side 256) and centre-cropped to 224 when
  they are not already 224 px. Batch size 64.

Images are kept as uint8 (N, 3, H, W); the test-time loop scales them to [0, 1] per batch
(ImageNet-C at 5,000 x 15 domains is ~11 GB as uint8; ``imagenet_c`` with ``storage=disk`` keeps
each domain's files on disk instead and decodes the rows a batch reads, see
:class:`ImageNetCConfig`). Bring a model pretrained on the clean
dataset (``model.weights``). ``imagenet_c`` has no source data. ``cifar10_c`` with
``clean_source=true`` has one, as RobustBench evaluates clean accuracy: the first ``n_examples``
images of the clean CIFAR-10 test set (the images the corruptions were made from), read from
torchvision's python batch ``cifar-10-batches-py/test_batch`` (where
``torchvision.datasets.CIFAR10(<dir>, train=False)``, which RobustBench's ``load_cifar10`` calls,
leaves it): inside the CIFAR-10-C folder, or beside it (RobustBench's layout,
``<dir>/{CIFAR-10-C, cifar-10-batches-py}``; with the default folder that is
``$CLBENCH_DATA_DIR/cifar-10-batches-py``, where ``split_cifar10`` reads it too). The
Hendrycks & Dietterich release ships no clean images. Missing files raise
:class:`DataUnavailableError` naming the expected layout.

VERSION history: 1 = initial. 2 = ``cifar10_c``'s ``clean_source`` option (default off: the
same stream as version 1). ``imagenet_c``'s ``storage`` option changes where the images are held,
not the stream (the same content hash), so it has no version of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
from torch import Tensor

from clbench.errors import ConfigError, DataUnavailableError
from clbench.lazy_images import LazyImages
from clbench.protocol import Scenario
from clbench.registry import register_scenario
from clbench.streams import Experience, SourceData, Split, Stream
from scenarios._common import DATA_SEED
from scenarios.mnist import shared_data_dir
from scenarios.mnist_c import CORRUPTIONS

VERSION = "2"
CLEAN_FOLDER = "cifar-10-batches-py"  # torchvision's extracted cifar-10-python.tar.gz


def _data_dir(given: str, default: str) -> Path:
    if given:
        return Path(given).expanduser()
    env = os.environ.get("CLBENCH_DATA_DIR")
    return (Path(env) if env else shared_data_dir()) / default


def _check(severity: int, corruptions: tuple[str, ...]) -> None:
    if not 1 <= severity <= 5:
        raise ConfigError("scenario.severity", severity, "an integer 1..5")
    bad = [c for c in corruptions if c not in CORRUPTIONS]
    if bad or not corruptions:
        raise ConfigError("scenario.corruptions", bad, CORRUPTIONS)


def _stream(name: str, domains: list[tuple[Tensor, Tensor]], num_classes: int, names: tuple[str, ...],
            severity: int, batch_size: int, doc: str, source: SourceData | None = None) -> Stream:
    exps = []
    for i, (x, y) in enumerate(domains):
        empty = Split(x[:0], y[:0])
        exps.append(Experience(i, 0, tuple(range(num_classes)), empty, empty, Split(x, y)))
    meta = {"domains": list(names), "severity": severity, "batch_size": batch_size}
    return Stream(name, VERSION, "test_time", tuple(exps), num_classes, doc, source=source, meta=meta)


def clean_cifar10_test(folder: Path, n: int, verify: bool) -> Split:
    """The first ``n`` clean CIFAR-10 test images as float32 (N, 3, 32, 32) in [0, 1] (what the
    test-time loop makes of uint8 images) with their labels, from ``test_batch`` in
    ``<folder>/cifar-10-batches-py`` or, failing that, ``<folder>/../cifar-10-batches-py``.
    ``verify``: check the file's md5 against torchvision's list first. Read with an unpickler
    that admits numpy arrays only (``scenarios.split_cifar``'s)."""
    from scenarios._vision import md5
    from scenarios.split_cifar import _ArrayUnpickler

    cands = [folder / CLEAN_FOLDER / "test_batch", folder.parent / CLEAN_FOLDER / "test_batch"]
    path = next((p for p in cands if p.is_file()), None)
    layout = (f"the clean CIFAR-10 test set as torchvision's python batch, {cands[0]} or (RobustBench's "
              f"layout, beside the CIFAR-10-C folder) {cands[1]}: the extracted cifar-10-python.tar.gz, e.g. "
              "from torchvision.datasets.CIFAR10(<dir>, train=False, download=True) on a connected machine")
    if path is None:
        raise DataUnavailableError(f"cifar10_c clean_source: no test_batch; expected {layout}")
    if verify:
        from torchvision.datasets import CIFAR10

        want, got = dict(CIFAR10.test_list)["test_batch"], md5(path)
        if got != want:
            raise DataUnavailableError(f"cifar10_c clean_source: {path} has md5 {got}, torchvision lists "
                                       f"{want} (a corrupt or different copy; scenario.verify_checksums=false "
                                       "reads it anyway)")
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is not a batch
        raise DataUnavailableError(f"cifar10_c clean_source: {path} is not a CIFAR python batch ({exc}); "
                                   f"expected {layout}") from exc
    data, labels = (obj.get("data"), obj.get("labels")) if isinstance(obj, dict) else (None, None)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072 and labels is not None and len(labels) == len(data)):
        raise DataUnavailableError(f"cifar10_c clean_source: {path} lacks a uint8 'data' array (N, 3072) with as "
                                   f"many 'labels'; expected {layout}")
    x = torch.from_numpy(np.array(data[:n])).reshape(-1, 3, 32, 32).float().div_(255.0)
    return Split(x, torch.as_tensor(np.asarray(labels[:n], dtype=np.int64)))


@dataclass(frozen=True)
class CIFAR10CConfig:
    """Options of ``cifar10_c`` (data_dir empty = the default location).

    Attributes:
        data_dir: folder with ``<corruption>.npy`` and ``labels.npy``; empty =
            ``$CLBENCH_DATA_DIR/CIFAR-10-C`` or ``../shared/data/CIFAR-10-C``.
        severity: corruption severity 1..5 (CTTA standard: 5).
        corruptions: the domains in stream order (default: the 15 in the standard CTTA order).
        n_examples: images per domain: the first ``n_examples`` of the severity's block.
        batch_size: test-time batch size of the online stream.
        clean_source: give the stream a source split (``cifar10``): the first ``n_examples``
            clean CIFAR-10 test images (see the module docstring for where they are read), so
            that the source model's clean accuracy (``source_acc_before``/``_after``) is scored.
            Its train, val and test splits are all these images: there is no other clean split,
            and methods that calibrate on source data (``needs_source_data``) see them as
            ``train``. With a source split the runner pretrains a foundation on ``train`` unless
            ``foundation.pretrain=false``: set it when the model comes with its weights.
        verify_checksums: check ``test_batch``'s md5 against torchvision's list before reading
            it (a synthetic or re-encoded copy needs false); only with ``clean_source``.
    """

    data_dir: str = ""
    severity: int = 5
    corruptions: tuple[str, ...] = CORRUPTIONS
    n_examples: int = 10000
    batch_size: int = 200
    clean_source: bool = False
    verify_checksums: bool = True

    def __post_init__(self) -> None:
        _check(self.severity, self.corruptions)


@register_scenario("cifar10_c")
class CIFAR10C(Scenario):
    """CIFAR10-C continual test-time stream from local ``.npy`` files (15 corruptions, severity 5)."""

    Config = CIFAR10CConfig
    VERSION = VERSION

    def build(self) -> Stream:
        c: CIFAR10CConfig = self.config
        root = _data_dir(c.data_dir, "CIFAR-10-C")
        files = [root / "labels.npy", *(root / f"{name}.npy" for name in c.corruptions)]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataUnavailableError(
                f"CIFAR10-C files missing: {', '.join(missing)}; expected <dir>/<corruption>.npy and "
                f"<dir>/labels.npy (the CIFAR-10-C release); set scenario.data_dir")
        source = None
        if c.clean_source:
            clean = clean_cifar10_test(root, c.n_examples, c.verify_checksums)
            source = SourceData("cifar10", clean, clean, clean)
        labels = np.load(files[0], mmap_mode="r")
        per = len(labels) // 5
        lo, hi = (c.severity - 1) * per, (c.severity - 1) * per + min(c.n_examples, per)
        y = torch.as_tensor(np.asarray(labels[lo:hi], dtype=np.int64))
        domains = []
        for f in files[1:]:
            arr = np.load(f, mmap_mode="r")
            if len(arr) != len(labels):
                raise DataUnavailableError(f"{f} has {len(arr)} images but labels.npy has {len(labels)}")
            domains.append((torch.from_numpy(np.array(arr[lo:hi])).permute(0, 3, 1, 2).contiguous(), y))
        return _stream("cifar10_c", domains, 10, c.corruptions, c.severity, c.batch_size, self.__doc__ or "",
                       source)


@dataclass(frozen=True)
class ImageNetCConfig:
    """Options of ``imagenet_c`` (data_dir empty = the default location).

    Attributes:
        data_dir: folder tree ``<corruption>/<severity>/<class>/*.JPEG``; empty =
            ``$CLBENCH_DATA_DIR/ImageNet-C`` or ``../shared/data/ImageNet-C``.
        severity: corruption severity 1..5 (CTTA standard: 5).
        corruptions: the domains in stream order (default: the 15 in the standard CTTA order).
        n_examples: images per domain, the same files in every domain (a fixed-seed pick).
        image_size: side in pixels of the centre crop (after resizing the shorter side to
            ``image_size * 256 / 224``); images already this size are kept as they are.
        batch_size: test-time batch size of the online stream.
        storage: ``memory``: every domain's images decoded at build into a uint8 tensor held in
            memory (~11 GB for 5,000 x 15 domains at 224 px); ``disk``: each domain keeps its
            files (:class:`clbench.lazy_images.LazyImages`) and decodes, with the same
            resize/crop (:func:`_load_image`, bit-identical uint8), only the rows indexed: the
            test-time loop reads a domain in slices of ``batch_size`` (its ``predict`` pass
            before adaptation and its online pass) and the stream's content hash in blocks of
            256, so no domain is ever decoded whole, but each image is decoded once for each of
            these three passes, one file after the other in the running process (no workers).
            Missing files are still refused at build; an unreadable one raises
            :class:`DataUnavailableError` when first decoded.
    """

    data_dir: str = ""
    severity: int = 5
    corruptions: tuple[str, ...] = CORRUPTIONS
    n_examples: int = 5000
    image_size: int = 224
    batch_size: int = 64
    storage: Literal["memory", "disk"] = "memory"

    def __post_init__(self) -> None:
        _check(self.severity, self.corruptions)
        if self.n_examples < 1 or self.image_size < 1:
            raise ConfigError("scenario.n_examples", self.n_examples, "n_examples >= 1, image_size >= 1")
        if self.storage not in ("memory", "disk"):
            raise ConfigError("scenario.storage", self.storage, ["memory", "disk"])


def _load_image(path: Path, size: int) -> Tensor:
    from PIL import Image

    with Image.open(path) as im:
        img = im.convert("RGB")
        if img.size != (size, size):
            w, h = img.size
            scale = round(size * 256 / 224) / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def _decode_file(path: str, size: int) -> Tensor:
    """:func:`_load_image` as the decoder of ``storage=disk`` (the same uint8 rows); an unreadable
    file raises :class:`DataUnavailableError`."""
    try:
        return _load_image(Path(path), size)
    except OSError as exc:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DataUnavailableError(f"ImageNet-C: {path} is not a readable image ({exc})") from exc


@register_scenario("imagenet_c")
class ImageNetC(Scenario):
    """ImageNet-C continual test-time stream from a local folder tree (15 corruptions, severity 5)."""

    Config = ImageNetCConfig
    VERSION = VERSION

    def build(self) -> Stream:
        c: ImageNetCConfig = self.config
        root = _data_dir(c.data_dir, "ImageNet-C")
        folders = [root / name / str(c.severity) for name in c.corruptions]
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise DataUnavailableError(
                f"ImageNet-C folders missing: {', '.join(missing)}; expected "
                f"<dir>/<corruption>/<severity>/<class>/*.JPEG; set scenario.data_dir")
        classes = sorted(p.name for p in folders[0].iterdir() if p.is_dir())
        files = sorted(p.relative_to(folders[0]) for k in classes for p in (folders[0] / k).iterdir()
                       if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        if not files:
            raise DataUnavailableError(f"no images under {folders[0]}/<class>/")
        pick = np.random.default_rng(DATA_SEED).permutation(len(files))[: c.n_examples]
        chosen = [files[i] for i in pick]
        y = torch.tensor([classes.index(f.parts[0]) for f in chosen], dtype=torch.long)
        domains = []
        for folder in folders:
            absent = [str(folder / f) for f in chosen if not (folder / f).is_file()]
            if absent:
                raise DataUnavailableError(f"ImageNet-C images missing: {absent[:3]} ...")
            if c.storage == "disk":  # decoded when indexed; stands in for the uint8 tensor
                x = cast(Tensor, LazyImages.from_files([folder / f for f in chosen], c.image_size,
                                                       decoder=_decode_file))
            else:
                x = torch.stack([_load_image(folder / f, c.image_size) for f in chosen])
            domains.append((x, y))
        return _stream("imagenet_c", domains, len(classes), c.corruptions, c.severity, c.batch_size,
                       self.__doc__ or "")

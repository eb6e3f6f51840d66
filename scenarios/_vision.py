"""Shared helpers of the real vision benchmarks read from a local directory (never downloaded):
the options they share, the data root and its one layout error, image decoding at a fixed size,
the seeded class order and the assembly of the stream.

Images are decoded into uint8 tensors (N, 3, H, W) and stay uint8 in the stream (or, with
``storage=disk`` on the benchmarks read from image files, stay on disk and are decoded when a batch
needs them: :mod:`clbench.lazy_images`, :func:`image_split`); the stream
declares how they are fed (``Stream.inputs``, :class:`clbench.augment.ImageInputs`): every forward
pass scales them to [0, 1] and normalises them with ``normalize``'s mean and std, and training
batches are augmented with a padded random crop (``crop_padding``) and a horizontal flip
(``hflip``), drawn per sample on the training device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import Tensor

from clbench.augment import ImageInputs
from clbench.errors import ConfigError, DataUnavailableError
from clbench.lazy_images import LazyImages, Loading, decode_image, lazy_images
from clbench.streams import Experience, Split, Stream
from scenarios._common import DATA_SEED, stratified_split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PYCIL_SEED = 1993  # PyCIL utils/data_manager.py: np.random.seed(1993); np.random.permutation(n)
Stats = tuple[tuple[float, float, float], tuple[float, float, float]]  # per-channel (mean, std) in [0, 1]
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class VisionData:
    """Options shared by the real vision benchmarks.

    Attributes:
        root: folder holding the dataset (or the dataset folder itself); empty =
            ``$CLBENCH_DATA_DIR`` or ``../shared/data``. Nothing is downloaded.
        n_experiences: number of experiences; the classes are split into equal groups in
            class order (see ``first_classes``).
        first_classes: 0: equal groups; k: the first experience takes k classes and the others
            split the rest equally (PyCIL's ``init_cls``, e.g. 50 for the B50 protocols).
        class_order_seed: seed of the class order, drawn as PyCIL does
            (``np.random.seed(s); np.random.permutation(n)``); 1993 gives PyCIL's and iCaRL's
            order; None keeps the sorted class ids.
        class_order: an explicit order (a permutation of the class ids); overrides the seed.
        n_classes: 0: every class (the published benchmark); k: only the first k class ids
            (a smaller stream for smoke tests; the layout checks then ask for k classes).
        image_size: side in pixels of the stored images (resized at load).
        val_fraction: share of each class's training images carved out as validation (fixed
            data seed); 0 keeps the published training sets whole.
        task_incremental: True: task ids given at train and test (task-IL).
        normalize: the mean and std every forward pass normalises the [0, 1]-scaled images with:
            ``dataset`` (the dataset's own, as its reference code uses), ``imagenet`` (for
            ImageNet-pretrained backbones) or ``none`` (mean 0, std 1: inputs in [0, 1], as
            L2P/CODA-Prompt feed their ViT).
        crop_padding: training augmentation: zero-pad by this many pixels and crop a random
            window of the image's size (torchvision ``RandomCrop(size, padding)``); 0 = none.
        hflip: training augmentation: random horizontal flip with probability 0.5.
        storage: ``memory``: every image decoded once, at build, into a uint8 tensor held in
            memory (the fast path); ``disk``: the split keeps the image files and decodes them
            when indexed (:class:`clbench.lazy_images.LazyImages`), and the trainer reads the
            training batches through a DataLoader, the same batches as with ``memory`` (the
            benchmarks read from image files only; CIFAR's pickled batches are read whole).
            Evaluation and a method's own passes over a split decode in the running process.
        workers: ``storage=disk``: the DataLoader's decoding processes (0: the training process).
        pin_memory: ``storage=disk``: batches in pinned memory when training on CUDA.
        persistent_workers: ``storage=disk``: keep the workers between the epochs of an experience.
    """

    root: str = ""
    n_experiences: int = 10
    first_classes: int = 0
    class_order_seed: int | None = PYCIL_SEED
    class_order: tuple[int, ...] = ()
    n_classes: int = 0
    image_size: int = 224
    val_fraction: float = 0.1
    task_incremental: bool = False
    normalize: Literal["dataset", "imagenet", "none"] = "dataset"
    crop_padding: int = 0
    hflip: bool = True
    storage: Literal["memory", "disk"] = "memory"
    workers: int = 0
    pin_memory: bool = True
    persistent_workers: bool = True

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ConfigError("scenario.image_size", self.image_size, "an integer >= 1")
        if self.n_experiences < 1:
            raise ConfigError("scenario.n_experiences", self.n_experiences, "an integer >= 1")
        if self.n_classes < 0:
            raise ConfigError("scenario.n_classes", self.n_classes, "0 (all classes) or a positive count")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("scenario.val_fraction", self.val_fraction, "a value in [0, 1)")
        if self.crop_padding < 0:
            raise ConfigError("scenario.crop_padding", self.crop_padding, "an integer >= 0")
        if self.storage not in ("memory", "disk"):
            raise ConfigError("scenario.storage", self.storage, ["memory", "disk"])
        if self.workers < 0 or (self.workers and self.storage != "disk"):
            raise ConfigError("scenario.workers", self.workers,
                              "0, or an integer >= 1 with scenario.storage=disk (DataLoader workers)")

    def loading(self) -> Loading:
        """How the trainer's DataLoader reads the images (``storage=disk``)."""
        return Loading(self.workers, self.pin_memory, self.persistent_workers)

    def inputs(self, stats: Stats) -> ImageInputs:
        """How the stream's uint8 images are normalised and augmented (``stats``: the dataset's own)."""
        mean, std = {"dataset": stats, "imagenet": IMAGENET_STATS,
                     "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}[self.normalize]
        return ImageInputs(mean, std, self.crop_padding, self.hflip)


@dataclass(frozen=True)
class FolderData(VisionData):
    """Options of the benchmarks stored as image files of any size.

    Attributes:
        crop_fraction: images are resized so their shorter side is ``image_size /
            crop_fraction``, then centre-cropped to ``image_size`` (0.875: the Resize(256) +
            CenterCrop(224) evaluation transform of the ImageNet-pretrained backbones; 1: resize
            the shorter side to ``image_size``).
    """

    crop_fraction: float = 0.875

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ConfigError("scenario.crop_fraction", self.crop_fraction, "a value in (0, 1]")


# --------------------------------------------------------------------------- the data root

def data_root(given: str) -> Path:
    """``scenario.root``, or ``$CLBENCH_DATA_DIR`` / ``../shared/data`` when empty."""
    from scenarios.mnist import shared_data_dir

    return Path(given).expanduser() if given else shared_data_dir()


def layout_error(name: str, root: Path, layout: str, problem: str) -> DataUnavailableError:
    """The one error of a missing or malformed dataset: what is wrong, where, and what is expected."""
    return DataUnavailableError(
        f"{name}: {problem} (looked in {root}); expected layout: {layout}. clbench reads this "
        "benchmark from a local copy and never downloads it: put the files there or set "
        "scenario.root=<dir> to a copy")


def find_dataset(given: str, folder: str, markers: Sequence[str], name: str, layout: str) -> Path:
    """The dataset folder: ``root`` itself or ``root/<folder>``, whichever holds every marker."""
    top = data_root(given)
    for cand in (top, top / folder):
        if all((cand / m).exists() for m in markers):
            return cand
    if not top.exists():
        raise layout_error(name, top, layout, "the folder does not exist")
    raise layout_error(name, top, layout, f"no {' and '.join(markers)} in {top} or in {top / folder}")


def md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# --------------------------------------------------------------------------- images

def read_image(path: Path, size: int, crop_fraction: float = 1.0) -> Tensor:
    """One image as uint8 (3, size, size): shorter side resized to ``size / crop_fraction``
    (PIL bilinear, as torchvision's Resize on PIL images), then centre-cropped
    (:func:`clbench.lazy_images.decode_image`, which ``storage=disk`` decodes with too)."""
    return decode_image(path, size, crop_fraction)


def read_images(paths: Sequence[Path], size: int, crop_fraction: float = 1.0) -> Tensor:
    """uint8 (N, 3, size, size), written into one preallocated tensor."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, p in enumerate(paths):
        out[i] = read_image(p, size, crop_fraction)
    return out


def image_split(listing: Sequence[tuple[Path, int]], c: VisionData, crop_fraction: float = 1.0) -> Split:
    """The images of ``listing`` (file, class id) at ``c.image_size`` with their labels: decoded
    now into a uint8 tensor (``c.storage=memory``) or kept on disk and decoded on access
    (``disk``: a :class:`clbench.lazy_images.LazyImages` with ``c.loading()``)."""
    paths = [p for p, _ in listing]
    y = label_tensor(y for _, y in listing)
    if c.storage == "disk":
        lazy = LazyImages.from_files(paths, c.image_size, crop_fraction, c.loading())
        return Split(cast(Tensor, lazy), y)  # stands in for the uint8 tensor (clbench.lazy_images)
    return Split(read_images(paths, c.image_size, crop_fraction), y)


def resize_batch(x: Tensor, size: int, chunk: int = 2048) -> Tensor:
    """uint8 (N, C, h, w) -> uint8 (N, C, size, size), bilinear with antialiasing."""
    import torchvision.transforms.v2.functional as F

    if x.shape[-2:] == (size, size):
        return x
    return torch.cat([F.resize(x[i : i + chunk], [size, size], antialias=True)
                      for i in range(0, len(x), chunk)]) if len(x) else x.new_empty((0, x.shape[1], size, size))


# --------------------------------------------------------------------------- class order and groups

def ordered_classes(n: int, c: VisionData) -> list[int]:
    """The class order: ``c.class_order``, else PyCIL's seeded permutation, else 0..n-1."""
    if c.class_order:
        if sorted(c.class_order) != list(range(n)):
            raise ConfigError("scenario.class_order", list(c.class_order), f"a permutation of 0..{n - 1}")
        return list(c.class_order)
    if c.class_order_seed is None:
        return list(range(n))
    return [int(k) for k in np.random.RandomState(c.class_order_seed).permutation(n)]


def class_groups(order: Sequence[int], n_experiences: int, first: int = 0) -> list[tuple[int, ...]]:
    """``order`` cut into ``n_experiences`` groups: equal ones, or ``first`` classes then equal ones."""
    n = len(order)
    if first:
        rest = n - first
        if not (0 < first < n and n_experiences > 1 and rest % (n_experiences - 1) == 0):
            raise ConfigError("scenario.first_classes", first,
                              f"0 < first_classes < {n} with the other {rest} classes dividing into "
                              f"n_experiences - 1 = {n_experiences - 1} equal groups")
        sizes = [first] + [rest // (n_experiences - 1)] * (n_experiences - 1)
    else:
        if n % n_experiences:
            raise ConfigError("scenario.n_experiences", n_experiences, f"a divisor of the {n} classes")
        sizes = [n // n_experiences] * n_experiences
    cuts = np.cumsum([0, *sizes])
    return [tuple(order[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


# --------------------------------------------------------------------------- the stream

def _carve(train: Split, fraction: float) -> tuple[Split, Split]:
    val_idx, train_idx = stratified_split(train.y.numpy(), [fraction], seed=DATA_SEED + 1)
    return train.subset(torch.as_tensor(train_idx)), train.subset(torch.as_tensor(val_idx))


def experiences(parts: Sequence[tuple[tuple[int, ...], Split]], test: Split, c: VisionData) -> tuple[Experience, ...]:
    """One experience per (classes, train split): validation carved from train, test = the test
    images of those classes (one shared split when the classes repeat, as in a domain stream).

    Raises:
        ConfigError: ``c.storage=disk`` but the loader gave splits held in memory (it does not
            read through :func:`image_split`), rather than ignore the option."""
    if c.storage == "disk" and any(lazy_images(s.x) is None for s in (test, *(p for _, p in parts))):
        raise ConfigError("scenario.storage", c.storage, "memory: this loader decodes its images when the "
                          "stream is built (storage=disk needs a loader that reads through image_split)")
    tests: dict[tuple[int, ...], Split] = {}  # one split shared by the experiences with those classes
    out = []
    for i, (classes, train) in enumerate(parts):
        classes = tuple(sorted(classes))
        if classes not in tests:
            tests[classes] = test.subset(torch.isin(test.y, torch.tensor(classes)))
        tr, val = _carve(train, c.val_fraction)
        task = i if c.task_incremental else 0
        out.append(Experience(i, task, classes, tr, val, tests[classes]))
    return tuple(out)


def class_incremental(train: Split, test: Split, num_classes: int, c: VisionData) -> tuple[tuple[Experience, ...], list[int]]:
    """Experiences of class groups in the configured order, and that order."""
    order = ordered_classes(num_classes, c)
    groups = class_groups(order, c.n_experiences, c.first_classes)
    parts = [(g, train.subset(torch.isin(train.y, torch.tensor(g)))) for g in groups]
    return experiences(parts, test, c), order


def make_stream(name: str, version: str, doc: str, exps: tuple[Experience, ...], num_classes: int,
                meta: dict[str, Any], inputs: ImageInputs, kind: str = "class_incremental") -> Stream:
    """The stream; task ids that differ make it task-incremental."""
    tasks = {e.task_id for e in exps}
    kind = "task_incremental" if len(tasks) > 1 else kind
    meta = {**meta, "normalize": {"mean": list(inputs.mean), "std": list(inputs.std)},
            "augment": {"crop_padding": inputs.crop_padding, "hflip": inputs.hflip}}
    return Stream(name, version, kind, exps, num_classes, doc, meta=meta, inputs=inputs)


def label_tensor(labels: Iterable[int]) -> Tensor:
    return torch.as_tensor(np.fromiter(labels, dtype=np.int64))


def check_classes(y: Tensor, n: int, name: str, root: Path, layout: str, used: int = 0) -> None:
    """Every label in 0..n-1, and every class in use (the first ``used``, or all n) with at
    least one training image."""
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n):
        raise layout_error(name, root, layout, f"labels {int(y.min())}..{int(y.max())} outside 0..{n - 1}")
    counts = torch.bincount(y, minlength=n) if len(y) else torch.zeros(n, dtype=torch.long)
    empty = (counts[: used or n] == 0).nonzero().flatten().tolist()
    if empty:
        raise layout_error(name, root, layout, f"classes {empty[:10]} have no training images")

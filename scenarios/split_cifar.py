"""Split CIFAR-10 and Split CIFAR-100 read from torchvision's on-disk python format (no download).

Layout under ``scenario.root`` (what ``torchvision.datasets.CIFAR10/CIFAR100(root, download=True)``
leaves: the extracted ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` of
https://www.cs.toronto.edu/~kriz/cifar.html):

- ``cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, batches.meta}``
- ``cifar-100-python/{train, test, meta}``

Each batch is a Python-2 pickle of a dict: ``data`` uint8 (N, 3072) (the R, G, B planes of a
32x32 image) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100); the meta file holds
``label_names`` / ``fine_label_names``. The pickles are read with an unpickler that admits numpy
arrays only (no other global can run), after their md5 is checked against torchvision's list
(``verify_checksums``, on by default).

Protocols: ``split_cifar10`` 5 experiences x 2 classes, ``split_cifar100`` 10 x 10
(``n_experiences=20``: 20 x 5; ``first_classes=50``: the B50 protocols), class-incremental, on the
official 50,000 / 10,000 train/test split (validation carved from train, ``val_fraction``). The
default class order is PyCIL's (G-U-N/PyCIL ``utils/data_manager.py``: ``np.random.seed(1993);
np.random.permutation(n)``; seed 1993 is iCaRL's, and for CIFAR-100 this gives iCaRL's order
68, 56, 78, 8, 23, ...); ``class_order_seed=None`` keeps 0..n-1, ``class_order`` sets any order.
Class ids stay the dataset's own (PyCIL relabels them by position in the order). Images stay
uint8 (N, 3, 32, 32); the stream normalises them with PyCIL's mean/std (``utils/data.py``) and
augments training batches as PyCIL does, RandomCrop(32, padding=4) + RandomHorizontalFlip, except
its ColorJitter(brightness=63/255) (:mod:`clbench.augment` has crop and flip only).

Provenance: Krizhevsky, "Learning Multiple Layers of Features from Tiny Images" (tech. report,
2009). Checksums (md5, torchvision 0.29 ``CIFAR10``/``CIFAR100``): archives
cifar-10-python.tar.gz c58f30108f718f92721af3b95e74349a, cifar-100-python.tar.gz
eb9058c3a382ffc7106e4002c42a8d85; the extracted files are checked one by one at load. Online
alternative (downloads): ``scenario=avalanche scenario.benchmark=SplitCIFAR10`` (or SplitCIFAR100).

VERSION history: 1 = initial.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clbench.errors import ConfigError
from clbench.protocol import Scenario
from clbench.registry import register_scenario
from clbench.streams import Split, Stream
from scenarios._vision import (
    Stats,
    VisionData,
    check_classes,
    class_incremental,
    find_dataset,
    layout_error,
    make_stream,
    md5,
    resize_batch,
)

VERSION = "1"
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # encode: bytes in protocol 2


@dataclass(frozen=True)
class _Variant:
    name: str
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str
    num_classes: int
    stats: Stats  # PyCIL's normalisation (utils/data.py iCIFAR10 / iCIFAR100)

    @property
    def layout(self) -> str:
        return f"<root>/{self.folder}/{{{', '.join((*self.train, self.test, self.meta))}}} (torchvision's CIFAR python pickles)"


CIFAR10 = _Variant("split_cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                   "test_batch", "batches.meta", "labels", "label_names", 10,
                   ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)))
CIFAR100 = _Variant("split_cifar100", "cifar-100-python", ("train",), "test", "meta", "fine_labels",
                    "fine_label_names", 100, ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)))


class _ArrayUnpickler(pickle.Unpickler):
    """Admits the globals a pickled numpy array needs and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _torchvision_md5(v: _Variant) -> dict[str, str]:
    from torchvision.datasets import CIFAR10 as TV10
    from torchvision.datasets import CIFAR100 as TV100

    tv = TV10 if v is CIFAR10 else TV100
    return {**dict(tv.train_list), **dict(tv.test_list), tv.meta["filename"]: tv.meta["md5"]}


def _unpickle(path: Path, v: _Variant, root: Path, want: str | None) -> dict[str, Any]:
    if want is not None:
        got = md5(path)
        if got != want:
            raise layout_error(v.name, root, v.layout, f"{path} has md5 {got}, torchvision lists {want} (a "
                               "corrupt or different copy; scenario.verify_checksums=false reads it anyway)")
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is not a batch
        raise layout_error(v.name, root, v.layout, f"{path} is not a CIFAR python batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise layout_error(v.name, root, v.layout, f"{path} holds a {type(obj).__name__}, not a dict")
    return obj


def _batch(obj: dict[str, Any], path: Path, v: _Variant, root: Path) -> tuple[np.ndarray, np.ndarray]:
    data, labels = obj.get("data"), obj.get(v.label_key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
            and labels is not None and len(labels) == len(data)):
        raise layout_error(v.name, root, v.layout, f"{path} lacks a uint8 'data' array of shape (N, 3072) "
                           f"with as many {v.label_key!r}")
    return data, np.asarray(labels, dtype=np.int64)


def load_cifar(c: SplitCIFARConfig, v: _Variant) -> tuple[Split, Split, list[str], dict[str, Any]]:
    """(train, test) as uint8 (N, 3, size, size), the label names and the files' md5 provenance."""
    if c.n_classes > v.num_classes:
        raise ConfigError("scenario.n_classes", c.n_classes, f"0 (all) or at most {v.num_classes}")
    base = find_dataset(c.root, v.folder, (*v.train, v.test, v.meta), v.name, v.layout)
    sums = _torchvision_md5(v) if c.verify_checksums else {}

    def read(files: tuple[str, ...]) -> Split:
        parts = [_batch(_unpickle(base / f, v, base, sums.get(f)), base / f, v, base) for f in files]
        x = torch.from_numpy(np.concatenate([p[0] for p in parts])).reshape(-1, 3, 32, 32)
        return Split(resize_batch(x, c.image_size), torch.from_numpy(np.concatenate([p[1] for p in parts])))

    train, test = read(v.train), read((v.test,))
    names = [str(n) for n in _unpickle(base / v.meta, v, base, sums.get(v.meta)).get(v.names_key, [])]
    n = c.n_classes or v.num_classes
    check_classes(train.y, v.num_classes, v.name, base, v.layout, used=c.n_classes)
    if c.n_classes:
        train, test = (s.subset(s.y < n) for s in (train, test))
    prov = {"md5_verified": bool(sums), "md5": {f: sums[f] for f in sorted(sums)}}
    return train, test, names[:n], prov


@dataclass(frozen=True)
class SplitCIFARConfig(VisionData):
    """Options of ``split_cifar10`` / ``split_cifar100`` (see :class:`scenarios._vision.VisionData`).

    Attributes:
        verify_checksums: check each file's md5 against torchvision's list of the official
            release before reading it (a synthetic or re-encoded copy needs false).

    ``storage`` is ``memory`` only: the pickled batches hold every image and are read whole.
    """

    n_experiences: int = 5
    image_size: int = 32
    crop_padding: int = 4
    verify_checksums: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.storage != "memory":
            raise ConfigError("scenario.storage", self.storage,
                              "memory (CIFAR's pickled batches are read whole; disk is for image files)")


@dataclass(frozen=True)
class SplitCIFAR100Config(SplitCIFARConfig):
    """Options of ``split_cifar100`` (10 x 10 by default; 20 for 20 x 5)."""

    n_experiences: int = 10


def _build(c: SplitCIFARConfig, v: _Variant, doc: str) -> Stream:
    train, test, names, prov = load_cifar(c, v)
    n = c.n_classes or v.num_classes
    exps, order = class_incremental(train, test, n, c)
    meta = {"dataset": v.folder, "split": "official train/test batches", "class_order": order,
            "image_size": c.image_size, "label_names": names, **prov}
    return make_stream(v.name, VERSION, doc, exps, n, meta, c.inputs(v.stats))


@register_scenario("split_cifar10")
class SplitCIFAR10(Scenario):
    """Split CIFAR-10 (5 x 2 classes, class-incremental) from the local torchvision python batches."""

    Config = SplitCIFARConfig
    VERSION = VERSION

    def build(self) -> Stream:
        return _build(self.config, CIFAR10, self.__doc__ or "")


@register_scenario("split_cifar100")
class SplitCIFAR100(Scenario):
    """Split CIFAR-100 (10 x 10 or 20 x 5 classes, class-incremental) from the local torchvision python batches."""

    Config = SplitCIFAR100Config
    VERSION = VERSION

    def build(self) -> Stream:
        return _build(self.config, CIFAR100, self.__doc__ or "")

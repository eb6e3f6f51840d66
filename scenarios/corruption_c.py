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
(ImageNet-C at 5,000 x 15 domains is ~11 GB as uint8). Neither scenario has source data: bring a
model pretrained on the clean dataset. Missing files raise :class:`DataUnavailableError` naming
the expected layout.

VERSION history: 1 = initial.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from clbench.errors import ConfigError, DataUnavailableError
from clbench.protocol import Scenario
from clbench.registry import register_scenario
from clbench.streams import Experience, Split, Stream
from scenarios._common import DATA_SEED
from scenarios.mnist import shared_data_dir
from scenarios.mnist_c import CORRUPTIONS

VERSION = "1"


def _data_dir(given: str, default: str) -> Path:
    if given:
        return Path(given)
    env = os.environ.get("CLBENCH_DATA_DIR")
    return (Path(env) if env else shared_data_dir()) / default


def _check(severity: int, corruptions: tuple[str, ...]) -> None:
    if not 1 <= severity <= 5:
        raise ConfigError("scenario.severity", severity, "an integer 1..5")
    bad = [c for c in corruptions if c not in CORRUPTIONS]
    if bad or not corruptions:
        raise ConfigError("scenario.corruptions", bad, CORRUPTIONS)


def _stream(name: str, domains: list[tuple[Tensor, Tensor]], num_classes: int, names: tuple[str, ...],
            severity: int, batch_size: int, doc: str) -> Stream:
    exps = []
    for i, (x, y) in enumerate(domains):
        empty = Split(x[:0], y[:0])
        exps.append(Experience(i, 0, tuple(range(num_classes)), empty, empty, Split(x, y)))
    meta = {"domains": list(names), "severity": severity, "batch_size": batch_size}
    return Stream(name, VERSION, "test_time", tuple(exps), num_classes, doc, meta=meta)


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
    """

    data_dir: str = ""
    severity: int = 5
    corruptions: tuple[str, ...] = CORRUPTIONS
    n_examples: int = 10000
    batch_size: int = 200

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
        return _stream("cifar10_c", domains, 10, c.corruptions, c.severity, c.batch_size, self.__doc__ or "")


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
    """

    data_dir: str = ""
    severity: int = 5
    corruptions: tuple[str, ...] = CORRUPTIONS
    n_examples: int = 5000
    image_size: int = 224
    batch_size: int = 64

    def __post_init__(self) -> None:
        _check(self.severity, self.corruptions)
        if self.n_examples < 1 or self.image_size < 1:
            raise ConfigError("scenario.n_examples", self.n_examples, "n_examples >= 1, image_size >= 1")


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
            domains.append((torch.stack([_load_image(folder / f, c.image_size) for f in chosen]), y))
        return _stream("imagenet_c", domains, len(classes), c.corruptions, c.severity, c.batch_size,
                       self.__doc__ or "")

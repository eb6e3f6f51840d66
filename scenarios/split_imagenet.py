"""Split Tiny-ImageNet, Split ImageNet-R and Split ImageNet-A read from local folders (no download).

``split_tiny_imagenet`` (Le & Yang, "Tiny ImageNet Visual Recognition Challenge", CS231n 2015;
200 classes, 64x64 px): the extracted ``tiny-imagenet-200.zip`` (http://cs231n.stanford.edu/,
md5 90528d7ca1a48142e341f4ef8d21d0de as Avalanche 0.6 ``TinyImagenet`` lists it; the extracted
files are not checked)::

    tiny-imagenet-200/wnids.txt                       200 WordNet ids, one a line
    tiny-imagenet-200/words.txt                       optional: "<wnid>\\t<names>" (label names)
    tiny-imagenet-200/train/<wnid>/images/*.JPEG      500 training images per class
    tiny-imagenet-200/val/images/*.JPEG               10,000 validation images (the test split)
    tiny-imagenet-200/val/val_annotations.txt         "<file>\\t<wnid>\\t<box>" per image

The official val split is the test split (test/ has no labels); 10 experiences x 20 classes,
normalised with Mammoth's seq-tinyimg mean/std, training batches augmented with RandomCrop(64,
padding=4) + RandomHorizontalFlip as there.

``split_imagenet_r`` (Hendrycks et al., "The Many Faces of Robustness", arXiv 2006.16241; 200
ImageNet classes, 30,000 renditions; imagenet-r.tar from https://github.com/hendrycks/imagenet-r,
md5 a61312130a589d0ca1a8fca1f2bd3337 as torch-uncertainty lists it, not checked here) and
``split_imagenet_a`` (Hendrycks et al., "Natural Adversarial Examples", arXiv 1907.07174; 200
classes, 7,500 images; imagenet-a.tar md5 c3e55429088dc681f30d81f4726b6595, same source): the
ImageFolder layout ``imagenet-r/<wnid>/*.jpg`` (``imagenet-a/<wnid>/*.jpg``), class ids = sorted
wnids (torchvision ImageFolder). Both have no official train/test split:

- a folder with ``train/<wnid>/`` and ``test/<wnid>/`` (the pre-split copies that PyCIL-family
  code such as APER/RanPAC distributes) is used as it is;
- otherwise the images are split 80/20 as CODA-Prompt made its ImageNet-R split (GT-RIPL/
  CODA-Prompt, ``iIMAGENET_R``: ``random.seed(0); random.shuffle`` of all image indices, the first
  ``int(0.8 n)`` train; DualPrompt and L2P's PyTorch ports also take a global random 80/20):
  here on the listing sorted by (wnid, file name), ``split_seed=0``. CODA-Prompt listed the files
  with ``glob`` (file-system order), so its split holds other files: ``split_yaml`` reads its
  shipped lists (``dataloaders/splits/imagenet-r_{train,test}.yaml``) to reproduce it exactly.

Both default to 10 experiences x 20 classes at 224 px (Resize(256) + CenterCrop(224), the
evaluation transform of the pretrained ViT backbones these benchmarks serve), normalised with
ImageNet's mean/std (``normalize=none`` gives the [0, 1] inputs L2P/CODA-Prompt feed their ViT);
training batches are flipped at random. The reference code (L2P, CODA-Prompt, LAE) trains on
RandomResizedCrop(224) crops + flips: ``resized_crop=true`` draws torchvision's RandomResizedCrop
boxes (``crop_scale`` (0.08, 1), ``crop_ratio`` (3/4, 4/3), its defaults) and resizes them back to
``image_size`` (:class:`AugmentedFolderData`). Deviation that remains: the boxes are drawn from the
stored 224 px centre crop (Resize(256) + CenterCrop(224)), not from the full-size image, so a crop
never reaches beyond that centre square and is enlarged from at most 224 px of it. It is off by
default, so that runs of the default options keep their results (a scenario's defaults are not in
a run's key); the ``imagenet_r_vit`` track declares it. Class order:
PyCIL's seed 1993 permutation (see :mod:`scenarios._vision`). Online alternative: Avalanche's
``SplitTinyImageNet`` through ``scenario=avalanche`` (downloads); ImageNet-R/A have none there.

VERSION history: 1 = initial (the training augmentation options added later default to off and
leave every earlier stream and run as it was).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from clbench.augment import ImageInputs
from clbench.errors import ConfigError
from clbench.protocol import Scenario
from clbench.registry import register_scenario
from clbench.streams import Stream
from scenarios._vision import (
    IMAGENET_STATS,
    FolderData,
    Stats,
    check_classes,
    class_incremental,
    data_root,
    find_dataset,
    image_files,
    image_split,
    label_tensor,
    layout_error,
    make_stream,
)

VERSION = "1"
TINY_LAYOUT = ("tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
               "val/val_annotations.txt}")
Listing = list[tuple[Path, int]]
TINY_STATS: Stats = ((0.4802, 0.4480, 0.3975), (0.2770, 0.2691, 0.2821))  # Mammoth seq-tinyimg


@dataclass(frozen=True)
class AugmentedFolderData(FolderData):
    """Options of the folder benchmarks, with the research recipes' training augmentation
    (:class:`clbench.augment.ImageInputs`; every option here defaults to off).

    Attributes:
        resized_crop: training: a RandomResizedCrop of each stored image, resized back to
            ``image_size`` (bilinear, antialiased); one crop: needs ``crop_padding=0``. The box is
            drawn from the stored image (already resized and centre-cropped, ``crop_fraction``),
            not from the full-size original that reference code crops.
        crop_scale: [min, max] share of the stored image's area a box covers (torchvision's default).
        crop_ratio: [min, max] aspect ratio (width / height) of a box (torchvision's default).
        brightness: training: ColorJitter brightness (factor in [max(0, 1 - b), 1 + b]); 0 = none.
        contrast: training: ColorJitter contrast, as brightness; 0 = none.
        saturation: training: ColorJitter saturation, as brightness; 0 = none.
        hue: training: ColorJitter hue (shift in [-hue, hue], at most 0.5); 0 = none.
    """

    resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.resized_crop and self.crop_padding:
            raise ConfigError("scenario.resized_crop", True,
                              f"false while scenario.crop_padding={self.crop_padding} (one crop: set crop_padding=0)")
        scale, ratio = self.crop_scale, self.crop_ratio
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ConfigError("scenario.crop_scale", list(scale), "[min, max] with 0 < min <= max <= 1")
        if len(ratio) != 2 or not (0.0 < ratio[0] <= ratio[1] and math.isfinite(ratio[1])):
            raise ConfigError("scenario.crop_ratio", list(ratio), "[min, max] with 0 < min <= max")
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ConfigError(f"scenario.{name}", value, "a value >= 0 (0 = not jittered)")
        if not 0.0 <= self.hue <= 0.5:
            raise ConfigError("scenario.hue", self.hue, "a value in [0, 0.5] (0 = not jittered)")

    def inputs(self, stats: Stats) -> ImageInputs:
        """:meth:`FolderData.inputs` with the resized crop and the colour jitter declared here."""
        size = (self.image_size, self.image_size)
        return replace(super().inputs(stats), resized_crop=size if self.resized_crop else None,
                       crop_scale=self.crop_scale, crop_ratio=self.crop_ratio, brightness=self.brightness,
                       contrast=self.contrast, saturation=self.saturation, hue=self.hue)


def with_augmentation(stream: Stream) -> Stream:
    """``stream`` whose provenance (``meta["augment"]``) lists every declared training op."""
    assert stream.inputs is not None
    return replace(stream, meta={**stream.meta, "augment": stream.inputs.augmentation()})


def _classes(found: list[str], expected: int, n_classes: int, name: str, base: Path, layout: str) -> list[str]:
    """The classes in use (the first ``n_classes`` of the sorted ids); the count is checked."""
    need = n_classes or expected
    if n_classes > expected:
        raise ConfigError("scenario.n_classes", n_classes, f"0 (all) or at most {expected}")
    if (n_classes and len(found) < need) or (not n_classes and len(found) != expected):
        raise layout_error(name, base, layout, f"{len(found)} classes found, {need} expected"
                           + ("" if n_classes else " (scenario.n_classes=<k> reads the first k)"))
    return sorted(found)[:need]


# --------------------------------------------------------------------------- Tiny-ImageNet

def load_tiny(c: FolderData) -> tuple[Listing, Listing, list[str], Path]:
    """(train, test) listings of (file, class id), the wnids in use and the dataset folder."""
    name = "split_tiny_imagenet"
    base = find_dataset(c.root, "tiny-imagenet-200", ("wnids.txt", "train", "val"), name, TINY_LAYOUT)
    found = [w.strip() for w in (base / "wnids.txt").read_text().splitlines() if w.strip()]
    wnids = _classes(found, 200, c.n_classes, name, base, TINY_LAYOUT)
    index = {w: i for i, w in enumerate(wnids)}
    train: Listing = []
    for w in wnids:
        folder = base / "train" / w / "images"
        files = image_files(folder) if folder.is_dir() else []
        if not files:
            raise layout_error(name, base, TINY_LAYOUT, f"no images in {folder}")
        train += [(p, index[w]) for p in files]
    return train, _tiny_val(base, set(found), index), wnids, base


def _tiny_val(base: Path, known: set[str], index: dict[str, int]) -> Listing:
    ann = base / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise layout_error("split_tiny_imagenet", base, TINY_LAYOUT, f"{ann} is missing")
    out: Listing = []
    for k, line in enumerate(ann.read_text().splitlines()):
        cols = line.split("\t")
        if not line.strip():
            continue
        if len(cols) < 2 or cols[1] not in known:
            raise layout_error("split_tiny_imagenet", base, TINY_LAYOUT,
                               f"{ann} line {k + 1} is not '<file>\\t<wnid from wnids.txt>\\t...': {line[:80]!r}")
        if cols[1] in index:
            path = base / "val" / "images" / cols[0]
            if not path.is_file():
                raise layout_error("split_tiny_imagenet", base, TINY_LAYOUT, f"{path} (in {ann.name}) is missing")
            out.append((path, index[cols[1]]))
    return sorted(out)


def _tiny_names(base: Path, wnids: list[str]) -> list[str]:
    words = base / "words.txt"
    if not words.is_file():
        return []
    table = dict(line.split("\t", 1) for line in words.read_text().splitlines() if "\t" in line)
    return [table.get(w, w).split(",")[0].strip() for w in wnids]


@dataclass(frozen=True)
class SplitTinyImageNetConfig(AugmentedFolderData):
    """Options of ``split_tiny_imagenet`` (see :class:`AugmentedFolderData`)."""

    image_size: int = 64
    crop_fraction: float = 1.0
    crop_padding: int = 4


@register_scenario("split_tiny_imagenet")
class SplitTinyImageNet(Scenario):
    """Split Tiny-ImageNet (10 x 20 classes, 64 px, class-incremental) from the local tiny-imagenet-200 folder."""

    Config = SplitTinyImageNetConfig
    VERSION = VERSION

    def build(self) -> Stream:
        c: SplitTinyImageNetConfig = self.config
        train, test, wnids, base = load_tiny(c)
        meta = {"dataset": "tiny-imagenet-200", "split": "official train / val (as test)", "wnids": wnids,
                "label_names": _tiny_names(base, wnids)}
        return _stream("split_tiny_imagenet", c, train, test, len(wnids), meta, self.__doc__ or "", TINY_STATS)


def _stream(name: str, c: AugmentedFolderData, train: Listing, test: Listing, n: int, meta: dict[str, Any],
            doc: str, stats: Stats = IMAGENET_STATS) -> Stream:
    tr, te = image_split(train, c, c.crop_fraction), image_split(test, c, c.crop_fraction)
    exps, order = class_incremental(tr, te, n, c)
    meta = {**meta, "class_order": order, "image_size": c.image_size, "n_train": len(train), "n_test": len(test)}
    return with_augmentation(make_stream(name, VERSION, doc, exps, n, meta, c.inputs(stats)))


# --------------------------------------------------------------------------- ImageNet-R / ImageNet-A

@dataclass(frozen=True)
class _Subset:
    name: str
    folder: str

    @property
    def layout(self) -> str:
        return (f"{self.folder}/<wnid>/*.jpg with 200 class folders (ImageFolder), or "
                f"{self.folder}/train/<wnid>/ and {self.folder}/test/<wnid>/")


def _class_dirs(folder: Path) -> list[str]:
    return [d.name for d in folder.iterdir() if d.is_dir()] if folder.is_dir() else []


def load_folder_subset(c: SplitImageNetRConfig | SplitImageNetAConfig, s: _Subset) -> tuple[Listing, Listing, list[str], dict[str, Any]]:
    """(train, test) listings, the wnids in use and the provenance of the split."""
    top = data_root(c.root)
    if not top.is_dir():
        raise layout_error(s.name, top, s.layout, "the folder does not exist")
    base = top / s.folder if (top / s.folder).is_dir() else top
    presplit = (base / "train").is_dir() and (base / "test").is_dir()
    wnids = _classes(_class_dirs(base / "train" if presplit else base), 200, c.n_classes, s.name, base, s.layout)
    index = {w: i for i, w in enumerate(wnids)}
    yaml_dir = getattr(c, "split_yaml", "")
    if presplit:
        train, test = _listing(base / "train", wnids, index, s, base), _listing(base / "test", wnids, index, s, base)
        how = "the train/ and test/ folders"
    elif yaml_dir:
        train, test = _from_yaml(Path(yaml_dir), base, index, s)
        how = f"CODA-Prompt's lists in {yaml_dir}"
    else:
        train, test = _random_split(base, index, c.split_seed, c.train_fraction, s)
        how = f"random.Random({c.split_seed}).shuffle of all images, first {c.train_fraction:g} train"
    check_classes(label_tensor(y for _, y in train), len(wnids), s.name, base, s.layout)
    return train, test, wnids, {"dataset": s.folder, "split": how, "wnids": wnids}


def _listing(folder: Path, wnids: list[str], index: dict[str, int], s: _Subset, base: Path) -> Listing:
    out: Listing = []
    for w in wnids:
        files = image_files(folder / w) if (folder / w).is_dir() else []
        if not files and folder.name != "test":
            raise layout_error(s.name, base, s.layout, f"no images in {folder / w}")
        out += [(p, index[w]) for p in files]
    return out


def _random_split(base: Path, index: dict[str, int], seed: int, fraction: float, s: _Subset) -> tuple[Listing, Listing]:
    """CODA-Prompt's draw over every image of every class folder (so a smaller ``n_classes``
    keeps the same files), then the classes in use."""
    every = sorted(_class_dirs(base))
    listing = _listing(base, every, {w: i for i, w in enumerate(every)}, s, base)
    order = list(range(len(listing)))
    random.Random(seed).shuffle(order)
    cut = int(fraction * len(order))

    def pick(idx: list[int]) -> Listing:
        files = (listing[i][0] for i in sorted(idx))
        return [(p, index[p.parent.name]) for p in files if p.parent.name in index]

    return pick(order[:cut]), pick(order[cut:])


def _from_yaml(folder: Path, base: Path, index: dict[str, int], s: _Subset) -> tuple[Listing, Listing]:
    import yaml

    out = []
    for part in ("train", "test"):
        path = folder / f"{s.folder}_{part}.yaml"
        try:
            data = yaml.safe_load(path.read_text())["data"]
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise layout_error(s.name, base, s.layout, f"{path} is not a CODA-Prompt split list with a "
                               f"'data' list of image paths ({exc})") from exc
        files = [base / Path(p).parent.name / Path(p).name for p in data]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise layout_error(s.name, base, s.layout, f"{len(missing)} images listed in {path} are missing, "
                               f"e.g. {missing[0]}")
        out.append(sorted((f, index[f.parent.name]) for f in files if f.parent.name in index))
    return out[0], out[1]


@dataclass(frozen=True)
class SplitImageNetAConfig(AugmentedFolderData):
    """Options of ``split_imagenet_a`` (see :class:`AugmentedFolderData`).

    Attributes:
        split_seed: seed of the 80/20 train/test draw (``random.Random(seed).shuffle``), used
            when the folder has no train/ and test/ subfolders.
        train_fraction: share of all images that the draw puts in train.
    """

    split_seed: int = 0
    train_fraction: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.train_fraction < 1.0:
            raise ConfigError("scenario.train_fraction", self.train_fraction, "a value in (0, 1)")


@dataclass(frozen=True)
class SplitImageNetRConfig(SplitImageNetAConfig):
    """Options of ``split_imagenet_r``.

    Attributes:
        split_yaml: folder with CODA-Prompt's ``imagenet-r_train.yaml`` and ``imagenet-r_test.yaml``
            (``dataloaders/splits/`` of GT-RIPL/CODA-Prompt); when set, the split is read from them
            (paths matched by ``<wnid>/<file>``) instead of drawn.
    """

    split_yaml: str = ""


IMAGENET_R = _Subset("split_imagenet_r", "imagenet-r")
IMAGENET_A = _Subset("split_imagenet_a", "imagenet-a")


def _build_subset(c: SplitImageNetRConfig | SplitImageNetAConfig, s: _Subset, doc: str) -> Stream:
    train, test, wnids, meta = load_folder_subset(c, s)
    return _stream(s.name, c, train, test, len(wnids), meta, doc)


@register_scenario("split_imagenet_r")
class SplitImageNetR(Scenario):
    """Split ImageNet-R (10 x 20 classes, 224 px, class-incremental) from a local imagenet-r folder."""

    Config = SplitImageNetRConfig
    VERSION = VERSION

    def build(self) -> Stream:
        return _build_subset(self.config, IMAGENET_R, self.__doc__ or "")


@register_scenario("split_imagenet_a")
class SplitImageNetA(Scenario):
    """Split ImageNet-A (10 x 20 classes, 224 px, class-incremental) from a local imagenet-a folder."""

    Config = SplitImageNetAConfig
    VERSION = VERSION

    def build(self) -> Stream:
        return _build_subset(self.config, IMAGENET_A, self.__doc__ or "")

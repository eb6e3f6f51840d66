"""Split CUB-200-2011 read from the official release folder (no download).

Layout under ``scenario.root`` (the extracted ``CUB_200_2011.tgz``)::

    CUB_200_2011/images.txt               "<image id> <relative path>"
    CUB_200_2011/image_class_labels.txt   "<image id> <class id 1..200>"
    CUB_200_2011/train_test_split.txt     "<image id> <1 = train, 0 = test>"
    CUB_200_2011/classes.txt              optional: "<class id> <NNN.Name>" (label names)
    CUB_200_2011/images/<NNN.Name>/*.jpg

Split: the official ``train_test_split.txt`` (5,994 train / 5,794 test images); class ids are
the file's ids minus one. Protocol: 10 experiences x 20 classes, class-incremental, at 224 px
(Resize(256) + CenterCrop(224)), PyCIL's seed-1993 class order (:mod:`scenarios._vision`),
ImageNet mean/std normalisation and random horizontal flips in training. The reference code's
RandomResizedCrop: ``resized_crop=true`` (with ``crop_scale``, ``crop_ratio``; see
:class:`scenarios.split_imagenet.AugmentedFolderData`), drawn from the stored 224 px centre crop
rather than the full-size image; off by default, so that runs of the default options keep their
results; the ``imagenet_r_vit`` track, which tunes on this stream, declares it.

Provenance: Wah, Branson, Welinder, Perona & Belongie, "The Caltech-UCSD Birds-200-2011
Dataset" (Caltech tech. report CNS-TR-2011-001). Archive CUB_200_2011.tgz md5
97eceeb196236b17998738112f37df78 as Avalanche 0.6 ``CUB200`` lists it (the extracted files are
not checked). Online alternative (downloads): ``scenario=avalanche scenario.benchmark=SplitCUB200``.

VERSION history: 1 = initial (the training augmentation options added later default to off and
leave every earlier stream and run as it was).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clbench.errors import ConfigError
from clbench.protocol import Scenario
from clbench.registry import register_scenario
from clbench.streams import Split, Stream
from scenarios._vision import (
    IMAGENET_STATS,
    FolderData,
    check_classes,
    class_incremental,
    find_dataset,
    image_split,
    label_tensor,
    layout_error,
    make_stream,
)
from scenarios.split_imagenet import AugmentedFolderData, with_augmentation

VERSION = "1"
NAME = "split_cub200"
LAYOUT = ("CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, "
          "images/<NNN.Name>/*.jpg} (the extracted CUB_200_2011.tgz)")
_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "images")


def _table(path: Path, base: Path) -> dict[int, str]:
    """``<id> <value>`` lines as {id: value}."""
    out: dict[int, str] = {}
    for k, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not key.isdigit() or not value:
            raise layout_error(NAME, base, LAYOUT, f"{path.name} line {k + 1} is not '<id> <value>': {line[:80]!r}")
        out[int(key)] = value.strip()
    return out


def load_cub(c: FolderData) -> tuple[list[tuple[Path, int, bool]], list[str], Path]:
    """(file, class id, is train) of the images in use, the label names and the dataset folder."""
    base = find_dataset(c.root, "CUB_200_2011", _FILES, NAME, LAYOUT)
    paths, labels, split = (_table(base / f, base) for f in _FILES[:3])
    if not (paths.keys() == labels.keys() == split.keys()):
        raise layout_error(NAME, base, LAYOUT, "images.txt, image_class_labels.txt and train_test_split.txt "
                           "list different image ids")
    if not all(v.isdigit() for v in labels.values()) or not set(split.values()) <= {"0", "1"}:
        raise layout_error(NAME, base, LAYOUT, "class ids must be integers and train flags 0 or 1")
    if c.n_classes > 200:
        raise ConfigError("scenario.n_classes", c.n_classes, "0 (all) or at most 200")
    n = c.n_classes or 200
    rows = [(base / "images" / paths[i], int(labels[i]) - 1, split[i] == "1") for i in sorted(paths)]
    check_classes(label_tensor(y for _, y, t in rows if t), 200, NAME, base, LAYOUT, used=c.n_classes)
    rows = [r for r in rows if r[1] < n]
    missing = [str(p) for p, _, _ in rows if not p.is_file()]
    if missing:
        raise layout_error(NAME, base, LAYOUT, f"{len(missing)} listed images are missing, e.g. {missing[0]}")
    names_file = base / "classes.txt"
    names = list(_table(names_file, base).values())[:n] if names_file.is_file() else []
    return rows, [s.split(".", 1)[-1].replace("_", " ") for s in names], base


@dataclass(frozen=True)
class SplitCUB200Config(AugmentedFolderData):
    """Options of ``split_cub200`` (see :class:`scenarios.split_imagenet.AugmentedFolderData`)."""


@register_scenario("split_cub200")
class SplitCUB200(Scenario):
    """Split CUB-200-2011 (10 x 20 bird classes, 224 px, class-incremental) from the local CUB_200_2011 folder."""

    Config = SplitCUB200Config
    VERSION = VERSION

    def build(self) -> Stream:
        c: SplitCUB200Config = self.config
        rows, names, _ = load_cub(c)
        n = c.n_classes or 200

        def split(train: bool) -> Split:
            part = [(p, y) for p, y, t in rows if t == train]
            return image_split(part, c, c.crop_fraction)

        train, test = split(True), split(False)
        exps, order = class_incremental(train, test, n, c)
        meta = {"dataset": "CUB_200_2011", "split": "official train_test_split.txt", "class_order": order,
                "image_size": c.image_size, "label_names": names,
                "n_train": len(train), "n_test": len(test)}
        return with_augmentation(make_stream(NAME, VERSION, self.__doc__ or "", exps, n, meta, c.inputs(IMAGENET_STATS)))

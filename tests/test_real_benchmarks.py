"""Real vision CL benchmarks read from local folders (split_cifar10/100, split_tiny_imagenet,
split_imagenet_r/a, split_cub200, core50): tiny synthetic files in each dataset's real on-disk
format, the stream's shape, class order, dtype, and one clear error for a missing or malformed copy.

``TINY_WRITERS`` (name -> tmp dir -> scenario options of a build with at most 5 experiences) is
what tests/test_registries.py's ``TINY_SCENARIOS`` needs for these names.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from clbench.errors import ConfigError, DataUnavailableError
from clbench.options import build_dataclass
from clbench.registry import SCENARIOS
from clbench.streams import Stream

PYCIL_CIFAR100_HEAD = [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]  # iCaRL/PyCIL order (seed 1993), first 10
PYCIL_CIFAR10 = [4, 2, 7, 6, 0, 3, 5, 8, 9, 1]


def _build(name: str, **options: Any) -> Stream:
    cls = SCENARIOS.get(name)
    return cls(build_dataclass(cls.Config, options, "scenario")).build()


def _image(path: Path, value: int, size: tuple[int, int] = (8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value % 256, np.uint8)
    arr[0, 0] = (value * 7) % 256  # distinct images within a class
    Image.fromarray(arr).save(path)


def _check_class_incremental(s: Stream, n_exp: int, per: int) -> None:
    assert len(s) == n_exp and s.scenario_type == "class_incremental"
    seen: set[int] = set()
    for e in s.experiences:
        assert len(e.classes) == per and not seen & set(e.classes)
        seen |= set(e.classes)
        assert set(e.train.y.tolist()) == set(e.classes) and set(e.test.y.tolist()) <= set(e.classes)
    assert seen == set(range(s.num_classes))


# ---------------------------------------------------------------------------- writers (real layouts)

def write_cifar(tmp: Path, hundred: bool = False, per_class: int = 2, present: int = 0) -> Path:
    """torchvision's python batches: Python-2-style pickles (protocol 2) of dicts; ``present``:
    only the first classes have images (a malformed copy)."""
    n = 100 if hundred else 10
    folder = tmp / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    key = "fine_labels" if hundred else "labels"
    files = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in files:
        labels = [k for k in range(present or n) for _ in range(per_class)]
        batch = {"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), key: labels,
                 "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {("fine_label_names" if hundred else "label_names"): [f"class{k}" for k in range(n)]}
    (folder / ("meta" if hundred else "batches.meta")).write_bytes(pickle.dumps(meta, protocol=2))
    return tmp


def write_tiny(tmp: Path, n: int = 4, per_class: int = 2) -> Path:
    base = tmp / "tiny-imagenet-200"
    wnids = [f"n{k:08d}" for k in range(n)]
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # not sorted, as the release
    (base / "words.txt").write_text("".join(f"{w}\tthing {k}, other\n" for k, w in enumerate(wnids)))
    ann = []
    for k, w in enumerate(wnids):
        for j in range(per_class):
            _image(base / "train" / w / "images" / f"{w}_{j}.JPEG", 40 * k + j)
            _image(base / "val" / "images" / f"val_{k * per_class + j}.JPEG", 40 * k + j)
            ann.append(f"val_{k * per_class + j}.JPEG\t{w}\t0\t0\t7\t7")
    (base / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return tmp


def write_folder_subset(tmp: Path, folder: str, n: int = 4, per_class: int = 5) -> Path:
    """ImageFolder layout ``<folder>/<wnid>/*.jpg``; images of varying, non-square sizes."""
    for k in range(n):
        for j in range(per_class):
            _image(tmp / folder / f"n{k:08d}" / f"art_{j}.jpg", 50 * k + j, size=(12 + j, 10))
    (tmp / folder / "README.txt").write_text("not a class\n")
    return tmp


def write_cub(tmp: Path, n: int = 4, train: int = 2, test: int = 1) -> Path:
    base = tmp / "CUB_200_2011"
    images, labels, split, classes = [], [], [], []
    i = 0
    for k in range(1, n + 1):
        name = f"{k:03d}.Bird_{k}"
        classes.append(f"{k} {name}")
        for j in range(train + test):
            i += 1
            rel = f"{name}/Bird_{k}_{j}.jpg"
            _image(base / "images" / rel, 30 * k + j, size=(10, 14))
            images.append(f"{i} {rel}")
            labels.append(f"{i} {k}")
            split.append(f"{i} {1 if j < train else 0}")
    for fname, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                         ("train_test_split.txt", split), ("classes.txt", classes)):
        (base / fname).write_text("\n".join(lines) + "\n")
    return tmp


def write_core50(tmp: Path, n: int = 4, frames: int = 2) -> Path:
    base = tmp / "core50_128x128"
    for s in range(1, 12):
        for o in range(1, n + 1):
            for f in range(frames):
                _image(base / f"s{s}" / f"o{o}" / f"C_{s:02d}_{o:02d}_{f:03d}.png", 20 * s + o + f)
    return tmp


TINY_WRITERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "split_cifar10": lambda tmp: {"root": str(write_cifar(tmp, per_class=1)), "verify_checksums": False,
                                  "n_classes": 4, "n_experiences": 2, "image_size": 8},
    "split_cifar100": lambda tmp: {"root": str(write_cifar(tmp, hundred=True, per_class=1)),
                                   "verify_checksums": False, "n_classes": 4, "n_experiences": 2},
    "split_tiny_imagenet": lambda tmp: {"root": str(write_tiny(tmp)), "n_classes": 4, "n_experiences": 2,
                                        "image_size": 8},
    "split_imagenet_r": lambda tmp: {"root": str(write_folder_subset(tmp, "imagenet-r")), "n_classes": 4,
                                     "n_experiences": 2, "image_size": 8},
    "split_imagenet_a": lambda tmp: {"root": str(write_folder_subset(tmp, "imagenet-a")), "n_classes": 4,
                                     "n_experiences": 2, "image_size": 8},
    "split_cub200": lambda tmp: {"root": str(write_cub(tmp)), "n_classes": 4, "n_experiences": 2, "image_size": 8},
    "core50": lambda tmp: {"root": str(write_core50(tmp, frames=1)), "n_classes": 4, "protocol": "nc",
                           "n_experiences": 3, "first_classes": 2, "image_size": 8},
}


# ---------------------------------------------------------------------------- every loader

@pytest.mark.parametrize("name", sorted(TINY_WRITERS))
def test_each_loader_builds_a_tiny_copy_reproducibly_as_uint8_images(name: str, tmp_path: Path) -> None:
    options = TINY_WRITERS[name](tmp_path)
    s = _build(name, **options)
    assert 1 <= len(s) <= 5 and s.num_classes == 4
    size = options.get("image_size", 32)
    for e in s.experiences:
        for split in (e.train, e.val, e.test):
            assert split.x.dtype == torch.uint8 and split.x.shape[1:] == (3, size, size)
            assert split.y.dtype == torch.long
        assert len(e.train) and len(e.test)
    assert s.info().input_shape == (3, size, size) and s.info().inputs == s.inputs
    assert s.inputs is not None and s.inputs.hflip and len(s.inputs.mean) == 3
    assert s.meta["normalize"] == {"mean": list(s.inputs.mean), "std": list(s.inputs.std)}
    assert _build(name, **options).content_hash() == s.content_hash()
    plain = _build(name, **options, normalize="none", hflip=False, crop_padding=0).inputs
    assert plain is not None and plain.mean == (0.0, 0.0, 0.0) and plain.std == (1.0, 1.0, 1.0) and not plain.augments
    x = s.experiences[0].test.x[:2]
    assert torch.allclose(plain.normalize(x), x.float() / 255)


# loaders that read through scenarios._vision.image_split: storage=disk keeps their images on disk
DISK_LOADERS = ("core50", "split_cub200", "split_imagenet_a", "split_imagenet_r", "split_tiny_imagenet")


@pytest.mark.parametrize("name", sorted(n for n in TINY_WRITERS if not n.startswith("split_cifar")))
def test_each_image_file_loader_keeps_its_images_on_disk_or_refuses_to(name: str, tmp_path: Path) -> None:
    from clbench.lazy_images import lazy_images

    options = TINY_WRITERS[name](tmp_path)
    if name not in DISK_LOADERS:  # never silently held in memory
        with pytest.raises(ConfigError, match=r"scenario\.storage"):
            _build(name, **options, storage="disk")
        return
    memory, disk = _build(name, **options), _build(name, **options, storage="disk")
    assert all(lazy_images(s.x) is not None for e in disk.experiences for s in (e.train, e.val, e.test))
    assert disk.content_hash() == memory.content_hash()  # the same images, decoded on access


@pytest.mark.parametrize("name", sorted(TINY_WRITERS))
def test_each_loader_names_the_layout_and_root_when_the_folder_is_missing(name: str, tmp_path: Path) -> None:
    options = TINY_WRITERS[name](tmp_path / "written")
    options["root"] = str(tmp_path / "nowhere")
    with pytest.raises(DataUnavailableError, match=r"expected layout: .*scenario\.root") as info:
        _build(name, **options)
    assert str(tmp_path / "nowhere") in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataUnavailableError, match=r"expected layout"):
        _build(name, **{**options, "root": str(empty)})


@pytest.mark.parametrize("name", sorted(TINY_WRITERS))
def test_a_copy_with_too_few_classes_is_a_malformed_layout(name: str, tmp_path: Path) -> None:
    options = TINY_WRITERS[name](tmp_path)
    options.pop("n_classes")  # the published benchmark: 10/100/200/50 classes expected, 4 written
    if name.startswith("split_cifar"):
        options["root"] = str(write_cifar(tmp_path / "few", hundred=name.endswith("100"), present=4))
    with pytest.raises(DataUnavailableError, match=r"expected layout"):
        _build(name, **options)


# ---------------------------------------------------------------------------- CIFAR

def test_split_cifar10_is_5x2_in_pycil_order_at_32px(tmp_path: Path) -> None:
    s = _build("split_cifar10", root=str(write_cifar(tmp_path)), verify_checksums=False)
    _check_class_incremental(s, 5, 2)
    assert s.meta["class_order"] == PYCIL_CIFAR10
    assert [e.classes for e in s.experiences] == [tuple(sorted(PYCIL_CIFAR10[i:i + 2])) for i in range(0, 10, 2)]
    assert s.experiences[0].train.x.shape[1:] == (3, 32, 32)
    assert s.inputs is not None and s.inputs.mean == (0.4914, 0.4822, 0.4465) and s.inputs.crop_padding == 4
    imagenet = _build("split_cifar10", root=str(tmp_path), verify_checksums=False, normalize="imagenet").inputs
    assert imagenet is not None and imagenet.std == (0.229, 0.224, 0.225)
    assert s.meta["label_names"][:2] == ["class0", "class1"] and s.meta["md5_verified"] is False
    assert sum(len(e.train) + len(e.val) for e in s.experiences) == 100  # 5 batches x 10 classes x 2
    plain = _build("split_cifar10", root=str(tmp_path), verify_checksums=False, class_order_seed=None)
    assert [e.classes for e in plain.experiences] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    other = _build("split_cifar10", root=str(tmp_path), verify_checksums=False, class_order_seed=3)
    assert other.meta["class_order"] != PYCIL_CIFAR10 and other.content_hash() != s.content_hash()


def test_split_cifar100_is_10x10_20x5_or_b50_and_pixels_keep_their_layout(tmp_path: Path) -> None:
    root = str(write_cifar(tmp_path, hundred=True, per_class=1))
    s = _build("split_cifar100", root=root, verify_checksums=False, val_fraction=0.0)
    _check_class_incremental(s, 10, 10)
    assert s.meta["class_order"][:10] == PYCIL_CIFAR100_HEAD
    assert s.experiences[0].classes == tuple(sorted(PYCIL_CIFAR100_HEAD))
    _check_class_incremental(_build("split_cifar100", root=root, verify_checksums=False, n_experiences=20), 20, 5)
    b50 = _build("split_cifar100", root=root, verify_checksums=False, n_experiences=6, first_classes=50)
    assert [len(e.classes) for e in b50.experiences] == [50, 10, 10, 10, 10, 10]
    # the (N, 3072) rows are the R, G, B planes of a 32x32 image
    raw = pickle.loads((tmp_path / "cifar-100-python" / "train").read_bytes())
    first = s.experiences[0]
    k = first.train.y.tolist().index(first.classes[0])
    assert torch.equal(first.train.x[k], torch.from_numpy(raw["data"][first.classes[0]]).reshape(3, 32, 32))


def test_split_cifar_resizes_and_checks_md5_against_torchvision(tmp_path: Path) -> None:
    root = str(write_cifar(tmp_path))
    small = _build("split_cifar10", root=root, verify_checksums=False, image_size=16)
    assert small.experiences[0].test.x.shape[1:] == (3, 16, 16) and small.experiences[0].test.x.dtype == torch.uint8
    with pytest.raises(DataUnavailableError, match=r"data_batch_1 has md5 .*c99cafc152244af753f735de768cd75f"):
        _build("split_cifar10", root=root)


def test_split_cifar_refuses_malformed_batches_and_foreign_pickle_globals(tmp_path: Path) -> None:
    from collections import OrderedDict

    root = write_cifar(tmp_path)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0, 1, 2, 3]}, protocol=2))
    with pytest.raises(DataUnavailableError, match=r"data_batch_3 lacks a uint8 'data' array"):
        _build("split_cifar10", root=str(root), verify_checksums=False)
    batch.write_bytes(pickle.dumps(OrderedDict(data=1), protocol=2))
    with pytest.raises(DataUnavailableError, match=r"collections.OrderedDict is not allowed"):
        _build("split_cifar10", root=str(root), verify_checksums=False)
    batch.write_bytes(b"not a pickle")
    with pytest.raises(DataUnavailableError, match=r"not a CIFAR python batch.*expected layout"):
        _build("split_cifar10", root=str(root), verify_checksums=False)


def test_bad_class_groupings_are_config_errors(tmp_path: Path) -> None:
    root = str(write_cifar(tmp_path))
    with pytest.raises(ConfigError, match="scenario.n_experiences"):
        _build("split_cifar10", root=root, verify_checksums=False, n_experiences=3)
    with pytest.raises(ConfigError, match="scenario.first_classes"):
        _build("split_cifar10", root=root, verify_checksums=False, n_experiences=3, first_classes=3)
    with pytest.raises(ConfigError, match="scenario.class_order"):
        _build("split_cifar10", root=root, verify_checksums=False, class_order=[0, 1, 2])
    explicit = _build("split_cifar10", root=root, verify_checksums=False, class_order=list(range(9, -1, -1)))
    assert explicit.experiences[0].classes == (8, 9)


# ---------------------------------------------------------------------------- Tiny-ImageNet

def test_split_tiny_imagenet_reads_train_folders_and_val_annotations(tmp_path: Path) -> None:
    root = str(write_tiny(tmp_path, n=4, per_class=3))
    s = _build("split_tiny_imagenet", root=root, n_classes=4, n_experiences=2, class_order_seed=None,
               val_fraction=0.0)
    _check_class_incremental(s, 2, 2)
    assert s.meta["wnids"] == [f"n{k:08d}" for k in range(4)]  # sorted, as ImageFolder
    assert s.meta["label_names"] == ["thing 0", "thing 1", "thing 2", "thing 3"]
    assert [len(e.train) for e in s.experiences] == [6, 6] and [len(e.test) for e in s.experiences] == [6, 6]
    assert s.experiences[0].train.x.shape[1:] == (3, 64, 64)  # the published size by default
    assert s.inputs is not None and s.inputs.crop_padding == 4 and s.inputs.mean == (0.4802, 0.4480, 0.3975)
    broken = tmp_path / "tiny-imagenet-200" / "train" / "n00000001" / "images" / "n00000001_0.JPEG"
    saved = broken.read_bytes()
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataUnavailableError, match=r"n00000001_0.JPEG is not a readable image"):
        _build("split_tiny_imagenet", root=root, n_classes=4, n_experiences=2)
    broken.write_bytes(saved)
    ann = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_99.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataUnavailableError, match=r"val_annotations.txt line 13 .*expected layout"):
        _build("split_tiny_imagenet", root=root, n_classes=4, n_experiences=2)


# ---------------------------------------------------------------------------- ImageNet-R / ImageNet-A

def _files(s: Stream, split: str = "test") -> set[bytes]:
    return {x.numpy().tobytes() for e in s.experiences for x in getattr(e, split).x}


def test_split_imagenet_r_draws_a_seeded_80_20_split_over_all_images(tmp_path: Path) -> None:
    root = str(write_folder_subset(tmp_path, "imagenet-r", n=4, per_class=5))
    opts: dict[str, Any] = {"root": root, "n_classes": 4, "n_experiences": 2, "image_size": 8, "val_fraction": 0.0}
    s = _build("split_imagenet_r", **opts)
    _check_class_incremental(s, 2, 2)
    n_train = sum(len(e.train) for e in s.experiences)
    n_test = sum(len(e.test) for e in s.experiences)
    assert (n_train, n_test) == (16, 4)  # int(0.8 * 20) train, as CODA-Prompt
    assert not _files(s, "train") & _files(s, "test")
    assert _build("split_imagenet_r", **opts).content_hash() == s.content_hash()
    assert _files(_build("split_imagenet_r", **opts, split_seed=1)) != _files(s)
    two = _build("split_imagenet_r", **{**opts, "n_classes": 2, "n_experiences": 1})
    assert _files(two) <= _files(s)  # a smaller n_classes keeps the same draw


def test_split_imagenet_r_reads_coda_prompt_lists_and_presplit_folders(tmp_path: Path) -> None:
    import yaml

    root = write_folder_subset(tmp_path / "data", "imagenet-r", n=4, per_class=2)
    lists = tmp_path / "splits"
    lists.mkdir()
    wn = [f"n{k:08d}" for k in range(4)]
    train = [f"data/imagenet-r/{w}/art_0.jpg" for w in wn]
    test = [f"data/imagenet-r/{w}/art_1.jpg" for w in wn]
    for part, paths in (("train", train), ("test", test)):
        (lists / f"imagenet-r_{part}.yaml").write_text(yaml.dump({"data": paths, "targets": [0, 1, 2, 3]}))
    s = _build("split_imagenet_r", root=str(root), n_classes=4, n_experiences=2, image_size=8, val_fraction=0.0,
               split_yaml=str(lists))
    assert [len(e.train) for e in s.experiences] == [2, 2] and [len(e.test) for e in s.experiences] == [2, 2]
    assert "CODA-Prompt" in s.meta["split"]
    (lists / "imagenet-r_test.yaml").write_text(yaml.dump({"data": ["data/imagenet-r/n00000000/gone.jpg"]}))
    with pytest.raises(DataUnavailableError, match=r"1 images listed .* are missing"):
        _build("split_imagenet_r", root=str(root), n_classes=4, n_experiences=2, split_yaml=str(lists))
    # a pre-split copy (train/<wnid>, test/<wnid>) is used as it is
    pre = tmp_path / "pre" / "imagenet-a"
    write_folder_subset(pre, "train", n=4, per_class=3)
    write_folder_subset(pre, "test", n=4, per_class=1)
    a = _build("split_imagenet_a", root=str(tmp_path / "pre"), n_classes=4, n_experiences=4, image_size=8,
               val_fraction=0.0)
    _check_class_incremental(a, 4, 1)
    assert [len(e.train) for e in a.experiences] == [3] * 4 and [len(e.test) for e in a.experiences] == [1] * 4
    assert a.meta["split"] == "the train/ and test/ folders"


# ---------------------------------------------------------------------------- CUB-200-2011

def test_split_cub200_uses_the_official_train_test_file(tmp_path: Path) -> None:
    root = str(write_cub(tmp_path, n=4, train=2, test=1))
    s = _build("split_cub200", root=root, n_classes=4, n_experiences=2, image_size=8, val_fraction=0.0,
               class_order_seed=None)
    _check_class_incremental(s, 2, 2)
    assert [len(e.train) for e in s.experiences] == [4, 4] and [len(e.test) for e in s.experiences] == [2, 2]
    assert s.meta["label_names"] == ["Bird 1", "Bird 2", "Bird 3", "Bird 4"]
    labels = tmp_path / "CUB_200_2011" / "image_class_labels.txt"
    labels.write_text("\n".join(labels.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DataUnavailableError, match=r"list different image ids.*expected layout"):
        _build("split_cub200", root=root, n_classes=4, n_experiences=2)


# ---------------------------------------------------------------------------- CORe50

def test_core50_ni_is_one_experience_per_training_session_tested_on_3_7_10(tmp_path: Path) -> None:
    root = str(write_core50(tmp_path, n=4, frames=2))
    s = _build("core50", root=root, n_classes=4, image_size=8, val_fraction=0.0)
    assert len(s) == 8 and s.scenario_type == "domain_incremental" and s.meta["session_order"] == [1, 2, 4, 5, 6, 8, 9, 11]
    assert all(e.classes == (0, 1, 2, 3) and len(e.train) == 8 for e in s.experiences)
    assert len({id(e.test) for e in s.experiences}) == 1 and len(s.experiences[0].test) == 3 * 4 * 2
    first = s.experiences[0].train.x[0].permute(1, 2, 0).numpy()  # s1/o1 frame 0
    assert np.array_equal(first, np.asarray(Image.open(tmp_path / "core50_128x128/s1/o1/C_01_01_000.png").convert("RGB")))
    shuffled = _build("core50", root=root, n_classes=4, image_size=8, session_order_seed=0)
    assert sorted(shuffled.meta["session_order"]) == [1, 2, 4, 5, 6, 8, 9, 11]
    assert shuffled.meta["session_order"] != s.meta["session_order"]
    assert _build("core50", root=root, n_classes=4, image_size=8, frame_step=2).experiences[0].train.y.numel() == 4


def test_core50_nc_groups_objects_first_then_equal_and_reads_official_filelists(tmp_path: Path) -> None:
    root = write_core50(tmp_path, n=4, frames=1)
    nc = _build("core50", root=str(root), n_classes=4, protocol="nc", n_experiences=3, first_classes=2,
                image_size=8, val_fraction=0.0)
    assert nc.scenario_type == "class_incremental" and [len(e.classes) for e in nc.experiences] == [2, 1, 1]
    assert all(len(e.train) == 8 * len(e.classes) and len(e.test) == 3 * len(e.classes) for e in nc.experiences)
    assert nc.meta["class_order"] == [int(k) for k in np.random.RandomState(1993).permutation(4)]
    run = tmp_path / "NC_inc" / "run0"
    run.mkdir(parents=True)
    (run / "train_batch_00_filelist.txt").write_text("s1/o1/C_01_01_000.png 0\ns2/o2/C_02_02_000.png 1\n")
    (run / "train_batch_01_filelist.txt").write_text("s1/o3/C_01_03_000.png 2\n")
    (run / "test_filelist.txt").write_text("".join(f"s3/o{o}/C_03_{o:02d}_000.png {o - 1}\n" for o in (1, 2, 3)))
    official = _build("core50", root=str(root), n_classes=4, protocol="nc", image_size=8, val_fraction=0.0,
                      filelists=str(run))
    assert [e.classes for e in official.experiences] == [(0, 1), (2,)]
    assert [len(e.test) for e in official.experiences] == [2, 1]
    (run / "test_filelist.txt").write_text("s3/o9/missing.png 8\n")
    with pytest.raises(DataUnavailableError, match=r"1 images in .*test_filelist.txt are missing"):
        _build("core50", root=str(root), n_classes=10, protocol="nc", filelists=str(run))
    with pytest.raises(ConfigError, match="scenario.test_sessions"):
        _build("core50", root=str(root), test_sessions=[1])

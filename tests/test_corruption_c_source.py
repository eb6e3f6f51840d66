"""CIFAR-10-C's clean source split (``scenario.clean_source``): the clean CIFAR-10 test set read
from torchvision's python batch ``cifar-10-batches-py/test_batch`` (RobustBench's source of clean
accuracy), beside or inside the CIFAR-10-C folder, on tiny files in the real formats."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_real_benchmarks import write_cifar

from clbench.errors import DataUnavailableError
from clbench.options import build_dataclass
from clbench.registry import SCENARIOS, load_plugins
from clbench.streams import Stream

PER = 6  # images per severity block in the synthetic CIFAR-10-C files
NAMES = ("fog", "snow")


def _write_c(folder: Path) -> None:
    """The Hendrycks & Dietterich layout: ``<corruption>.npy`` uint8 (5 x PER, 32, 32, 3) and
    ``labels.npy`` (the test labels repeated per severity)."""
    folder.mkdir(parents=True)
    np.save(folder / "labels.npy", np.tile(np.arange(PER) % 10, 5).astype(np.uint8))
    for k, name in enumerate(NAMES):
        np.save(folder / f"{name}.npy", np.full((5 * PER, 32, 32, 3), 10 * (k + 1), np.uint8))


def _test_batch(base: Path) -> dict[str, Any]:
    return pickle.loads((base / "cifar-10-batches-py" / "test_batch").read_bytes(), encoding="latin1")


def _build(**options: Any) -> Stream:
    load_plugins()
    cls = SCENARIOS.get("cifar10_c")
    return cls(build_dataclass(cls.Config, {"corruptions": list(NAMES), **options}, "scenario")).build()


def test_clean_source_is_the_first_test_images_beside_the_c_folder_as_robustbench_lays_them_out(
        tmp_path: Path) -> None:
    _write_c(tmp_path / "CIFAR-10-C")
    write_cifar(tmp_path, per_class=2)  # <dir>/cifar-10-batches-py/test_batch: 20 images
    s = _build(data_dir=str(tmp_path / "CIFAR-10-C"), n_examples=4, clean_source=True, verify_checksums=False)
    batch = _test_batch(tmp_path)
    src = s.source
    assert src is not None and src.name == "cifar10" and src.probe
    want = torch.from_numpy(batch["data"][:4]).reshape(4, 3, 32, 32).float() / 255.0
    assert src.test.x.dtype == torch.float32 and torch.equal(src.test.x, want)  # R, G, B planes, in [0, 1]
    assert src.test.y.tolist() == batch["labels"][:4]
    assert src.train is src.test and src.val is src.test  # no other clean split
    assert len(s.experiences) == 2 and s.experiences[0].test.x.shape == (4, 3, 32, 32)  # the stream as before
    assert s.info().has_source
    plain = _build(data_dir=str(tmp_path / "CIFAR-10-C"), n_examples=4)
    assert plain.source is None and plain.content_hash() != s.content_hash()  # off by default
    assert all(torch.equal(a.test.x, b.test.x) for a, b in zip(plain.experiences, s.experiences, strict=True))


def test_clean_source_inside_the_c_folder_and_a_home_relative_data_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "CIFAR-10-C"
    _write_c(folder)
    write_cifar(folder, per_class=1)  # <CIFAR-10-C>/cifar-10-batches-py/test_batch
    monkeypatch.setenv("HOME", str(tmp_path))
    s = _build(data_dir="~/CIFAR-10-C", clean_source=True, verify_checksums=False)
    assert s.source is not None and len(s.source.test) == 10  # n_examples 10,000 > the 10 images
    assert s.source.test.y.tolist() == _test_batch(folder)["labels"]


def test_a_missing_or_malformed_clean_batch_names_the_layout(tmp_path: Path) -> None:
    folder = tmp_path / "CIFAR-10-C"
    _write_c(folder)
    with pytest.raises(DataUnavailableError) as err:
        _build(data_dir=str(folder), clean_source=True)
    msg = str(err.value)
    assert "cifar-10-batches-py/test_batch" in msg and str(folder / "cifar-10-batches-py") in msg
    assert str(tmp_path / "cifar-10-batches-py" / "test_batch") in msg
    write_cifar(tmp_path, per_class=1)
    with pytest.raises(DataUnavailableError, match=r"md5 .* torchvision lists 40351d587109b95175f43aff81a1287e"):
        _build(data_dir=str(folder), clean_source=True)  # a synthetic copy is not the release
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0, 1, 2, 3]}, protocol=2))
    with pytest.raises(DataUnavailableError, match="lacks a uint8 'data' array"):
        _build(data_dir=str(folder), clean_source=True, verify_checksums=False)
    path.write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": Path("/")}, protocol=2))
    with pytest.raises(DataUnavailableError, match="not a CIFAR python batch"):  # foreign globals never load
        _build(data_dir=str(folder), clean_source=True, verify_checksums=False)

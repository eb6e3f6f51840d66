"""``imagenet_c`` with ``scenario.storage=disk`` (scenarios/corruption_c.py): each domain's images
stay on disk and are decoded, with the in-memory loader's own resize/centre-crop, when the
test-time loop reads a batch; the batches, the content hash and a test-time run are those of
``storage=memory``, and no pass decodes more than a batch at once."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from clbench.errors import ConfigError, DataUnavailableError
from clbench.lazy_images import LazyImages, decode_image, lazy_images
from clbench.options import build_dataclass
from clbench.registry import SCENARIOS
from clbench.runner import run
from clbench.streams import Stream
from clbench.testing import tiny_config
from scenarios.corruption_c import _load_image

CORRUPTIONS = ("fog", "snow")
SIZE, BATCH, N = 8, 3, 7
# (width, height) per image of a class: non-square sizes whose resize and centre crop
# _load_image and decode_image round differently, and one already SIZE x SIZE (kept as it is)
SHAPES = ((13, 10), (11, 17), (SIZE, SIZE))


def _tree(tmp: Path) -> Path:
    """``<corruption>/5/<wnid>/*.JPEG``: 3 classes x 3 images, random pixels per corruption."""
    rng = np.random.default_rng(0)
    for name in CORRUPTIONS:
        for wnid in ("n01", "n02", "n03"):
            folder = tmp / name / "5" / wnid
            folder.mkdir(parents=True)
            for i, (w, h) in enumerate(SHAPES):
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.JPEG")
    return tmp


def _options(root: Path, **extra: Any) -> dict[str, Any]:
    return {"data_dir": str(root), "corruptions": list(CORRUPTIONS), "n_examples": N, "image_size": SIZE,
            "batch_size": BATCH, **extra}


def _build(**options: Any) -> Stream:
    cls = SCENARIOS.get("imagenet_c")
    return cls(build_dataclass(cls.Config, options, "scenario")).build()


def test_disk_and_memory_streams_give_identical_batches(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    memory, disk = _build(**_options(root)), _build(**_options(root, storage="disk"))
    assert disk.meta == memory.meta and disk.num_classes == memory.num_classes == 3
    assert disk.input_shape == memory.input_shape == (3, SIZE, SIZE)
    for m, d in zip(memory.experiences, disk.experiences, strict=True):
        assert lazy_images(m.test.x) is None and lazy_images(d.test.x) is not None
        assert torch.equal(d.test.y, m.test.y) and len(d.test) == N
        for i in range(0, N, BATCH):  # the test-time loop's slices
            got, want = d.test.x[i : i + BATCH], m.test.x[i : i + BATCH]
            assert got.dtype == torch.uint8 and torch.equal(got, want)
    assert not torch.equal(memory.experiences[0].test.x, memory.experiences[1].test.x)  # two domains
    assert disk.content_hash() == memory.content_hash()


def test_disk_decodes_with_the_memory_loaders_resize_not_the_generic_one(tmp_path: Path) -> None:
    """The images of this tree are ones where the two decoders differ, so the parity above holds
    because the split decodes with ``_load_image``."""
    path = _tree(tmp_path) / "fog" / "5" / "n01" / "img0.JPEG"
    assert not torch.equal(decode_image(path, SIZE, 224 / 256), _load_image(path, SIZE))
    x = _build(**_options(tmp_path, storage="disk")).experiences[0].test.x
    lazy = lazy_images(x)
    assert lazy is not None and "decoded on access" in repr(lazy)


@pytest.mark.parametrize("method", ["norm_adapt", "tent"])
def test_a_test_time_run_is_the_same_from_disk_and_reads_one_batch_at_a_time(
        method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "data")
    decoded: list[int] = []
    original = LazyImages._decode

    def counting(self: LazyImages, pos: Tensor) -> Tensor:
        decoded.append(len(pos))
        return original(self, pos)

    monkeypatch.setattr(LazyImages, "_decode", counting)
    # the content hash reads blocks of 256 rows (more than this tiny domain): read BATCH here, so
    # that every decode of the run is bounded by the batch size
    monkeypatch.setattr(LazyImages, "chunks", functools.partialmethod(LazyImages.chunks, BATCH))

    def config(where: str, storage: str) -> Any:
        values = {f"scenario.{k}": v for k, v in _options(root, storage=storage).items()}
        return tiny_config(tmp_path / where, method, scenario="imagenet_c", model="cnn_bn",
                           **{"model.channels": 4, **values})

    memory = run(config("memory", "memory"))
    assert decoded == []  # nothing read lazily in memory
    disk = run(config("disk", "disk"))
    assert decoded and max(decoded) <= BATCH < N  # never a whole domain at once
    # each image decoded three times, as ImageNetCConfig.storage says: the content hash, predict
    # before adaptation and the online pass
    assert sum(decoded) == 3 * len(CORRUPTIONS) * N
    assert disk.R == memory.R and disk.R_pretrain == memory.R_pretrain
    np.testing.assert_equal(disk.metrics, memory.metrics)  # NaN (undefined matrix metrics) equal to NaN
    assert [e.error for e in disk.per_experience] == [e.error for e in memory.per_experience]
    assert disk.scenario.content_hash == memory.scenario.content_hash


def test_storage_is_checked_and_an_unreadable_file_fails_when_read(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    with pytest.raises(ConfigError, match="scenario.storage"):
        _build(**_options(root, storage="ram"))
    for name in CORRUPTIONS:  # the same file in every domain (every file is picked: n_examples=9)
        (root / name / "5" / "n01" / "img0.JPEG").write_bytes(b"not a jpeg")
    stream = _build(**_options(root, n_examples=9, storage="disk"))  # built: files exist
    with pytest.raises(DataUnavailableError, match="not a readable image"):
        stream.experiences[0].test.x[0:9]

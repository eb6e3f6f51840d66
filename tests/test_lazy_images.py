"""Images read lazily from disk (clbench/lazy_images.py, ``scenario.storage=disk``): the split
behaves as the uint8 tensor where the harness and methods index it, and training through the
DataLoader (0 or 2 workers) gives the weights the in-memory path gives."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from PIL import Image
from test_real_benchmarks import write_cifar, write_core50
from torch import Tensor

import clbench.trainer as trainer_module
from clbench.augment import attach
from clbench.config import TrainerConfig
from clbench.errors import ConfigError, DataUnavailableError
from clbench.lazy_images import BatchLoader, LazyImages, Loading, lazy_images
from clbench.models import build_model
from clbench.options import build_dataclass
from clbench.protocol import Method
from clbench.registry import METHODS, SCENARIOS
from clbench.streams import Split, Stream
from clbench.testing import params_equal
from clbench.trainer import Trainer
from scenarios._vision import VisionData, experiences, read_images


def _build(name: str, **options: Any) -> Stream:
    cls = SCENARIOS.get(name)
    return cls(build_dataclass(cls.Config, options, "scenario")).build()


def _files(tmp: Path, n: int = 7) -> list[Path]:
    """``n`` random RGB images of varying, non-square sizes (resized and centre-cropped at 8 px)."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        path = tmp / f"img_{k}.png"
        Image.fromarray(rng.integers(0, 256, (10 + k, 9 + 2 * k, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def test_a_lazy_split_is_indexed_like_the_uint8_tensor(tmp_path: Path) -> None:
    paths = _files(tmp_path)
    full = read_images(paths, 8, 0.875)
    x = LazyImages.from_files(paths, 8, 0.875)
    assert (len(x), x.shape, x.dtype, x.device, x.ndim) == (7, full.shape, torch.uint8, torch.device("cpu"), 4)
    idx = torch.tensor([5, 0, 5, -1])
    mask = torch.arange(7) % 2 == 0
    for key in (3, -2, slice(1, 6, 2), slice(0, 0), idx, mask, [2, 1], np.array([4, 6]), torch.tensor([[1, 2], [3, 0]])):
        got, want = x[key], full[key]
        assert got.dtype == torch.uint8 and torch.equal(got, want), key
    assert torch.equal(x[idx, 1], full[idx, 1]) and torch.equal(x[2, :, 0], full[2, :, 0])
    assert torch.equal(x[idx][torch.tensor([1, 3])], full[idx][torch.tensor([1, 3])])  # a method's x[idx][keep]
    assert all(torch.equal(a, b) for a, b in zip(x, full, strict=True))
    with pytest.raises(IndexError):
        x[7]
    # rows kept on disk: Split.subset, Split.concat and torch.cat with stored uint8 rows
    split = Split(cast(Tensor, x), torch.arange(7) % 3)
    sub = split.subset(idx)
    assert lazy_images(sub.x) is not None and torch.equal(sub.x[:], full[idx]) and torch.equal(sub.y, split.y[idx])
    stored = full[:2].flip(-1).contiguous()
    both = Split.concat([sub, Split(stored, torch.zeros(2, dtype=torch.long)), split.subset(mask)])
    assert lazy_images(both.x) is not None and len(both) == 4 + 2 + 4
    assert torch.equal(both.x[:], torch.cat([full[idx], stored, full[mask]]))
    assert torch.equal(torch.cat([stored, cast(Tensor, x)])[torch.tensor([0, 3])], torch.stack([stored[0], full[1]]))


def test_what_needs_every_image_in_memory_is_refused_clearly(tmp_path: Path) -> None:
    x = LazyImages.from_files(_files(tmp_path, 3), 8)
    with pytest.raises(AttributeError, match=r"no 'float'.*storage=memory"):
        x.float()  # type: ignore[operator]
    with pytest.raises(TypeError, match=r"torch.stack on LazyImages .*storage=memory"):
        torch.stack([cast(Tensor, x)])
    with pytest.raises(TypeError, match="same shape"):
        torch.cat([cast(Tensor, x), torch.zeros(1, 3, 4, 4, dtype=torch.uint8)])
    with pytest.raises(IndexError, match="Ellipsis"):
        x[...]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad = LazyImages.from_files([broken], 8)  # built: decoding happens on access
    with pytest.raises(DataUnavailableError, match="not a readable image"):
        bad[0]
    with pytest.raises(ConfigError, match="scenario.workers"):
        Loading(workers=-1)


def test_disk_storage_builds_the_same_stream_and_refuses_where_it_cannot(tmp_path: Path) -> None:
    root = str(write_core50(tmp_path, n=4, frames=2))
    opts: dict[str, Any] = {"root": root, "n_classes": 4, "image_size": 8}
    memory = _build("core50", **opts)
    disk = _build("core50", **opts, storage="disk")
    for a, b in zip(memory.experiences, disk.experiences, strict=True):
        for s, t in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
            assert lazy_images(t.x) is not None and torch.equal(s.x, t.x[:]) and torch.equal(s.y, t.y)
    assert disk.content_hash() == memory.content_hash() and disk.input_shape == memory.input_shape
    with pytest.raises(ConfigError, match="scenario.storage"):
        _build("core50", **opts, storage="cloud")
    with pytest.raises(ConfigError, match="scenario.workers"):
        _build("core50", **opts, workers=2)  # workers need storage=disk
    cifar = {"root": str(write_cifar(tmp_path / "cifar", per_class=1)), "verify_checksums": False,
             "n_classes": 4, "n_experiences": 2, "image_size": 8}
    with pytest.raises(ConfigError, match=r"scenario.storage.*pickled batches"):
        _build("split_cifar10", **cifar, storage="disk")
    held = Split(memory.experiences[0].train.x, memory.experiences[0].train.y)  # a loader that decoded at build
    with pytest.raises(ConfigError, match=r"scenario.storage.*image_split"):
        experiences([((0, 1), held)], held, VisionData(storage="disk"))


# ---------------------------------------------------------------------------- training

def _nc(tmp_path: Path, **options: Any) -> Stream:
    root = tmp_path / "data"
    if not root.exists():
        write_core50(root, n=4, frames=2)
    return _build("core50", root=str(root), n_classes=4, protocol="nc", n_experiences=3, first_classes=2,
                  image_size=8, val_fraction=0.0, crop_padding=2, **options)


def _train(stream: Stream, method: Method, epochs: int = 2) -> torch.nn.Module:
    """The runner's loop in small: seeded model, the method's setup, every experience trained."""
    torch.manual_seed(0)
    model = attach(build_model("mlp", stream.info(), {"hidden": 16, "layers": 1})[0], stream.inputs)
    model = method.setup(model, stream.info())
    cfg = TrainerConfig(epochs=epochs, batch_size=5, lr=0.05, optimizer="sgd", progress=False)
    trainer = Trainer(cfg, torch.device("cpu"), inputs=stream.inputs)
    exps = stream.experiences
    for i, exp in enumerate(exps):
        torch.manual_seed(100 + i)  # methods draw from the global RNG (reservoirs, memory passes)
        trainer.train_experience(model, method, exp, exps[: i + 1], torch.Generator().manual_seed(i))
    return model


@pytest.mark.parametrize("method", ["naive", "replay", "er_ace", "joint", "icarl"])
def test_training_from_disk_through_the_dataloader_gives_the_in_memory_weights(
        method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory, disk = _nc(tmp_path), _nc(tmp_path, storage="disk")
    assert lazy_images(disk.experiences[0].train.x) is not None
    loaders: list[object] = []

    class Counted(BatchLoader):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            loaders.append(self)

    monkeypatch.setattr(trainer_module, "BatchLoader", Counted)
    options = {"mem_size": 6} if method in ("replay", "er_ace", "icarl") else {}
    make = METHODS.get(method)
    a = _train(memory, make(build_dataclass(make.Config, options, "method")))
    assert not loaders  # the in-memory path has no DataLoader
    b = _train(disk, make(build_dataclass(make.Config, options, "method")))
    assert len(loaders) == 3  # one per experience, through both epochs
    assert params_equal(a, b)
    torch.manual_seed(0)
    assert not params_equal(a, build_model("mlp", memory.info(), {"hidden": 16, "layers": 1})[0])  # it trained


def test_the_loaded_batches_are_the_in_memory_batches_also_per_data_parallel_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory, disk = _nc(tmp_path), _nc(tmp_path, storage="disk")
    exp_m, exp_d = memory.experiences[1], disk.experiences[1]  # 16 images: batches 5, 5, 5, 1
    cfg = TrainerConfig(batch_size=5, progress=False)

    def batches(exp: Any, inputs: Any, skip: int) -> Iterator[tuple[Any, ...]]:
        t = Trainer(cfg, torch.device("cpu"), inputs=inputs)
        for b in t._batches(exp.train, exp, torch.Generator().manual_seed(3), skip):
            stand_in = t._stand_in if len(b) == 0 else None  # used only for an empty shard
            yield b.x, b.y, b.task, t._draw, t._share, stand_in

    def same(a: Sequence[Any], b: Sequence[Any]) -> bool:
        return all(torch.equal(u, v) if isinstance(u, Tensor) else u == v for u, v in zip(a, b, strict=True))

    for world, rank in ((1, 0), (2, 0), (2, 1)):
        monkeypatch.setattr(trainer_module, "world_info", lambda r=rank, w=world: (r, w))
        for skip in (0, 2):
            got = list(batches(exp_d, disk.inputs, skip))
            want = list(batches(exp_m, memory.inputs, skip))
            assert len(got) == len(want) == 4 - skip and all(same(g, w) for g, w in zip(got, want, strict=True))
            if world == 2 and rank == 1:
                assert len(got[-1][0]) == 0 and got[-1][5] is not None  # the empty shard's stand-in


@pytest.mark.integration  # spawns 2 DataLoader worker processes
def test_two_dataloader_workers_give_the_in_memory_weights(tmp_path: Path) -> None:
    memory = _nc(tmp_path)
    disk = _nc(tmp_path, storage="disk", workers=2)  # persistent across the 2 epochs
    x = lazy_images(disk.experiences[0].train.x)
    assert x is not None and x.loading == Loading(workers=2)
    make = METHODS.get("replay")
    a = _train(memory, make(build_dataclass(make.Config, {"mem_size": 6}, "method")))
    b = _train(disk, make(build_dataclass(make.Config, {"mem_size": 6}, "method")))
    assert params_equal(a, b)
    assert disk.content_hash() == memory.content_hash()  # decoded in the workers too

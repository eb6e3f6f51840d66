"""Replay on the shared reservoir memory (``methods._memory.ReservoirMemory``) is bit-exact with the
reservoir code Replay had of its own before (commit 23217ec): the same random draws, the same memory
(contents, order, reservoir weights), the same weights after training.

``_OldReplay`` below is that earlier implementation, copied verbatim (less the registration), and is
the reference: both run the same stream through the trainer, seeded per experience as the runner
seeds (``clbench.loops``), and must agree exactly, tensor for tensor.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest
import torch
from torch import Tensor, nn

from clbench.augment import ImageInputs
from clbench.config import TrainerConfig
from clbench.loops import derive_seed
from clbench.models import build_model
from clbench.protocol import Method
from clbench.streams import Batch, Experience, Split, Stream
from clbench.testing import tiny_stream
from clbench.trainer import Trainer
from methods.replay import Replay, ReplayConfig

# ---- the reference: methods/replay.py's own reservoir code as of commit 23217ec (verbatim) ----

Group = dict[str, Tensor]  # x, y, task, w (reservoir weights, sorted descending)
Storage = Literal["reservoir", "class_balanced", "experience_balanced"]


def group_lengths(max_size: int, n_groups: int) -> list[int]:
    """Equal split of ``max_size`` over groups; the remainder goes to the first groups."""
    lengths = [max_size // n_groups] * n_groups
    for i in range(max_size - sum(lengths)):
        lengths[i] += 1
    return lengths


class _OldReplay(Method):
    Config = ReplayConfig

    def __init__(self, config: ReplayConfig | None = None) -> None:
        super().__init__(config)
        self.groups: dict[int, Group] = {}
        self._mem: Group = {}
        self._order: Tensor | None = None
        self._pos = self._consumed = self._n_train = self._bs = 0

    @property
    def memory_size(self) -> int:
        """Number of samples in the memory."""
        return sum(len(g["y"]) for g in self.groups.values())

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        parts = list(self.groups.values()) if self.memory_size else []
        self._mem = {k: torch.cat([g[k] for g in parts]) for k in ("x", "y", "task")} if parts else {}
        self._order, self._pos, self._consumed = None, 0, 0
        self._n_train, self._bs = len(exp.train), 0

    def transform_batch(self, batch: Batch) -> Batch:
        if not self._mem:
            return batch
        self._bs = max(self._bs, len(batch))
        idx = self._next_indices(self.config.batch_size_mem or self._bs)
        self._consumed += len(batch)
        if self._consumed >= self._n_train:  # end of a pass over the data: restart the memory
            self._order, self._consumed = None, 0
        dev = batch.x.device
        if self._mem["x"].device != dev:
            self._mem = {k: t.to(dev) for k, t in self._mem.items()}
        idx = idx.to(dev)
        y = None if batch.y is None else torch.cat([batch.y, self._mem["y"][idx]])
        task = None if batch.task is None else torch.cat([batch.task, self._mem["task"][idx]])
        return Batch(torch.cat([batch.x, self._mem["x"][idx]]), y, task)

    def _next_indices(self, n: int) -> Tensor:
        size = len(self._mem["y"])
        if self._order is None or self._pos >= size:
            self._order = torch.randperm(size) if self.config.shuffle_memory else torch.arange(size)
            self._pos = 0
        idx = self._order[self._pos : self._pos + n]
        self._pos += len(idx)
        return idx

    def on_experience_end(self, exp: Experience, model: nn.Module) -> None:
        x, y = exp.train.x, exp.train.y
        task = torch.full_like(y, exp.task_id)
        if self.config.storage == "class_balanced":
            # classes in order of first appearance, as Avalanche's ClassBalancedBuffer
            parts = {c: y == c for c in dict.fromkeys(y.tolist())}
        else:
            key = exp.index if self.config.storage == "experience_balanced" else 0
            parts = {key: torch.ones_like(y, dtype=torch.bool)}
        for key, sel in parts.items():
            self._add(key, {"x": x[sel], "y": y[sel], "task": task[sel]})
        if not self.groups:
            return
        caps = group_lengths(self.config.mem_size, len(self.groups))
        for key, cap in zip(sorted(self.groups), caps, strict=True):
            self.groups[key] = {k: t[:cap] for k, t in self.groups[key].items()}

    def _add(self, key: int, new: Group) -> None:
        new = {**new, "w": torch.rand(len(new["y"]))}
        old = self.groups.get(key)
        if old is not None:
            new = {k: torch.cat([new[k], old[k]]) for k in new}
        order = new["w"].sort(descending=True).indices
        self.groups[key] = {k: t[order] for k, t in new.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"groups": [{"key": k, **{n: t.cpu() for n, t in g.items()}}
                           for k, g in self.groups.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.groups = {int(g["key"]): {n: g[n] for n in ("x", "y", "task", "w")}
                       for g in state["groups"]}


# ---- the comparison ----

STORAGES: tuple[Storage, ...] = ("reservoir", "class_balanced", "experience_balanced")
VARIANTS: dict[str, dict[str, Any]] = {"defaults": {}, "small": {"mem_size": 17, "batch_size_mem": 5},
            "unshuffled": {"mem_size": 23, "batch_size_mem": 3, "shuffle_memory": False}}


def _assert_same_groups(new: dict[int, Group], old: dict[int, Group]) -> None:
    assert list(new) == list(old)  # the same groups, in the same (insertion) order
    for key in old:
        assert list(new[key]) == list(old[key])
        for name in old[key]:
            assert new[key][name].dtype == old[key][name].dtype, (key, name)
            assert torch.equal(new[key][name], old[key][name]), (key, name)


def _image_stream() -> Stream:
    """3 experiences of random uint8 4x4 images, augmented (crop + flip) by the trainer."""
    g = torch.Generator().manual_seed(5)
    exps = []
    for i in range(3):
        classes = (2 * i, 2 * i + 1)
        y = torch.tensor(classes).repeat(15)
        split = Split(torch.randint(0, 256, (30, 1, 4, 4), dtype=torch.uint8, generator=g), y)
        exps.append(Experience(i, 0, classes, split, split, split))
    return Stream("images", "1", "class_incremental", tuple(exps), 6,
                  inputs=ImageInputs(mean=(0.5,), std=(0.25,), crop_padding=1, hflip=True))


def _train(cls: type[Method], config: ReplayConfig, stream: Stream) -> tuple[Method, nn.Module, Tensor]:
    """``stream`` trained with ``cls(config)`` as the runner does (the global RNG and the shuffling
    generator seeded per experience); returns the method, the model and the final RNG state."""
    torch.manual_seed(0)
    model, _ = build_model("mlp", stream.info(), {"hidden": 16, "layers": 1})
    method = cls(config)
    method.setup(model, stream.info())
    trainer = Trainer(TrainerConfig(epochs=2, batch_size=8, lr=0.05, progress=False), torch.device("cpu"),
                      inputs=stream.inputs)
    exps = stream.experiences
    for i, exp in enumerate(exps):
        torch.manual_seed(derive_seed(0, i))
        trainer.train_experience(model, method, exp, exps[: i + 1], torch.Generator().manual_seed(derive_seed(0, i, 1)))
    return method, model, torch.get_rng_state()


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("images", [False, True], ids=["floats", "uint8_augmented"])
def test_replay_trains_exactly_as_its_earlier_own_reservoir_code(storage: Storage, variant: str, images: bool) -> None:
    stream = _image_stream() if images else tiny_stream()
    config = ReplayConfig(storage=storage, **VARIANTS[variant])
    new, new_model, new_rng = _train(Replay, config, stream)
    old, old_model, old_rng = _train(_OldReplay, config, stream)
    assert isinstance(new, Replay) and isinstance(old, _OldReplay)
    assert new.memory_size == old.memory_size > 0
    _assert_same_groups(new.groups, old.groups)
    assert torch.equal(new_rng, old_rng)  # the same random draws, no more, no fewer
    new_w, old_w = new_model.state_dict(), old_model.state_dict()
    assert new_w.keys() == old_w.keys() and all(torch.equal(new_w[k], old_w[k]) for k in old_w)
    # the checkpointed state has the same form and values: either loads the other's
    new_state, old_state = new.state_dict(), old.state_dict()
    assert [g["key"] for g in new_state["groups"]] == [g["key"] for g in old_state["groups"]]
    for a, b in zip(new_state["groups"], old_state["groups"], strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in b if n != "key")
    restored = Replay(config)
    restored.load_state_dict(old_state)
    _assert_same_groups(restored.groups, old.groups)


def _exp(index: int, n: int, classes: tuple[int, ...], task: int = 0) -> Experience:
    ids = torch.arange(n, dtype=torch.float32) + 1000 * index
    y = torch.tensor(classes).repeat(n // len(classes) + 1)[:n]
    split = Split(ids[:, None], y)
    return Experience(index, task, classes, split, split, split)


@pytest.mark.parametrize("storage", STORAGES)
def test_memory_updates_match_with_empty_and_uneven_experiences(storage: Storage) -> None:
    """Updates alone, on experiences of uneven sizes, one of them empty (which an experience-balanced
    memory still counts: its share of the capacity goes unused, as before)."""
    exps = [_exp(0, 31, (0, 1, 2)), _exp(1, 0, (3,)), _exp(2, 9, (3, 4), task=1), _exp(3, 50, (0, 5))]
    new, old = Replay(ReplayConfig(mem_size=20, storage=storage)), _OldReplay(ReplayConfig(mem_size=20, storage=storage))
    for m in (new, old):
        torch.manual_seed(11)
        for e in exps:
            m.on_experience_end(e, nn.Identity())
    assert isinstance(new, Replay) and isinstance(old, _OldReplay)
    _assert_same_groups(new.groups, old.groups)
    assert new.memory_size == old.memory_size

"""Replay: memory capacity, reservoir uniformity, class/experience balance, batches, state."""

from __future__ import annotations

import io
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from clbench.protocol import check_compatible
from clbench.runner import run
from clbench.streams import Batch, Experience, Split
from clbench.testing import tiny_config, tiny_stream
from methods._memory import group_lengths
from methods.replay import Replay, ReplayConfig, Storage

MODEL = nn.Identity()


def _exp(index: int, n: int, classes: tuple[int, ...] = (0, 1)) -> Experience:
    """Experience whose inputs encode (experience, sample) so memory origins can be traced."""
    ids = torch.arange(n, dtype=torch.float32) + 1000 * index
    y = torch.tensor(classes).repeat(n // len(classes) + 1)[:n]
    split = Split(torch.stack([ids, torch.full((n,), float(index))], dim=1), y)
    return Experience(index, 0, classes, split, split, split)


def _batch(n: int = 8) -> Batch:
    return Batch(-torch.ones(n, 2), torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))


def _memory_rows(r: Replay) -> set[tuple[float, ...]]:
    return {tuple(row.tolist()) for g in r.groups.values() for row in g["x"]}


@pytest.mark.parametrize("storage", ["reservoir", "class_balanced", "experience_balanced"])
def test_memory_never_exceeds_its_size(storage: Storage) -> None:
    torch.manual_seed(0)
    r = Replay(ReplayConfig(mem_size=37, storage=storage))
    for i in range(6):
        r.on_experience_end(_exp(i, 25 + 5 * i, classes=(2 * i, 2 * i + 1)), MODEL)
        assert r.memory_size == min(37, sum(25 + 5 * j for j in range(i + 1)))
        assert all((g["w"][:-1] >= g["w"][1:]).all() for g in r.groups.values())  # kept sorted


def test_reservoir_keeps_a_uniform_sample_of_everything_seen() -> None:
    counts: Counter[int] = Counter()
    for seed in range(20):
        torch.manual_seed(seed)
        r = Replay(ReplayConfig(mem_size=100))
        for i in range(5):
            r.on_experience_end(_exp(i, 200), MODEL)
        counts.update(int(e) for e in r.groups[0]["x"][:, 1])
    # 2,000 memory slots over 5 equally large experiences: 400 each in expectation (sd ~18)
    assert all(330 <= counts[i] <= 470 for i in range(5)), counts


def test_class_balanced_memory_holds_equal_counts_per_class() -> None:
    torch.manual_seed(0)
    r = Replay(ReplayConfig(mem_size=60, storage="class_balanced"))
    for i in range(3):
        r.on_experience_end(_exp(i, 100, classes=(2 * i, 2 * i + 1)), MODEL)
        per_class = Counter(int(c) for g in r.groups.values() for c in g["y"])
        assert set(per_class.values()) == {60 // (2 * (i + 1))}
    assert sorted(r.groups) == [0, 1, 2, 3, 4, 5]
    assert group_lengths(10, 4) == [3, 3, 2, 2]


def test_experience_balanced_memory_holds_equal_counts_per_experience() -> None:
    torch.manual_seed(0)
    r = Replay(ReplayConfig(mem_size=30, storage="experience_balanced"))
    for i in range(3):
        r.on_experience_end(_exp(i, 50), MODEL)
    assert [len(g["y"]) for g in r.groups.values()] == [10, 10, 10]
    assert all((g["x"][:, 1] == k).all() for k, g in r.groups.items())


def test_transform_batch_appends_an_equal_sized_memory_batch_once_memory_is_filled() -> None:
    torch.manual_seed(0)
    r = Replay(ReplayConfig(mem_size=20))
    first = _exp(0, 40)
    r.on_experience_start(first, MODEL)
    batch = _batch()
    assert r.transform_batch(batch) is batch  # empty memory: unchanged
    r.on_experience_end(first, MODEL)
    r.on_experience_start(_exp(1, 40), MODEL)
    out = r.transform_batch(batch)
    assert len(out) == 16 and out.y is not None and out.task is not None
    assert torch.equal(out.x[:8], batch.x)
    mem = _memory_rows(r)
    assert all(tuple(row.tolist()) in mem for row in out.x[8:])
    assert torch.equal(out.y[8:], out.x[8:, 0].long() % 2)  # labels travel with their inputs
    assert len(r.transform_batch(_batch(5))) == 5 + 8  # memory batch = largest batch seen


def test_memory_is_visited_in_passes_restarting_with_each_epoch() -> None:
    torch.manual_seed(0)
    r = Replay(ReplayConfig(mem_size=10, batch_size_mem=4))
    r.on_experience_end(_exp(0, 30), MODEL)
    r.on_experience_start(_exp(1, 24), MODEL)  # 24 samples = 3 batches of 8 per epoch
    drawn = [r.transform_batch(_batch()).x[8:] for _ in range(3)]
    sizes = [len(d) for d in drawn]
    assert sizes == [4, 4, 2]  # one full pass over the 10 memory samples, last chunk short
    assert {tuple(v.tolist()) for d in drawn for v in d} == _memory_rows(r)
    assert len(r.transform_batch(_batch()).x) == 12  # new epoch: a new pass starts


def test_memory_follows_the_batch_device_and_stored_order_without_shuffle() -> None:
    r = Replay(ReplayConfig(mem_size=6, shuffle_memory=False))
    r.on_experience_end(_exp(0, 6), MODEL)
    r.on_experience_start(_exp(1, 100), MODEL)
    out = r.transform_batch(_batch(3))
    assert torch.equal(out.x[3:], r.groups[0]["x"][:3])
    if torch.cuda.is_available():
        out = r.transform_batch(_batch(3).to(torch.device("cuda")))
        assert out.x.device.type == "cuda" and torch.equal(out.x[3:].cpu(), r.groups[0]["x"][3:])


def test_state_dict_round_trips_through_weights_only_load() -> None:
    torch.manual_seed(0)
    r = Replay(ReplayConfig(mem_size=15, storage="class_balanced"))
    for i in range(2):
        r.on_experience_end(_exp(i, 20, classes=(2 * i, 2 * i + 1)), MODEL)
    buf = io.BytesIO()
    torch.save(r.state_dict(), buf)
    buf.seek(0)
    restored = Replay(ReplayConfig(mem_size=15, storage="class_balanced"))
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert list(restored.groups) == list(r.groups)
    assert all(torch.equal(restored.groups[k][n], r.groups[k][n]) for k in r.groups for n in r.groups[k])
    batches = []
    for m in (r, restored):
        torch.manual_seed(1)
        m.on_experience_start(_exp(2, 20), MODEL)
        batches.append(m.transform_batch(_batch()).x)
    assert torch.equal(*batches)


def test_task_incremental_replays_with_old_task_ids(tmp_path: Path) -> None:
    check_compatible(Replay, tiny_stream(scenario_type="task_incremental"), "vision")
    res = run(tiny_config(tmp_path, "replay", **{"scenario.scenario_type": "task_incremental"}))
    assert all(math.isfinite(e.mean_loss) for e in res.per_experience)
    # the forward passes include memory samples (of older tasks) from experience 1 on
    fwd = [e.forward_samples - e.train_samples for e in res.per_experience]
    assert fwd[0] == 0 and fwd[1] > 0 and fwd[2] > 0
    replay = Replay(ReplayConfig(mem_size=20))
    stream = tiny_stream(scenario_type="task_incremental")
    replay.on_experience_end(stream.experiences[0], torch.nn.Linear(16, 6))
    e1 = stream.experiences[1]
    replay.on_experience_start(e1, torch.nn.Linear(16, 6))
    batch = Batch(e1.train.x[:4], e1.train.y[:4], torch.full((4,), 1))
    out = replay.transform_batch(batch)
    assert out.task is not None and set(out.task[4:].tolist()) == {0} and set(out.task[:4].tolist()) == {1}

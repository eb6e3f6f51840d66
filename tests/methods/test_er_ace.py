"""ER-ACE: the asymmetric loss (absent classes masked), memory filled at experience start, replay
from the second experience, task heads, state."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import test_runs
import torch
import torch.nn.functional as F
from torch import nn

from clbench.runner import run
from clbench.streams import Batch, Experience, StreamInfo
from clbench.testing import tiny_config, tiny_stream
from methods._memory import training_inputs
from methods.er_ace import ERACE, ERACEConfig, asymmetric_ce

# the step-checkpoint resume check of tests/test_runs.py (kill at step 8 of experience 1, resume)
_step_resume = test_runs.test_a_kill_within_an_experience_resumes_from_the_last_step_checkpoint_with_the_same_R


def _model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(16, 6)


def _start(method: ERACE, model: nn.Module, upto: int, scenario_type: str = "class_incremental") -> Experience:
    """Experiences 0..upto started (and ended) in order, ``upto`` left running; returns it."""
    exps = tiny_stream(scenario_type=scenario_type).experiences
    method.setup(model, StreamInfo("tiny", scenario_type, 3, 6, (16,), tuple(e.classes for e in exps)))
    for e in exps[:upto]:
        method.on_experience_start(e, model)
        method.on_experience_end(e, model)
    method.on_experience_start(exps[upto], model)
    return exps[upto]


def _batch(exp: Experience, n: int = 8) -> Batch:
    idx = torch.arange(0, len(exp.train), len(exp.train) // n)[:n]  # both classes of the experience
    return Batch(exp.train.x[idx], exp.train.y[idx], torch.full((n,), exp.task_id))


def test_current_batch_loss_masks_classes_absent_from_the_batch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 5, requires_grad=True)
    y = torch.tensor([1, 3, 3, 1, 1, 3])
    loss = asymmetric_ce(logits, y)
    # = cross-entropy over the present classes {1, 3} only
    assert torch.allclose(loss, F.cross_entropy(logits[:, [1, 3]], torch.tensor([0, 1, 1, 0, 0, 1])))
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[:, [0, 2, 4]] == 0)  # absent (old or unseen) classes: no push
    assert torch.all(logits.grad[:, [1, 3]] != 0)
    with torch.no_grad():
        raised = logits.clone()
        raised[:, [0, 2, 4]] += 100.0  # old classes scoring high does not change it
    assert torch.equal(asymmetric_ce(raised, y), loss.detach())


def test_current_batch_loss_survives_an_underflowing_probability() -> None:
    out = torch.tensor([[-200.0, 200.0, 0.0], [0.0, 1.0, 5.0]])
    y = torch.tensor([1, 0])  # present: {0, 1}; sample 0's class-0 probability underflows to 0
    z = out[:, :2] - out[:, :2].max(dim=1, keepdim=True)[0]
    softmax = z.exp() / z.exp().sum(dim=1, keepdim=True)
    one_hot = F.one_hot(torch.tensor([1, 0]), 2)
    assert math.isnan(float(-(one_hot * softmax.log()).sum(1).mean()))  # Avalanche's 0 * log(0)
    loss = asymmetric_ce(out, y)
    assert math.isfinite(float(loss)) and torch.allclose(loss, F.cross_entropy(out[:, :2], y))


def test_memory_takes_the_experience_at_its_start_and_replay_waits_for_the_second() -> None:
    model, ace = _model(), ERACE(ERACEConfig(mem_size=30, batch_size_mem=4))
    exp0 = _start(ace, model, 0)
    assert len(ace.memory) == 30 and set(ace.memory.tensors()["y"].tolist()) == {0, 1}
    batch = _batch(exp0)
    base = torch.tensor(0.25)
    assert ace.loss(model, batch, model(batch.x), base) is base  # first experience: plain CE
    ace.on_experience_end(exp0, model)
    exp1 = tiny_stream().experiences[1]
    ace.on_experience_start(exp1, model)
    counts = torch.bincount(ace.memory.tensors()["y"], minlength=4).tolist()
    assert counts == [8, 8, 7, 7]  # class-balanced, current classes included (30 over 4 classes)


def test_replayed_loss_is_the_mean_of_memory_ce_and_present_class_ce() -> None:
    model, ace = _model(), ERACE(ERACEConfig(mem_size=30, batch_size_mem=4, shuffle_memory=False))
    exp1 = _start(ace, model, 1)
    batch = _batch(exp1)
    outputs = model(batch.x)
    assert batch.y is not None
    loss = ace.loss(model, batch, outputs, F.cross_entropy(outputs, batch.y))
    mem = ace.memory.tensors()
    expected = (F.cross_entropy(model(mem["x"][:4]), mem["y"][:4]) + asymmetric_ce(outputs, batch.y)) / 2
    assert torch.allclose(loss, expected)
    assert ace.experience_report() == {"memory_size": 30, "replay_steps": 1}


def test_task_incremental_masks_replayed_logits_to_their_own_task() -> None:
    model, ace = _model(), ERACE(ERACEConfig(mem_size=30, batch_size_mem=6, shuffle_memory=False))
    exp1 = _start(ace, model, 1, "task_incremental")
    batch = _batch(exp1)
    keep = torch.zeros(8, 6, dtype=torch.bool)
    keep[:, 2:4] = True
    outputs = model(batch.x).masked_fill(~keep, torch.finfo(torch.float32).min)  # as the trainer
    assert batch.y is not None
    loss = ace.loss(model, batch, outputs, F.cross_entropy(outputs, batch.y))
    mem = ace.memory.tensors()
    mem_out = model(mem["x"][:6])
    heads = {0: [0, 1], 1: [2, 3]}
    mem_ce = torch.stack([F.cross_entropy(mem_out[i, heads[int(t)]][None], (mem["y"][i] - heads[int(t)][0])[None])
                          for i, t in enumerate(mem["task"][:6])]).mean()
    current = F.cross_entropy(outputs[:, 2:4], batch.y - 2)
    assert math.isfinite(float(loss.detach())) and torch.allclose(loss, (mem_ce + current) / 2, atol=1e-6)


def test_uint8_memory_samples_get_the_training_pipeline() -> None:
    augment = pytest.importorskip("clbench.augment")
    inputs = augment.ImageInputs(mean=(0.5,), std=(0.25,), crop_padding=1, hflip=True)
    x = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    before = torch.get_rng_state()
    out = training_inputs(inputs, x, 3)
    assert torch.equal(torch.get_rng_state(), before)  # the seed is given: no global draw
    assert out.dtype == torch.float32 and torch.equal(out, inputs.train(x, 3, 5))
    assert not torch.equal(out, training_inputs(inputs, x, 4))
    floats = torch.randn(5, 1, 4, 4)
    assert training_inputs(inputs, floats, 3) is floats and training_inputs(None, x, 3) is x


def test_state_dict_round_trips_through_weights_only_load() -> None:
    model, ace = _model(), ERACE(ERACEConfig(mem_size=20, batch_size_mem=4))
    exp1 = _start(ace, model, 1)
    batch = _batch(exp1)
    ace.loss(model, batch, model(batch.x), torch.tensor(0.0))  # mid-pass
    buf = io.BytesIO()
    torch.save(ace.state_dict(), buf)
    buf.seek(0)
    restored = ERACE(ERACEConfig(mem_size=20, batch_size_mem=4))
    restored.load_state_dict(torch.load(buf, weights_only=True))
    a = ace.loss(model, batch, model(batch.x), torch.tensor(0.0))
    b = restored.loss(model, batch, model(batch.x), torch.tensor(0.0))
    assert torch.equal(a, b) and restored.task_classes == ace.task_classes


def test_runs_replay_from_the_second_experience_on(tmp_path: Path) -> None:
    res = run(tiny_config(tmp_path, "er_ace"))
    assert [e.method["replay_steps"] for e in res.per_experience] == [0, 12, 12]
    task = run(tiny_config(tmp_path / "t", "er_ace", **{"scenario.scenario_type": "task_incremental"}))
    assert all(math.isfinite(e.mean_loss or math.nan) for e in task.per_experience)


def test_a_kill_within_an_experience_resumes_with_the_same_R(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _step_resume(tmp_path, monkeypatch, "er_ace", False)

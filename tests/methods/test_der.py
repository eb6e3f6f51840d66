"""DER/DER++: stored logits, batch composition, the loss formula, memory passes, task heads, state."""

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
from methods.der import DER, DERConfig

# the step-checkpoint resume check of tests/test_runs.py (kill at step 8 of experience 1, resume)
_step_resume = test_runs.test_a_kill_within_an_experience_resumes_from_the_last_step_checkpoint_with_the_same_R


def _model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(16, 6)


def _exps(scenario_type: str = "class_incremental") -> tuple[Experience, ...]:
    return tiny_stream(scenario_type=scenario_type).experiences  # 48 train samples, 2 classes each


def _batch(exp: Experience, n: int = 8) -> Batch:
    return Batch(exp.train.x[:n], exp.train.y[:n], torch.full((n,), exp.task_id))


def _after_first(der: DER, model: nn.Module, scenario_type: str = "class_incremental") -> Experience:
    """Train nothing on experience 0, store it, start experience 1; returns experience 1."""
    exps = _exps(scenario_type)
    der.setup(model, StreamInfo("tiny", scenario_type, 3, 6, (16,), tuple(e.classes for e in exps)))
    der.on_experience_start(exps[0], model)
    der.transform_batch(_batch(exps[0]))  # the training batch size of experience 0 is 8
    der.on_experience_end(exps[0], model)
    der.on_experience_start(exps[1], model)
    return exps[1]


def test_memory_stores_the_models_logits_of_each_sample() -> None:
    model, der = _model(), DER(DERConfig(mem_size=30))
    _after_first(der, model)
    mem = der.memory.tensors()
    assert len(mem["y"]) == 30 and set(mem) == {"x", "y", "task", "logits"}
    with torch.no_grad():
        assert torch.allclose(mem["logits"], model(mem["x"]), atol=1e-6)
    # the stored samples are samples of experience 0, with their own labels
    first = _exps()[0].train
    rows = {tuple(r.tolist()): int(c) for r, c in zip(first.x, first.y, strict=True)}
    assert all(rows[tuple(r.tolist())] == int(c) for r, c in zip(mem["x"], mem["y"], strict=True))


def test_memory_samples_come_first_and_the_loss_is_ce_plus_alpha_mse_plus_beta_ce() -> None:
    model, der = _model(), DER(DERConfig(alpha=0.7, beta=0.3, mem_size=30, shuffle_memory=False))
    exp = _after_first(der, model)
    with torch.no_grad():
        model.weight.add_(0.1)  # the model has moved on since the logits were stored
    batch = _batch(exp)
    out = der.transform_batch(batch)
    mem = der.memory.tensors()
    assert len(out) == 16 and out.y is not None and out.task is not None and batch.y is not None
    assert torch.equal(out.x[:8], mem["x"][:8]) and torch.equal(out.x[8:], batch.x)  # stored order
    assert torch.equal(out.y[:8], mem["y"][:8]) and torch.equal(out.y[8:], batch.y)
    outputs = model(out.x)
    loss = der.loss(model, out, outputs, F.cross_entropy(outputs, out.y))
    expected = (F.cross_entropy(outputs[8:], batch.y) + 0.7 * F.mse_loss(outputs[:8], mem["logits"][:8])
                + 0.3 * F.cross_entropy(outputs[:8], mem["y"][:8]))
    assert torch.allclose(loss, expected) and float(loss.detach()) > float(F.cross_entropy(outputs[8:], batch.y).detach())


def test_beta_zero_is_der_without_the_label_term_and_mse_is_zero_on_an_unchanged_model() -> None:
    model, der = _model(), DER(DERConfig(alpha=1.0, beta=0.0, mem_size=30))
    exp = _after_first(der, model)
    out = der.transform_batch(_batch(exp))
    outputs = model(out.x)
    assert out.y is not None
    loss = der.loss(model, out, outputs, F.cross_entropy(outputs, out.y))
    # logits stored from this very model: the distillation term vanishes, only the data CE is left
    assert torch.allclose(loss, F.cross_entropy(outputs[8:], out.y[8:]), atol=1e-6)
    assert der.experience_report()["replay_steps"] == 1


def test_no_replay_while_the_memory_holds_fewer_samples_than_a_memory_batch() -> None:
    model, der = _model(), DER(DERConfig(mem_size=5))  # memory batch = the training batch size, 8
    exp = _after_first(der, model)
    batch = _batch(exp)
    assert der.transform_batch(batch) is batch
    base = torch.tensor(0.5)
    assert der.loss(model, batch, model(batch.x), base) is base


def test_memory_passes_drop_the_incomplete_last_batch_and_run_on_across_epochs() -> None:
    model, der = _model(), DER(DERConfig(mem_size=10, batch_size_mem=4))
    exp = _after_first(der, model)
    drawn = [der.transform_batch(_batch(exp)).x[:4] for _ in range(5)]
    mem_rows = {tuple(r.tolist()) for r in der.memory.tensors()["x"]}
    first_pass = {tuple(r.tolist()) for d in drawn[:2] for r in d}
    assert len(first_pass) == 8 and first_pass <= mem_rows  # 2 of 10 left out, then a new pass
    assert all(tuple(r.tolist()) in mem_rows for d in drawn for r in d)
    assert not torch.equal(drawn[0], drawn[2])  # the second pass is a new random order


def test_class_balanced_storage_holds_equal_counts_per_class() -> None:
    model, der = _model(), DER(DERConfig(mem_size=24, storage="class_balanced"))
    exps = _exps()
    for e in exps:
        der.on_experience_start(e, model)
        der.on_experience_end(e, model)
    counts = torch.bincount(der.memory.tensors()["y"], minlength=6)
    assert counts.tolist() == [4] * 6


def test_task_incremental_mse_covers_each_samples_task_classes_only() -> None:
    model, der = _model(), DER(DERConfig(alpha=1.0, beta=0.0, mem_size=30, shuffle_memory=False))
    exp = _after_first(der, model, "task_incremental")
    out = der.transform_batch(_batch(exp))
    assert out.task is not None and set(out.task[:8].tolist()) == {0} and set(out.task[8:].tolist()) == {1}
    raw = model(out.x)
    keep = torch.zeros_like(raw, dtype=torch.bool)
    keep[:8, :2], keep[8:, 2:4] = True, True  # task 0 = classes 0-1, task 1 = classes 2-3
    masked = raw.masked_fill(~keep, torch.finfo(raw.dtype).min)  # as the trainer hands them over
    with torch.no_grad():
        model.weight.add_(0.05)
    stored = der.memory.tensors()["logits"][:8]
    moved = model(out.x)
    loss = der.loss(model, out, moved.masked_fill(~keep, torch.finfo(raw.dtype).min),
                    F.cross_entropy(masked, out.y))  # type: ignore[arg-type]
    assert out.y is not None
    ce = F.cross_entropy(moved[8:, 2:4], out.y[8:] - 2)
    mse = (moved[:8, :2] - stored[:, :2]).pow(2).mean()
    assert math.isfinite(float(loss.detach())) and torch.allclose(loss, ce + mse, atol=1e-6)


def test_state_dict_round_trips_through_weights_only_load() -> None:
    model, der = _model(), DER(DERConfig(mem_size=20))
    exp = _after_first(der, model)
    der.transform_batch(_batch(exp))  # mid-experience: a memory pass is running
    buf = io.BytesIO()
    torch.save(der.state_dict(), buf)
    buf.seek(0)
    restored = DER(DERConfig(mem_size=20))
    restored.on_experience_start(exp, model)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    a, b = der.transform_batch(_batch(exp)), restored.transform_batch(_batch(exp))
    assert torch.equal(a.x, b.x) and restored.task_classes == der.task_classes


def test_runs_replay_from_the_second_experience_on(tmp_path: Path) -> None:
    res = run(tiny_config(tmp_path, "der"))
    reports = [e.method for e in res.per_experience]
    assert reports[0]["replay_steps"] == 0 and all(r["replay_steps"] == 12 for r in reports[1:])
    assert all(r["logit_mse"] > 0 for r in reports[1:]) and reports[-1]["memory_size"] == 144
    fwd = [(e.forward_samples or 0) - e.train_samples for e in res.per_experience]
    assert fwd[0] == 0 and fwd[1] == fwd[2] == 96  # 12 memory batches of 8 samples
    task = run(tiny_config(tmp_path / "t", "der", **{"scenario.scenario_type": "task_incremental"}))
    assert all(math.isfinite(e.mean_loss or math.nan) for e in task.per_experience)


def test_config_refuses_negative_weights() -> None:
    with pytest.raises(ValueError, match="alpha"):
        DERConfig(alpha=-1.0)


def test_a_kill_within_an_experience_resumes_with_the_same_R(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _step_resume(tmp_path, monkeypatch, "der", False)

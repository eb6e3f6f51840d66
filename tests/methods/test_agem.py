"""A-GEM: the projection, the reference gradient, the memory and its sampling, reports, state."""

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
from clbench.streams import Experience, StreamInfo
from clbench.testing import tiny_config, tiny_stream
from methods.agem import AGEM, AGEMConfig, project

# the step-checkpoint resume check of tests/test_runs.py (kill at step 8 of experience 1, resume)
_step_resume = test_runs.test_a_kill_within_an_experience_resumes_from_the_last_step_checkpoint_with_the_same_R


def _model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(16, 6)


def _setup(agem: AGEM, model: nn.Module, scenario_type: str = "class_incremental") -> tuple[Experience, ...]:
    exps = tiny_stream(scenario_type=scenario_type).experiences
    agem.setup(model, StreamInfo("tiny", scenario_type, 3, 6, (16,), tuple(e.classes for e in exps)))
    return exps


def _flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def test_projection_removes_exactly_the_conflicting_component() -> None:
    g = torch.Generator().manual_seed(0)
    projected = 0
    for _ in range(200):
        grad, ref = torch.randn(50, generator=g), torch.randn(50, generator=g)
        new, did = project(grad, ref)
        if float(grad @ ref) >= 0:
            assert not did and new is grad  # no conflict: untouched
            continue
        projected += 1
        assert did and float(new @ ref) >= -1e-5 * float(ref @ ref)  # no longer against the memory
        assert torch.allclose(new - grad, (new - grad) @ ref / (ref @ ref) * ref, atol=1e-5)  # moved along ref
        assert float((new - grad).norm()) == pytest.approx(-float(grad @ ref) / float(ref.norm()), rel=1e-4)
    assert 50 < projected < 150


def test_after_backward_projects_the_batch_gradient_against_the_memory_gradient() -> None:
    model, agem = _model(), AGEM(AGEMConfig(patterns_per_experience=10, sample_size=10))
    exps = _setup(agem, model)
    agem.on_experience_start(exps[0], model)
    agem.on_experience_end(exps[0], model)
    agem.on_experience_start(exps[1], model)
    mem = agem.buffers[0]
    ref = torch.autograd.grad(F.cross_entropy(model(mem["x"]), mem["y"]), list(model.parameters()))
    ref_flat = torch.cat([r.reshape(-1) for r in ref])
    # a batch loss that conflicts with the memory: new data plus ascent on the memory's loss
    new = exps[1].train
    (F.cross_entropy(model(new.x[::6]), new.y[::6]) - F.cross_entropy(model(mem["x"]), mem["y"])).backward()
    before = _flat_grad(model)
    assert float(before @ ref_flat) < 0
    agem.on_after_backward(model)
    after = _flat_grad(model)
    assert float(after @ ref_flat) >= -1e-6 * float(ref_flat @ ref_flat)
    expected = before - ref_flat * (before @ ref_flat) / (ref_flat @ ref_flat)
    assert torch.allclose(after, expected, atol=1e-6)
    assert agem.experience_report()["projected_fraction"] == 1.0


def test_a_gradient_agreeing_with_the_memory_is_left_alone() -> None:
    model, agem = _model(), AGEM(AGEMConfig(patterns_per_experience=10, sample_size=10))
    exps = _setup(agem, model)
    agem.on_experience_end(exps[0], model)
    agem.on_experience_start(exps[1], model)
    mem = agem.buffers[0]
    F.cross_entropy(model(mem["x"]), mem["y"]).backward()  # the memory's own gradient
    before = _flat_grad(model).clone()
    agem.on_after_backward(model)
    assert torch.equal(_flat_grad(model), before)
    assert agem.experience_report()["projected_fraction"] == 0.0


def test_no_memory_no_change() -> None:
    model, agem = _model(), AGEM()
    exps = _setup(agem, model)
    agem.on_experience_start(exps[0], model)
    F.cross_entropy(model(exps[0].train.x), exps[0].train.y).backward()
    before = _flat_grad(model).clone()
    agem.on_after_backward(model)
    assert torch.equal(_flat_grad(model), before) and agem.experience_report()["projected_fraction"] == 0.0


def test_memory_keeps_a_random_subset_of_each_experience() -> None:
    model, agem = _model(), AGEM(AGEMConfig(patterns_per_experience=20, sample_size=12))
    exps = _setup(agem, model)
    torch.manual_seed(0)
    for e in exps[:2]:
        agem.on_experience_end(e, model)
    assert [len(b["y"]) for b in agem.buffers] == [20, 20]
    for b, e in zip(agem.buffers, exps, strict=False):
        rows = {tuple(r.tolist()): int(c) for r, c in zip(e.train.x, e.train.y, strict=True)}
        assert len({tuple(r.tolist()) for r in b["x"]}) == 20  # distinct samples of that experience
        assert all(rows[tuple(r.tolist())] == int(c) for r, c in zip(b["x"], b["y"], strict=True))
    whole = AGEM(AGEMConfig(patterns_per_experience=100))
    whole.on_experience_end(exps[0], model)
    assert torch.equal(whole.buffers[0]["x"], exps[0].train.x)  # smaller than the quota: all, in order


def test_memory_sample_takes_an_equal_share_of_each_group_in_order_cycling() -> None:
    model, agem = _model(), AGEM(AGEMConfig(patterns_per_experience=20, sample_size=16))
    exps = _setup(agem, model)
    for e in exps[:2]:
        agem.on_experience_end(e, model)
    agem.on_experience_start(exps[2], model)
    draws = [agem.memory_sample()["x"] for _ in range(4)]
    assert [len(d) for d in draws] == [16, 16, 8, 16]  # 8 per group; the last chunk of 20 is 4 long
    g0, g1 = agem.buffers[0]["x"], agem.buffers[1]["x"]
    assert torch.equal(draws[0], torch.cat([g0[:8], g1[:8]]))
    assert torch.equal(draws[1], torch.cat([g0[8:16], g1[8:16]]))
    assert torch.equal(draws[2], torch.cat([g0[16:], g1[16:]]))
    assert torch.equal(draws[3], torch.cat([g0[:8], g1[:8]]))  # a group exhausted starts over


def test_task_incremental_reference_gradient_uses_each_samples_head() -> None:
    model, agem = _model(), AGEM(AGEMConfig(patterns_per_experience=10, sample_size=10))
    exps = _setup(agem, model, "task_incremental")
    agem.on_experience_end(exps[0], model)
    agem.on_experience_start(exps[1], model)
    params = list(model.parameters())
    ref = agem.reference_gradient(model, params)
    agem._pos = [0]
    mem = agem.memory_sample()
    expected = torch.autograd.grad(F.cross_entropy(model(mem["x"])[:, :2], mem["y"]), params)
    assert torch.allclose(ref, torch.cat([e.reshape(-1) for e in expected]), atol=1e-6)
    assert torch.all(ref.view(-1)[: 6 * 16].view(6, 16)[2:] == 0)  # other tasks' classes untouched


def test_state_dict_round_trips_through_weights_only_load() -> None:
    model, agem = _model(), AGEM(AGEMConfig(patterns_per_experience=20, sample_size=16))
    exps = _setup(agem, model)
    agem.on_experience_end(exps[0], model)
    agem.on_experience_start(exps[1], model)
    agem.memory_sample()  # mid-experience
    buf = io.BytesIO()
    torch.save(agem.state_dict(), buf)
    buf.seek(0)
    restored = AGEM(AGEMConfig(patterns_per_experience=20, sample_size=16))
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(restored.memory_sample()["x"], agem.memory_sample()["x"])


def test_runs_report_the_projected_fraction_as_mechanism_figure(tmp_path: Path) -> None:
    assert AGEM.mechanism_figures == ("projected_fraction",)
    res = run(tiny_config(tmp_path, "agem", **{"trainer.grad_accum": 2}))
    reports = [e.method for e in res.per_experience]
    assert reports[0]["projected_steps"] == 0 and reports[-1]["memory_size"] == 144
    assert all(0.0 < r["projected_fraction"] <= 1.0 for r in reports[1:])
    assert res.per_experience[1].optimizer_steps == 6  # once per optimizer step (12 batches / 2)
    assert all(r["projected_steps"] <= 6 for r in reports)
    task = run(tiny_config(tmp_path / "t", "agem", **{"scenario.scenario_type": "task_incremental"}))
    assert all(math.isfinite(e.mean_loss or math.nan) for e in task.per_experience)


def test_config_refuses_an_empty_reference_sample() -> None:
    with pytest.raises(ValueError, match="sample_size"):
        AGEMConfig(sample_size=0)


def test_a_kill_within_an_experience_resumes_with_the_same_R(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _step_resume(tmp_path, monkeypatch, "agem", False)

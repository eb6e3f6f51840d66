"""PSMT: source Fisher, gradient-quantile mask fraction, restore + double EMA, outputs, variants."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clbench.adapt import weight_bias_parameters
from clbench.models import CNNBN, CNNConfig
from clbench.streams import Batch, Experience, Split, StreamInfo
from methods.psmt import PSMT, PSMTConfig, linear_quantile, symmetric_cross_entropy

INFO = StreamInfo("t", "test_time", 1, 4, (1, 8, 8), ((0, 1, 2, 3),))


def _setup(**options: object) -> tuple[PSMT, nn.Module]:
    torch.manual_seed(0)
    method = PSMT(PSMTConfig(**options))  # type: ignore[arg-type]
    model = method.setup(CNNBN(INFO, CNNConfig(channels=4)), INFO)
    source = Split(torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(5)), torch.zeros(40, dtype=torch.long))
    method.on_source_data(model, source)
    return method, model


def _batch(seed: int = 1) -> Batch:
    return Batch(torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(seed)), None)


def test_linear_quantile_matches_torch_quantile() -> None:
    v = torch.randn(1001, generator=torch.Generator().manual_seed(0))
    for q in (0.03, 0.5, 0.97):
        assert torch.allclose(linear_quantile(v, q), torch.quantile(v, q))


def test_symmetric_cross_entropy_is_symmetric() -> None:
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    assert torch.allclose(symmetric_cross_entropy(a, b), symmetric_cross_entropy(b, a))


def test_fisher_is_a_nonnegative_diagonal_over_weights_and_biases() -> None:
    method, model = _setup(fisher_batch_size=10)
    params = weight_bias_parameters(model)
    assert method.fisher.keys() == params.keys()
    assert all(f.shape == params[k].shape and bool((f >= 0).all()) for k, f in method.fisher.items())
    assert sum(float(f.sum()) for f in method.fisher.values()) > 0
    assert all(p.grad is None for p in model.parameters())  # Fisher pass leaves no gradients


def test_official_mask_selects_the_configured_fraction_and_restores_it_to_source() -> None:
    method, model = _setup(mask_quantile=0.1, ema=0.9)
    assert method.teacher is not None
    teacher0 = copy.deepcopy(method.teacher)
    student0 = copy.deepcopy(model)
    out = method.adapt(model, _batch())
    n = sum(p.numel() for p in weight_bias_parameters(model).values())
    assert abs(method.last_mask_fraction - 0.1) <= 2 / n + 0.01
    with torch.no_grad():
        expected = teacher0(_batch().x) + student0(_batch().x)
    assert torch.allclose(out, expected, atol=1e-5)  # teacher + student, before the update
    restored = double = 0
    for (k, w), t0, t1 in zip(weight_bias_parameters(model).items(), teacher0.parameters(),
                              method.teacher.parameters(), strict=True):
        src = method.source[k]
        at_source = torch.isclose(w, src, atol=0, rtol=0)
        restored += int(at_source.sum())
        assert torch.equal(t1[at_source], w[at_source])  # masked: teacher copies the restored θ
        twice = 0.9 * (0.9 * t0 + 0.1 * w) + 0.1 * w  # the second EMA on unmasked entries
        double += int(torch.isclose(t1, twice, atol=1e-6)[~at_source].sum())
        assert torch.isclose(t1, twice, atol=1e-6)[~at_source].all()
    assert restored >= int(0.1 * n) - 1 and double > 0


def test_paper_variant_freezes_the_top_fisher_entries_of_the_teacher() -> None:
    method, model = _setup(variant="paper", mask_quantile=0.2, ema=0.5)
    teacher0 = copy.deepcopy(method.teacher)
    assert teacher0 is not None
    out = method.adapt(model, _batch())
    assert torch.allclose(out, teacher0(_batch().x), atol=1e-6)  # teacher only
    assert method.last_mask_fraction == pytest.approx(0.2, abs=0.02)
    mask = method.fisher_mask()
    assert method.teacher is not None
    for (k, t1), t0 in zip(weight_bias_parameters(method.teacher).items(), teacher0.parameters(), strict=True):
        assert torch.equal(t1[mask[k]], t0[mask[k]])


def test_needs_source_data_and_state_round_trip() -> None:
    assert PSMT.needs_source_data
    method, model = _setup()
    method.adapt(model, _batch())
    other, _ = _setup()
    other.load_state_dict(method.state_dict())
    assert all(torch.equal(other.fisher[k], v) for k, v in method.fisher.items())
    assert other.steps_taken == 1 and PSMT().state_dict() == {}


def test_configured_like_the_released_code_eval_mode_with_batch_statistics() -> None:
    method, model = _setup()
    assert not model.training  # released configure_model: model.eval()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.running_mean is None and not m.track_running_stats for m in bns)
    x = _batch().x
    with torch.no_grad():  # eval mode still normalises with the batch's statistics
        assert not torch.allclose(model(x[:8]), model(x)[:8], atol=1e-5)
    model.train()  # the evaluator may leave another mode behind; adapt configures again
    method.adapt(model, _batch())
    assert not model.training
    mlp = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    PSMT.configure(mlp)
    assert not mlp.training and mlp[1].training  # BatchNorm1d stays in train mode (released code)


def test_experience_report_averages_the_mask_fraction_over_the_domain() -> None:
    method, model = _setup(mask_quantile=0.1)
    empty = Split(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    exp = Experience(0, 0, (0, 1, 2, 3), empty, empty, empty)
    method.on_experience_start(exp, model)
    fractions = []
    for seed in (1, 2, 3):
        method.adapt(model, _batch(seed))
        fractions.append(method.last_mask_fraction)
    method.on_experience_end(exp, model)
    r = method.experience_report()
    assert set(PSMT.mechanism_figures) <= set(r)
    assert r["mask_fraction"] == pytest.approx(sum(fractions) / 3) and 0.0 < r["mask_fraction"] <= 0.11
    assert r["param_drift"] > 0.0 and r["adapt_steps"] == 3

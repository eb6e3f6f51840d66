"""MIGU: kept-row count and choice, masked rows frozen, first experience, bf16, eval, resume, run."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from clbench.errors import ConfigError
from clbench.options import build_dataclass
from clbench.runner import run
from clbench.streams import Experience, Split, StreamInfo
from clbench.testing import tiny_vit_config
from methods.migu import MIGU, MIGUConfig, kth_for

INFO = StreamInfo("tiny", "class_incremental", 2, 2, (2,), ((0,), (1,)))


def _exp(index: int) -> Experience:
    split = Split(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    return Experience(index, 0, (0,), split, split, split)


def _crafted() -> nn.Linear:
    """Linear(2, 5) whose outputs on ``X`` have magnitudes n = [2, 4, 6, 8, 1]."""
    layer = nn.Linear(2, 5)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, -4.0], [0.5, 0.0]]))
        layer.bias.zero_()
    return layer


X = torch.tensor([[1.0, 1.0], [1.0, -1.0]])


def _started(model: nn.Module, index: int = 1, **options: object) -> MIGU:
    migu = MIGU(MIGUConfig(**options))  # type: ignore[arg-type]
    migu.setup(model, INFO)
    migu.on_experience_start(_exp(index), model.train())
    return migu


def _masked_grad(migu: MIGU, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    model(x).pow(2).sum().backward()
    migu.on_after_backward(model)
    return model.weight.grad.clone()  # type: ignore[union-attr, operator]


def _kept_rows(grad: torch.Tensor) -> set[int]:
    return {int(i) for i in grad.abs().sum(1).nonzero().flatten()}


def test_cut_rank_equals_torch_quantile_with_ties_kept() -> None:
    g = torch.Generator().manual_seed(0)
    for d in (1, 2, 5, 10, 16, 33, 64, 100, 257):
        for t in (0.0, 0.1, 0.5, 0.7, 0.9, 1.0):
            n = torch.rand(d, generator=g, dtype=torch.float64)
            n[: d // 4] = n[0]  # ties
            keep = n >= n.kthvalue(kth_for(d, t)).values
            assert torch.equal(keep, n >= torch.quantile(n, t)), (d, t)


def test_kept_rows_are_the_largest_magnitudes_and_count_is_d_minus_ceil() -> None:
    layer = _crafted()
    migu = _started(layer)
    grad = _masked_grad(migu, layer, X)
    # n = [2, 4, 6, 8, 1] (L1-normalised: n / 21, same order); T = 0.7 keeps 5 - ceil(0.7 * 4) = 2
    assert _kept_rows(grad) == {2, 3}
    assert migu._groups[0].acc.abs().sum() == 0  # the buffer is reset after each step
    layer.zero_grad()
    layer(X).pow(2).sum().backward()
    assert torch.equal(grad[2:4], layer.weight.grad[2:4])  # type: ignore[index]


@pytest.mark.parametrize(("d_out", "kept"), [(10, 3), (16, 5), (64, 19), (7, 2)])
def test_kept_fraction_per_linear_on_a_step(d_out: int, kept: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, d_out), nn.Tanh(), nn.Linear(d_out, d_out))
    migu = _started(model)
    model.zero_grad()
    model(torch.randn(4, 6)).pow(2).sum().backward()
    migu.on_after_backward(model)
    for layer in (model[0], model[2]):
        assert len(_kept_rows(layer.weight.grad)) == kept == d_out - math.ceil(0.7 * (d_out - 1))  # type: ignore[arg-type]
    migu.on_experience_end(_exp(1), model)
    report = migu.experience_report()
    assert report["kept_fraction"] == pytest.approx(kept / d_out)
    assert report["masked_steps"] == 1 and report["masked_layers"] == 2
    assert list(report["kept_fraction_per_layer"]) == ["0", "2"]


def test_magnitudes_sum_over_all_micro_batches_of_a_step() -> None:
    layer = _crafted()
    migu = _started(layer, threshold=0.8)  # keep the single largest row
    layer.zero_grad()
    layer(torch.tensor([[10.0, 0.0]])).sum().backward()  # n = [10, 0, 30, 0, 5]
    layer(torch.tensor([[0.0, 9.0]])).sum().backward()  # n += [0, 18, 0, 36, 0] -> row 3 wins
    migu.on_after_backward(layer)
    assert _kept_rows(layer.weight.grad) == {3}  # type: ignore[arg-type]


def test_masked_rows_do_not_move_under_sgd_kept_rows_and_biases_do() -> None:
    for mask_bias in (False, True):
        layer = _crafted()
        migu = _started(layer, mask_bias=mask_bias)
        before = {k: v.clone() for k, v in layer.state_dict().items()}
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        _masked_grad(migu, layer, X + 0.5)
        opt.step()
        masked = [0, 1, 4]
        assert torch.equal(layer.weight[masked], before["weight"][masked])
        assert (layer.weight[2:4] != before["weight"][2:4]).any(dim=1).all()
        moved_bias = (layer.bias != before["bias"]).tolist()
        assert moved_bias == ([True] * 5 if not mask_bias else [False, False, True, True, False])


def test_first_experience_is_unmasked_unless_asked() -> None:
    layer = _crafted()
    migu = _started(layer, index=0)
    assert not layer._forward_hooks
    assert _kept_rows(_masked_grad(migu, layer, X)) == set(range(5))
    migu.on_experience_end(_exp(0), layer)
    assert migu.experience_report()["kept_fraction"] == 1.0
    migu = _started(_crafted(), index=0, mask_first_experience=True)
    layer = migu._groups[0].layers[0]
    assert _kept_rows(_masked_grad(migu, layer, X)) == {2, 3}


def test_bf16_params_and_cpu_bf16_autocast() -> None:
    layer = _crafted().to(torch.bfloat16)
    migu = _started(layer)
    assert _kept_rows(_masked_grad(migu, layer, X.bfloat16())) == {2, 3}
    assert migu._groups[0].acc.dtype == torch.float32
    layer = _crafted()
    migu = _started(layer)
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(X)
    assert out.dtype == torch.bfloat16
    out.float().pow(2).sum().backward()
    migu.on_after_backward(layer)
    assert _kept_rows(layer.weight.grad) == {2, 3}  # type: ignore[arg-type]


def test_no_recording_in_eval_and_no_hooks_after_the_experience() -> None:
    layer = _crafted()
    migu = _started(layer)
    layer.eval()
    with torch.no_grad():
        layer(X)
    assert migu._groups[0].acc.abs().sum() == 0
    layer.train()
    layer(X)
    assert migu._groups[0].acc.abs().sum() > 0
    migu.on_experience_end(_exp(1), layer)
    assert not layer._forward_hooks and not migu._groups


def test_frozen_and_excluded_linears_are_not_hooked() -> None:
    model = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 4), nn.Linear(4, 3))
    model[0].weight.requires_grad_(False)
    migu = _started(model, exclude=("^2$",))
    assert [n for g in migu._groups for n in g.names] == ["1"]
    assert not model[0]._forward_hooks and not model[2]._forward_hooks


def test_resume_round_trip_gives_the_same_masks_and_no_duplicate_hooks() -> None:
    layer = _crafted()
    migu = _started(layer)
    expected = _masked_grad(migu, layer, X)
    buf = io.BytesIO()
    torch.save(migu.state_dict(), buf)
    buf.seek(0)
    migu.on_experience_end(_exp(1), layer)
    fresh, restored = _crafted(), MIGU()
    restored.setup(fresh, INFO)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    restored.on_experience_start(_exp(1), fresh.train())
    restored.on_experience_start(_exp(1), fresh)  # re-entry replaces, never duplicates, hooks
    assert len(fresh._forward_hooks) == 1
    assert torch.equal(_masked_grad(restored, fresh, X), expected)


def test_tiny_vit_run_reports_thirty_percent_kept_from_experience_one_as_mechanism(tmp_path: Path) -> None:
    res = run(tiny_vit_config(tmp_path, "migu", **{"trainer.epochs": 1}))
    reports = [e.method for e in res.per_experience]
    assert reports[0]["kept_fraction"] == 1.0 and reports[0]["masked_steps"] == 0
    assert res.mechanism == {"kept_fraction": [r["kept_fraction"] for r in reports]}
    assert len(reports) == 3 and all(isinstance(v, float) for v in res.mechanism["kept_fraction"])
    for rep in reports[1:]:
        assert rep["kept_fraction"] == pytest.approx(0.3, abs=0.03)
        assert rep["masked_steps"] > 0 and rep["masked_layers"] == 13  # 2 blocks x 6 + head
        for name, frac in rep["kept_fraction_per_layer"].items():
            d = {"head": 6}.get(name, 32 if name.endswith("up_proj") else 16)
            assert frac == pytest.approx((d - math.ceil(0.7 * (d - 1))) / d), name


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        build_dataclass(MIGUConfig, {"threshold": 1.5}, "method")
    with pytest.raises(ValueError, match="regex"):
        MIGUConfig(exclude=("(",))

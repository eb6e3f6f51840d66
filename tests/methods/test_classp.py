"""CLASSP: the update rule by hand (paper and official modes), threshold, decay, persistence."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch import nn

from clbench.config import TrainerConfig
from clbench.errors import ConfigError
from clbench.options import build_dataclass
from clbench.runner import run
from clbench.testing import tiny_config, tiny_stream
from methods.classp import CLASSP, CLASSPConfig, CLASSPOptimizer

W0 = [1.0, 2.0, 3.0, 4.0]
G = [0.1, -1.0, 2.0, 0.0]  # g^2 = 0.01, 1, 4, 0: only elements 1 and 2 pass threshold 0.5


def _step(grads: list[list[float]], **options: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and accumulator after one step per gradient in ``grads``."""
    w = nn.Parameter(torch.tensor(W0))
    opt = CLASSPOptimizer([w], **options)  # type: ignore[arg-type]
    for g in grads:
        w.grad = torch.tensor(g)
        opt.step()
    return w.detach(), opt.state[w]["grad_sum"]


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_paper_mode_one_step_matches_hand_computation(power: float) -> None:
    w, acc = _step([G], lr=0.2, threshold=0.5, epsilon=1e-5, power=power, mode="paper")
    g_1, g_2 = -1.0, 2.0
    a_1, a_2 = abs(g_1) ** power, abs(g_2) ** power
    expected = [1.0, 2.0 - 0.2 * g_1 / (1e-5 + a_1) ** (1 / power),
                3.0 - 0.2 * g_2 / (1e-5 + a_2) ** (1 / power), 4.0]
    torch.testing.assert_close(w, torch.tensor(expected))
    torch.testing.assert_close(acc, torch.tensor([0.0, a_1, a_2, 0.0]))


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_official_mode_updates_the_whole_tensor_and_accumulates_abs_g(power: float) -> None:
    w, acc = _step([G], lr=0.2, threshold=0.5, epsilon=1e-5, power=power, mode="official")
    g = torch.tensor(G)
    torch.testing.assert_close(acc, g.abs())  # |g| whatever p (bug 2 of the released code)
    torch.testing.assert_close(w, torch.tensor(W0) - 0.2 * g / (1e-5 + g.abs()) ** (1 / power))
    assert w[0] != W0[0]  # g^2 = 0.01 < 0.5, updated anyway (bug 1)
    # a threshold >= 1 never passes the code's boolean test: nothing moves
    w, acc = _step([G], threshold=1.0, mode="official")
    assert torch.equal(w, torch.tensor(W0)) and not acc.any()


def test_elements_below_threshold_are_unchanged_and_counted() -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(8, 8))
    before = w.detach().clone()
    opt = CLASSPOptimizer([w], lr=0.1, threshold=0.3, mode="paper")
    w.grad = torch.randn(8, 8)
    selected = w.grad.pow(2) > 0.3
    assert 0 < int(selected.sum()) < 64
    opt.step()
    assert torch.equal(w.detach()[~selected], before[~selected])
    assert (w.detach()[selected] != before[selected]).all()
    assert not opt.state[w]["grad_sum"][~selected].any()
    assert opt.updated_fraction == pytest.approx(float(selected.float().mean()))


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_repeated_identical_gradients_shrink_the_step_as_the_formula_says(power: float) -> None:
    w = nn.Parameter(torch.zeros(1))
    opt = CLASSPOptimizer([w], lr=0.5, threshold=0.0, epsilon=1e-5, power=power, mode="paper")
    g, prev = 0.8, 0.0
    for k in range(1, 6):
        w.grad = torch.tensor([g])
        opt.step()
        step = prev - float(w.detach())
        prev = float(w.detach())
        assert step == pytest.approx(0.5 * g / (1e-5 + k * g**power) ** (1 / power), rel=1e-5)
    assert float(opt.state[w]["grad_sum"]) == pytest.approx(5 * g**power)


def test_apply_scaling_off_is_sgd_while_the_accumulator_grows() -> None:
    w, acc = _step([G, G], lr=0.1, threshold=0.5, apply_scaling=False, mode="paper")
    torch.testing.assert_close(w, torch.tensor([1.0, 2.2, 2.6, 4.0]))
    torch.testing.assert_close(acc, torch.tensor([0.0, 2.0, 4.0, 0.0]))


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def _train_steps(method: CLASSP, model: nn.Module, cfg: TrainerConfig, n: int) -> None:
    """One experience: ``n`` steps on fixed random data through the method's optimizer."""
    exp = tiny_stream(n_experiences=1, dim=4).experiences[0]
    method.on_experience_start(exp, model)
    opt = method.optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    gen = torch.Generator().manual_seed(1)
    for _ in range(n):
        x, y = torch.randn(6, 4, generator=gen), torch.randint(0, 2, (6,), generator=gen)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    method.on_experience_end(exp, model)


def test_state_survives_an_experience_boundary() -> None:
    cfg, model = TrainerConfig(lr=0.05), _model()
    method = CLASSP(CLASSPConfig(threshold=1e-4))
    method.setup(model, tiny_stream().info())
    _train_steps(method, model, cfg, 3)
    after_first = {n: t.clone() for n, t in method.accumulators.items()}
    assert set(after_first) == {n for n, _ in model.named_parameters()}
    assert all(t.any() for t in after_first.values())
    report = method.experience_report()
    assert report["steps"] == report["total_steps"] == 3 and 0 < report["updated_fraction"] <= 1
    method.on_experience_start(tiny_stream(n_experiences=1, dim=4).experiences[0], model)
    model.get_submodule("2").bias.requires_grad_(False)  # frozen in experience 2: its accumulator is kept
    opt = method.optimizer([p for p in model.parameters() if p.requires_grad], TrainerConfig(lr=0.05))
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert opt.state[p]["grad_sum"] is method.accumulators[name]
        assert torch.equal(method.accumulators[name], after_first[name])


def test_resume_gives_the_same_next_update() -> None:
    cfg = TrainerConfig(lr=0.05)
    model, method = _model(), CLASSP(CLASSPConfig(threshold=1e-4, power=2.0))
    method.setup(model, tiny_stream().info())
    _train_steps(method, model, cfg, 3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "method": method.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    fresh_model, fresh = _model(seed=9), CLASSP(CLASSPConfig(threshold=1e-4, power=2.0))
    fresh_model.load_state_dict(ckpt["model"])
    fresh.setup(fresh_model, tiny_stream().info())
    fresh.load_state_dict(ckpt["method"])
    assert fresh.total_steps == method.total_steps == 3
    _train_steps(method, model, cfg, 2)
    _train_steps(fresh, fresh_model, cfg, 2)
    for (name, a), (_, b) in zip(model.named_parameters(), fresh_model.named_parameters(), strict=True):
        assert torch.equal(a, b), name
        assert torch.equal(method.accumulators[name], fresh.accumulators[name])


def test_lr_comes_from_the_trainer_unless_set_and_weight_decay_is_ignored() -> None:
    p = nn.Parameter(torch.zeros(2))
    trainer = TrainerConfig(lr=0.03, weight_decay=0.5, momentum=0.9)
    assert CLASSP().optimizer([p], trainer).param_groups[0]["lr"] == 0.03
    assert CLASSP(CLASSPConfig(lr=0.2)).optimizer([p], trainer).param_groups[0]["lr"] == 0.2
    assert "weight_decay" not in CLASSP().optimizer([p], trainer).param_groups[0]


def test_default_is_the_official_mode_and_updates_every_element(tmp_path: Path) -> None:
    assert CLASSPConfig().mode == "official" and CLASSPOptimizer([nn.Parameter(torch.zeros(1))]).defaults[
        "mode"] == "official"
    res = run(tiny_config(tmp_path, "classp", **{"eval.validation": False}))
    reports = [e.method for e in res.per_experience]
    assert len(reports) == 3 and all(r["steps"] > 0 for r in reports)
    assert [r["total_steps"] for r in reports] == [sum(x["steps"] for x in reports[: i + 1]) for i in range(3)]
    # mechanism figures, one number per experience: threshold 0.5 < 1 passes every tensor whose
    # gradient is nonzero (all of the MLP's), and the accumulator keeps growing across experiences
    mech = res.mechanism
    assert mech["updated_fraction"] == [r["updated_fraction"] for r in reports] == [1.0, 1.0, 1.0]
    acc = mech["mean_accumulator"]
    assert len(acc) == 3 and 0 < acc[0] < acc[1] < acc[2]
    assert min(res.R[i][i] for i in range(3)) > 0.9  # it learns each experience


def test_paper_rule_with_an_absolute_threshold_selects_elements(tmp_path: Path) -> None:
    res = run(tiny_config(tmp_path, "classp", **{"method.mode": "paper", "method.threshold": 1e-4,
                                                   "eval.validation": False, "scenario.n_experiences": 2}))
    fractions = res.mechanism["updated_fraction"]
    assert len(fractions) == 2 and all(0.0 < f < 1.0 for f in fractions)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="mode"):
        build_dataclass(CLASSPConfig, {"mode": "buggy"}, "method")
    for bad in ({"threshold": -1.0}, {"epsilon": 0.0}, {"power": 0.0}, {"lr": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CLASSPConfig(**bad)  # type: ignore[arg-type]


def test_quantile_threshold_updates_the_larger_half_of_each_tensor() -> None:
    w = torch.nn.Parameter(torch.zeros(8))
    opt = CLASSPOptimizer([w], lr=1.0, threshold_quantile=0.5, mode="paper")
    g = torch.tensor([0.1, -0.8, 0.3, 0.05, -0.6, 0.2, 0.7, -0.01])
    w.grad = g.clone()
    opt.step()
    changed = (w.detach() != 0).nonzero().flatten().tolist()
    assert changed == [1, 2, 4, 6]  # the 4 largest |g| of 8
    assert opt.updated_fraction == pytest.approx(0.5)
    with pytest.raises(ValueError, match="threshold_quantile"):
        CLASSPConfig(threshold_quantile=1.0)
    with pytest.raises(ValueError, match="mode='paper'"):
        CLASSPConfig(threshold_quantile=0.5, mode="official")

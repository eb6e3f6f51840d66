"""EWC: penalty arithmetic, empirical Fisher, online decay, state round trip."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clbench.errors import ConfigError
from clbench.options import build_dataclass
from clbench.streams import Batch
from clbench.testing import tiny_stream
from methods.ewc import EWC, EWCConfig


def _linear() -> nn.Linear:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        model.bias.copy_(torch.tensor([0.5, -0.5]))
    return model


def _batch() -> Batch:
    return Batch(torch.ones(3, 2), torch.tensor([0, 1, 0]), torch.zeros(3, dtype=torch.long))


def test_no_penalty_before_the_first_experience_ends() -> None:
    ewc, model = EWC(EWCConfig(ewc_lambda=5.0)), _linear()
    base = torch.tensor(1.25)
    assert ewc.loss(model, _batch(), model(_batch().x), base) is base


def test_penalty_equals_hand_computed_value_without_half_factor() -> None:
    ewc, model = EWC(EWCConfig(ewc_lambda=2.0)), _linear()
    t = torch.tensor
    ewc.importances = [{"weight": t([[1.0, 0.0], [0.5, 2.0]]), "bias": t([4.0, 0.0])},
                       {"weight": torch.full((2, 2), 0.25), "bias": torch.zeros(2)}]
    ewc.saved_params = [{"weight": t([[0.0, 2.0], [1.0, 4.0]]), "bias": t([0.0, 9.0])},
                        {"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}]
    # exp 0: 1*(1-0)^2 + 0 + 0.5*(3-1)^2 + 2*0^2 + 4*(0.5-0)^2 + 0 = 1 + 2 + 1 = 4
    # exp 1: 0.25 * (1 + 4 + 9 + 16) = 7.5
    base = torch.tensor(0.5)
    loss = ewc.loss(model, _batch(), model(_batch().x), base)
    assert float(loss.detach()) == pytest.approx(0.5 + 2.0 * (4.0 + 7.5))
    loss.backward()
    # d/dw of 2 * [1*(w00-0)^2 + 0.25*w00^2] at w00=1 -> 2 * (2 + 0.5) = 5
    assert model.weight.grad is not None and float(model.weight.grad[0, 0]) == pytest.approx(5.0)


def test_importance_is_the_mean_squared_minibatch_gradient() -> None:
    stream = tiny_stream(n_experiences=1, n_per_class=10, dim=2)
    exp = stream.experiences[0]
    model = _linear()
    ewc = EWC(EWCConfig(fisher_batch_size=8))
    ewc.on_experience_end(exp, model)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    starts = range(0, len(exp.train), 8)
    for i in starts:
        model.zero_grad()
        F.cross_entropy(model(exp.train.x[i : i + 8]), exp.train.y[i : i + 8]).backward()
        for n, p in model.named_parameters():
            assert p.grad is not None
            expected[n] += p.grad.pow(2) / len(starts)
    (imp,) = ewc.importances
    for n, p in model.named_parameters():
        torch.testing.assert_close(imp[n], expected[n])
        assert (imp[n] >= 0).all()
        torch.testing.assert_close(ewc.saved_params[0][n], p.detach())


def test_importance_pass_leaves_grads_mode_and_weights_alone() -> None:
    exp = tiny_stream(n_experiences=1, dim=2).experiences[0]
    model = _linear().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ewc = EWC()
    ewc.loss(model, _batch(), model(_batch().x), torch.tensor(0.0))  # batch size 3 inferred
    ewc.on_experience_end(exp, model)
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert ewc._train_bs == 3


def test_frozen_parameters_get_no_importance() -> None:
    exp = tiny_stream(n_experiences=1, dim=2).experiences[0]
    model = _linear()
    model.bias.requires_grad_(False)
    ewc = EWC()
    ewc.on_experience_end(exp, model)
    assert set(ewc.importances[0]) == {"weight"}


def test_separate_mode_keeps_one_anchor_per_experience_online_mode_decays() -> None:
    exps = tiny_stream(n_experiences=2, dim=2).experiences
    torch.manual_seed(0)
    model = nn.Linear(2, 4)
    sep, online = EWC(EWCConfig(fisher_batch_size=16)), EWC(EWCConfig(mode="online", decay_factor=0.3,
                                                                          fisher_batch_size=16))
    for exp in exps:
        sep.on_experience_end(exp, model)
        online.on_experience_end(exp, model)
        with torch.no_grad():
            model.weight.add_(0.1)
    assert len(sep.importances) == len(sep.saved_params) == 2
    assert len(online.importances) == len(online.saved_params) == 1
    for n in sep.importances[0]:
        expected = 0.3 * sep.importances[0][n] + sep.importances[1][n]
        torch.testing.assert_close(online.importances[0][n], expected)
        torch.testing.assert_close(online.saved_params[0][n], sep.saved_params[1][n])


def test_state_dict_round_trips_through_weights_only_load() -> None:
    exp = tiny_stream(n_experiences=1, dim=2).experiences[0]
    model = _linear()
    ewc = EWC(EWCConfig(ewc_lambda=3.0))
    ewc.on_experience_end(exp, model)
    with torch.no_grad():
        model.weight.mul_(1.5)
    buf = io.BytesIO()
    torch.save(ewc.state_dict(), buf)
    buf.seek(0)
    restored = EWC(EWCConfig(ewc_lambda=3.0))
    restored.load_state_dict(torch.load(buf, weights_only=True))
    base = torch.tensor(0.0)
    out = model(_batch().x)
    penalty = restored.loss(model, _batch(), out, base).detach()
    assert float(penalty) == float(ewc.loss(model, _batch(), out, base).detach()) > 0


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="ewc_lambda"):
        build_dataclass(EWCConfig, {"ewc_lambda": -1.0}, "method")
    with pytest.raises(ConfigError, match="mode"):
        build_dataclass(EWCConfig, {"mode": "both"}, "method")
    with pytest.raises(ValueError, match="decay_factor"):
        EWCConfig(mode="online", decay_factor=1.5)

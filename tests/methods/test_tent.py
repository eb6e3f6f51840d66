"""Tent: only norm affine parameters move, pre-update logits, entropy step, resets, LayerNorm."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clbench.adapt import softmax_entropy
from clbench.models import CNNBN, CNNConfig
from clbench.streams import Batch, Experience, Split, StreamInfo
from clbench.testing import params_equal
from clbench.vit import ViT, ViTConfig
from methods.tent import Tent, TentConfig

INFO = StreamInfo("t", "test_time", 2, 4, (1, 8, 8), ((0, 1, 2, 3),) * 2)


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return CNNBN(INFO, CNNConfig(channels=4))


def _batch(seed: int = 1) -> Batch:
    return Batch(torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(seed)), None)


def _exp(i: int) -> Experience:
    empty = Split(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    return Experience(i, 0, (0, 1, 2, 3), empty, empty, empty)


def test_only_batchnorm_affine_parameters_change() -> None:
    tent, model = Tent(), _cnn()
    model = tent.setup(model, INFO)
    before = {k: v.clone() for k, v in model.named_parameters()}
    tent.adapt(model, _batch())
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    bn = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) for p in ("weight", "bias")}
    assert changed and changed <= bn
    assert all(m.running_mean is None for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_prediction_is_the_pre_update_forward_and_the_step_minimises_entropy() -> None:
    tent = Tent(TentConfig(lr=0.05))
    model = tent.setup(_cnn(), INFO)
    reference = copy.deepcopy(model)
    out = tent.adapt(model, _batch())
    assert torch.allclose(out, reference(_batch().x))
    with torch.no_grad():
        assert softmax_entropy(model(_batch().x)).mean() < softmax_entropy(reference(_batch().x)).mean()


def test_layernorm_affine_parameters_adapt_on_a_vit() -> None:
    torch.manual_seed(0)
    vit = ViT(INFO, ViTConfig(patch=4, dim=16, depth=1, heads=2))
    tent = Tent()
    model = tent.setup(vit, INFO)
    before = {k: v.clone() for k, v in model.named_parameters()}
    tent.adapt(model, _batch())
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    ln = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm) for p in ("weight", "bias")}
    assert changed and changed <= ln


def test_resets_restore_the_source_weights_and_optimizer() -> None:
    for reset, restored_at in (("batch", "adapt"), ("domain", "experience")):
        tent = Tent(TentConfig(reset=reset))  # type: ignore[arg-type]
        model = tent.setup(_cnn(), INFO)
        start = copy.deepcopy(model.state_dict())
        tent.adapt(model, _batch(1))
        assert not params_equal(model.state_dict(), start)
        if restored_at == "adapt":  # episodic: every batch is predicted by the source weights
            fresh = Tent().setup(_cnn(), INFO)
            assert torch.allclose(tent.adapt(model, _batch(2)), fresh(_batch(2).x))
        else:
            tent.on_experience_start(_exp(0), model)
            assert not params_equal(model.state_dict(), start)  # the first domain never resets
            tent.on_experience_start(_exp(1), model)
            assert params_equal(model.state_dict(), start)
            assert not tent.opt.state  # Adam moments reset too


def test_state_round_trip_and_config_validation() -> None:
    tent = Tent()
    model = tent.setup(_cnn(), INFO)
    tent.adapt(model, _batch())
    other = Tent()
    other.setup(_cnn(), INFO)
    other.load_state_dict(tent.state_dict())
    assert other.steps_taken == 1 and other.opt.state_dict()["state"].keys() == tent.opt.state_dict()["state"].keys()
    with pytest.raises(ValueError):
        TentConfig(lr=0.0)


def test_experience_report_shows_the_entropy_minimised_and_the_drift() -> None:
    tent = Tent(TentConfig(lr=0.05))
    model = tent.setup(_cnn(), INFO)
    reference = copy.deepcopy(model)
    tent.on_experience_start(_exp(0), model)
    tent.on_experience_end(_exp(0), model)
    assert tent.experience_report()["param_drift"] == 0.0  # nothing adapted yet
    tent.on_experience_start(_exp(0), model)
    tent.adapt(model, _batch(1))
    tent.adapt(model, _batch(2))
    tent.on_experience_end(_exp(0), model)
    r = tent.experience_report()
    assert set(Tent.mechanism_figures) <= set(r)
    with torch.no_grad():
        first = float(softmax_entropy(reference(_batch(1).x)).mean())
    assert first == pytest.approx(tent.entropies[0], rel=1e-5)  # the pre-update forward's entropy
    assert r["entropy"] == pytest.approx(sum(tent.entropies) / 2) and r["param_drift"] > 0.0

"""norm_adapt: test-batch BatchNorm statistics, no parameter change, source prior, BN required."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clbench.errors import IncompatibleError
from clbench.models import CNNBN, MLP, CNNConfig
from clbench.streams import Batch, StreamInfo
from methods.norm_adapt import NormAdapt, NormAdaptConfig

INFO = StreamInfo("t", "test_time", 1, 4, (1, 8, 8), ((0, 1, 2, 3),))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    model = CNNBN(INFO, CNNConfig(channels=4))
    with torch.no_grad():  # non-trivial source statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)  # type: ignore[union-attr]
                m.running_var.uniform_(0.5, 2)  # type: ignore[union-attr]
    return model


def _x() -> torch.Tensor:
    return torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 3


def test_predictions_use_the_test_batch_statistics_and_nothing_changes() -> None:
    source = _cnn()
    train_mode = copy.deepcopy(source).train()  # BatchNorm in train mode = batch statistics
    method = NormAdapt()
    model = method.setup(copy.deepcopy(source), INFO)
    params = copy.deepcopy(dict(model.named_parameters()))
    out = method.adapt(model, Batch(_x(), None))
    with torch.no_grad():
        assert torch.allclose(out, train_mode(_x()), atol=1e-5)
        assert not torch.allclose(out, source.eval()(_x()), atol=1e-3)
    assert all(torch.equal(p, params[k]) for k, p in model.named_parameters())
    assert method.state_dict() == {}


def test_source_prior_mixes_source_and_batch_statistics() -> None:
    source = _cnn().eval()
    near_source = NormAdapt(NormAdaptConfig(source_prior=0.999999))
    model = near_source.setup(copy.deepcopy(source), INFO)
    with torch.no_grad():
        assert torch.allclose(near_source.adapt(model, Batch(_x(), None)), source(_x()), atol=1e-4)
    half = NormAdapt(NormAdaptConfig(source_prior=0.5))
    mixed = half.setup(copy.deepcopy(source), INFO)
    out = half.adapt(mixed, Batch(_x(), None))
    assert not torch.allclose(out, source(_x()), atol=1e-3)
    with pytest.raises(ValueError):
        NormAdaptConfig(source_prior=1.0)


def test_refuses_models_without_batchnorm() -> None:
    with pytest.raises(IncompatibleError, match="BatchNorm"):
        NormAdapt().setup(MLP(INFO), INFO)

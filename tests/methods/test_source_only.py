"""source_only: the eval-mode source model predicts; nothing changes across batches."""

from __future__ import annotations

import copy

import torch

from clbench.models import CNNBN, CNNConfig
from clbench.streams import Batch, StreamInfo
from clbench.testing import params_equal
from methods.source_only import SourceOnly

INFO = StreamInfo("t", "test_time", 1, 4, (1, 8, 8), ((0, 1, 2, 3),))


def test_predicts_with_the_unchanged_eval_mode_source_model() -> None:
    torch.manual_seed(0)
    source = CNNBN(INFO, CNNConfig(channels=4)).eval()
    method = SourceOnly()
    model = method.setup(copy.deepcopy(source), INFO)
    for seed in range(3):
        x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            assert torch.equal(method.adapt(model, Batch(x, None)), source(x))
    assert params_equal(model, source)
    assert SourceOnly.adapts_at_test_time and SourceOnly.scenario_types == frozenset({"test_time"})

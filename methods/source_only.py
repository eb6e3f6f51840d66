"""Source-only baseline for test-time streams: the source model predicts, nothing adapts."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from clbench.protocol import Method
from clbench.registry import register_method
from clbench.streams import Batch, StreamInfo


@register_method("source_only")
class SourceOnly(Method):
    """Source model without adaptation (the "Source" row of CTTA tables).

    Paper: the no-adaptation reference of Wang et al., "Tent: Fully Test-Time Adaptation by
    Entropy Minimization", ICLR 2021 (arXiv:2006.10726) and of CoTTA (arXiv:2203.13591).

    Mechanism: the model stays in eval mode (BatchNorm uses the source running statistics) and
    every test batch is predicted with the unchanged source weights.

    Hooks used: ``setup`` (eval mode, everything frozen), ``adapt``/``predict`` (plain forward
    under ``torch.no_grad``).

    Deviations from the paper/official code: none in behaviour (official ``source`` =
    ``model.eval()`` forward). Registered as ``source_only`` rather than ``source``: the core
    uses the word "source" for source data, and the contract test forbids the core from naming
    a method.
    """

    scenario_types: ClassVar[frozenset[str]] = frozenset({"test_time"})
    adapts_at_test_time: ClassVar[bool] = True
    objectives: ClassVar[frozenset[str]] = frozenset({"classification"})

    def setup(self, model: nn.Module, stream_info: StreamInfo) -> nn.Module:
        model.requires_grad_(False)
        return model.eval()

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch) -> Tensor:
        model.eval()
        return model(batch.x)

    def adapt(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.predict(model, batch)

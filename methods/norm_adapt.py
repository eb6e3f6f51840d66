"""Test-time BatchNorm adaptation: normalise with test-batch statistics, no parameter update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clbench.adapt import BN_TYPES, use_batch_statistics
from clbench.errors import IncompatibleError
from clbench.protocol import Method
from clbench.registry import register_method
from clbench.streams import Batch, StreamInfo


@dataclass(frozen=True)
class NormAdaptConfig:
    """Options of :class:`NormAdapt`.

    Attributes:
        source_prior: weight ``N/(N+n)`` of the source statistics in the normalisation
            (Schneider et al. 2020): ``μ = w μ_source + (1-w) μ_batch`` and likewise for the
            variance. 0 (default) = pure test-batch statistics, the Tent repository's ``norm``.
    """

    source_prior: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.source_prior < 1.0:
            raise ValueError(f"source_prior must be in [0, 1), got {self.source_prior}")


@register_method("norm_adapt")
class NormAdapt(Method):
    """Test-time normalisation ("BN adapt"): BatchNorm statistics from each test batch.

    Papers: Schneider et al., "Improving robustness against common corruptions by covariate
    shift adaptation", NeurIPS 2020 (arXiv:2006.16971); Nado et al. 2020 (arXiv:2006.10963);
    the "BN" baseline of Tent (arXiv:2006.10726) and CoTTA (arXiv:2203.13591).

    Mechanism: every BatchNorm layer normalises with the mean and (biased) variance of the
    current test batch instead of the source running statistics; no parameter changes, so the
    method keeps no state across batches. With ``source_prior = w > 0`` the statistics are
    ``w · source + (1 − w) · batch`` (Schneider et al.'s ``N/(N+n)`` prior).

    Hooks used: ``setup`` (drop running statistics, or install the prior hooks), ``adapt`` and
    ``predict`` (forward under ``torch.no_grad``).

    Deviations from the paper/official code: the official ``norm.py`` (DequanWang/tent) keeps
    BN in train mode and still updates running statistics it never uses for prediction; here the
    running statistics are dropped (same predictions). The model must have BatchNorm layers
    (LayerNorm has no statistics to adapt): other models are refused in ``setup``.
    """

    Config = NormAdaptConfig
    scenario_types: ClassVar[frozenset[str]] = frozenset({"test_time"})
    adapts_at_test_time: ClassVar[bool] = True
    objectives: ClassVar[frozenset[str]] = frozenset({"classification"})

    def setup(self, model: nn.Module, stream_info: StreamInfo) -> nn.Module:
        bns = [m for m in model.modules() if isinstance(m, BN_TYPES)]
        if not bns:
            raise IncompatibleError("method 'norm_adapt' needs a model with BatchNorm layers "
                                    "(e.g. model=cnn_bn); this model has none")
        model.requires_grad_(False)
        if self.config.source_prior == 0.0:
            use_batch_statistics(model)
        else:
            for m in bns:  # source statistics as non-persistent buffers (follow .to(device))
                m.register_buffer("source_mean", m.running_mean.clone(), persistent=False)  # type: ignore[union-attr]
                m.register_buffer("source_var", m.running_var.clone(), persistent=False)  # type: ignore[union-attr]
                m.register_forward_pre_hook(self._mix_statistics)
        return model.eval()

    def _mix_statistics(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        """Set the running statistics to ``w · source + (1 − w) · batch`` before the forward."""
        x = args[0]
        dims = [d for d in range(x.dim()) if d != 1]
        w = self.config.source_prior
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        module.running_mean = w * module.source_mean + (1 - w) * mean  # type: ignore[operator]
        module.running_var = w * module.source_var + (1 - w) * var  # type: ignore[operator]

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch) -> Tensor:
        model.eval()
        return model(batch.x)

    def adapt(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.predict(model, batch)

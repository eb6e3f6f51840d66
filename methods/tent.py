"""Tent: test-time entropy minimisation over the normalisation layers' affine parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from clbench.adapt import (
    ResetPoint,
    make_optimizer,
    norm_modules,
    relative_drift,
    reset_due,
    softmax_entropy,
    use_batch_statistics,
)
from clbench.errors import IncompatibleError
from clbench.protocol import Method
from clbench.registry import register_method
from clbench.streams import Batch, Experience, StreamInfo

Reset = Literal["never", "domain", "batch"]


@dataclass(frozen=True)
class TentConfig:
    """Options of :class:`Tent` (defaults: the CIFAR CTTA configuration of the official code).

    Attributes:
        optimizer: ``adam`` (CIFAR: lr 1e-3, β 0.9/0.999) or ``sgd`` (ImageNet: lr 2.5e-4,
            momentum 0.9, nesterov).
        lr: learning rate of the test-time optimizer.
        momentum: SGD momentum (``sgd`` only).
        nesterov: SGD Nesterov momentum (``sgd`` only).
        weight_decay: test-time weight decay.
        steps: adaptation steps per test batch (the prediction is the last step's forward).
        reset: ``never`` (continual, the CTTA protocol), ``domain`` (reset at every new
            domain, the original Tent protocol), ``batch`` (the official ``episodic`` flag).
        norm: which affine parameters adapt: ``auto`` (BatchNorm if present, else
            LayerNorm/GroupNorm), ``batch`` or ``all``.
    """

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    steps: int = 1
    reset: Reset = "never"
    norm: Literal["auto", "batch", "all"] = "auto"

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.steps < 1 or self.weight_decay < 0 or self.momentum < 0:
            raise ValueError(f"need lr > 0, steps >= 1, weight_decay >= 0, momentum >= 0; got {self}")


@register_method("tent")
class Tent(Method):
    """Tent: fully test-time adaptation by entropy minimisation.

    Paper: Wang, Shelhamer, Liu, Olshausen & Darrell, "Tent: Fully Test-Time Adaptation by
    Entropy Minimization", ICLR 2021, arXiv:2006.10726. Official code: DequanWang/tent.

    Mechanism: all parameters are frozen except the normalisation layers' affine γ/β;
    BatchNorm normalises with the test batch's statistics (running statistics dropped). For each
    test batch: forward, ``L = mean_b H(softmax(z_b))``, one optimizer step on γ/β; the logits of
    the pre-update forward are the prediction. On a model without BatchNorm (``vit_tiny``) the
    LayerNorm γ/β adapt (the ViT practice of the PSMT/ViDA code bases).

    Hooks used: ``setup`` (configure, own optimizer, reset point), ``on_experience_start``
    (per-domain counters and reset), ``adapt`` (forward, entropy step), ``predict`` (forward
    without update), ``on_experience_end``/``experience_report`` (mechanism figures),
    ``state_dict``/``load_state_dict`` (optimizer state).

    Mechanism figures (per domain): ``entropy`` (mean prediction entropy of the domain's
    pre-update forwards, the minimised loss; a fall towards 0 with rising error is collapse) and
    ``param_drift`` (‖γβ − γβ_source‖ / ‖γβ_source‖ at the domain's end).

    Deviations from the paper/official code: defaults are the official CIFAR CTTA settings
    (Adam 1e-3, 1 step, continual: no reset); the original paper resets per corruption
    (``reset=domain``). The official code only configures ``BatchNorm2d``; BatchNorm1d/3d are
    included here, and LayerNorm/GroupNorm for models without BatchNorm (``norm=auto``). The
    test-time optimizer is owned and stepped by the method (the adaptation rule itself); the
    trainer's optimizer is never touched.
    """

    Config = TentConfig
    scenario_types: ClassVar[frozenset[str]] = frozenset({"test_time"})
    adapts_at_test_time: ClassVar[bool] = True
    objectives: ClassVar[frozenset[str]] = frozenset({"classification"})
    mechanism_figures: ClassVar[tuple[str, ...]] = ("entropy", "param_drift")

    def __init__(self, config: TentConfig | None = None) -> None:
        super().__init__(config)
        self.opt: Any = None
        self.start: ResetPoint | None = None
        self.steps_taken = 0
        self.params: dict[str, nn.Parameter] = {}
        self.source: dict[str, Tensor] = {}
        self.entropies: list[float] = []
        self.drift = float("nan")

    def setup(self, model: nn.Module, stream_info: StreamInfo) -> nn.Module:
        c = self.config
        model.train()
        model.requires_grad_(False)
        use_batch_statistics(model)
        params = [p for m in norm_modules(model, c.norm) for p in m.parameters(recurse=False)]
        if not params:
            raise IncompatibleError("method 'tent' needs normalisation layers with affine "
                                    f"parameters (norm={c.norm}); this model has none")
        for p in params:
            p.requires_grad_(True)
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.source = {n: p.detach().clone() for n, p in self.params.items()}
        self.opt = make_optimizer(params, c.optimizer, c.lr, c.momentum, c.weight_decay, c.nesterov)
        self.start = ResetPoint(model, self.opt)
        return model

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        self.entropies = []
        if reset_due(self.config.reset, exp) and self.start is not None:
            self.start.restore()

    def adapt(self, model: nn.Module, batch: Batch) -> Tensor:
        if reset_due(self.config.reset, None) and self.start is not None:
            self.start.restore()
        model.train()
        for _ in range(self.config.steps):
            outputs = model(batch.x)
            loss = softmax_entropy(outputs).mean(0)
            self.entropies.append(float(loss.detach()))
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.steps_taken += 1
        return outputs.detach()

    @torch.no_grad()
    def on_experience_end(self, exp: Experience, model: nn.Module) -> None:
        self.drift = relative_drift(self.params, self.source)

    def experience_report(self) -> dict[str, Any]:
        e = self.entropies
        return {"adapt_steps": self.steps_taken, "entropy": sum(e) / len(e) if e else float("nan"),
                "param_drift": self.drift}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict() if self.opt is not None else None,
                "steps_taken": self.steps_taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.opt is not None and state.get("optimizer") is not None:
            self.opt.load_state_dict(state["optimizer"])
        self.steps_taken = int(state.get("steps_taken", 0))

"""Elastic Weight Consolidation: a quadratic penalty weighted by the empirical Fisher information."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.protocol import Method
from clbench.registry import register_method
from clbench.search import grid, with_base
from clbench.streams import Batch, Experience, Split, StreamInfo
from clbench.trainer import mask_to_classes

TensorDict = dict[str, Tensor]


@dataclass(frozen=True)
class EWCConfig:
    """Options of :class:`EWC`.

    Attributes:
        ewc_lambda: weight of the penalty (Avalanche's ``ewc_lambda``; no 1/2 factor).
        mode: ``separate`` keeps one penalty per past experience; ``online`` keeps one running
            importance ``decay_factor * F_old + F_new`` anchored at the latest parameters.
        decay_factor: importance decay of ``online`` mode (ignored by ``separate``).
        fisher_batch_size: batch size of the importance pass; 0 = the training batch size (the
            largest training batch seen in the experience), as Avalanche's ``train_mb_size``.
    """

    ewc_lambda: float = 1.0
    mode: Literal["separate", "online"] = "separate"
    decay_factor: float = 1.0
    fisher_batch_size: int = 0

    def __post_init__(self) -> None:
        if self.ewc_lambda < 0:
            raise ValueError(f"ewc_lambda must be >= 0, got {self.ewc_lambda}")
        if not 0.0 <= self.decay_factor <= 1.0:
            raise ValueError(f"decay_factor must be in [0, 1], got {self.decay_factor}")
        if self.fisher_batch_size < 0:
            raise ValueError(f"fisher_batch_size must be >= 0, got {self.fisher_batch_size}")


@register_method("ewc")
class EWC(Method):
    """Elastic Weight Consolidation (EWC).

    Paper: Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks",
    PNAS 2017, arXiv:1612.00796.

    Mechanism: after each experience, the importance of every trainable parameter is the
    empirical Fisher diagonal -- the squared gradient of the training loss, averaged over
    minibatches of the experience's training data (model in eval mode, data in order) -- and the
    parameters are saved. While training later experiences the loss gets
    ``ewc_lambda * sum_t sum_k F_t,k * (theta_k - theta*_t,k)^2`` over past experiences ``t``
    (``separate``) or over the single running importance (``online``).

    Hooks used: ``setup`` (task-aware masking), ``loss`` (adds the penalty),
    ``on_experience_end`` (importance + anchor), ``state_dict``/``load_state_dict``.

    Deviations from the paper/official code (Avalanche 0.6 ``EWCPlugin`` is the reference and
    the default here, parity-tested):
        - Language-model streams (``causal_lm``, ``causal_lm_text``): the importance pass uses
          the stream's own token loss (answer-token or next-token cross-entropy, exactly the
          trainer's base loss), i.e. the empirical Fisher of the token loss; Avalanche has no LM
          path.
        - The penalty has no 1/2 factor (the paper writes ``lambda/2``): ``ewc_lambda`` here equals
          half the paper's lambda.
        - The Fisher is the squared *minibatch-mean* gradient of the true labels' loss (empirical
          Fisher, as Avalanche), not the mean of per-sample squared gradients with labels sampled
          from the model (the paper's Fisher).
        - The importance pass uses ``torch.autograd.grad``, so no ``.grad`` is touched; Avalanche
          calls ``optimizer.zero_grad()`` and leaves the last batch's gradients in ``.grad``.
        - In task-incremental streams the importance loss masks logits to the experience's
          classes, exactly as the trainer's training loss does.
    """

    Config = EWCConfig
    # widened to 1e5 after vision_cil's winner sat on 1e4 (grid round 2)
    search_space = with_base({"method.ewc_lambda": grid(0.0, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0,
                                                        closed_min=True)})

    def __init__(self, config: EWCConfig | None = None) -> None:
        super().__init__(config)
        self.importances: list[TensorDict] = []
        self.saved_params: list[TensorDict] = []
        self._task_aware = False
        self._train_bs = 0

    def setup(self, model: nn.Module, stream_info: StreamInfo) -> nn.Module:
        self._task_aware = stream_info.scenario_type == "task_incremental"
        return model

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        self._train_bs = 0

    def loss(self, model: nn.Module, batch: Batch, outputs: Tensor, base_loss: Tensor) -> Tensor:
        self._train_bs = max(self._train_bs, len(batch))
        if not self.importances:
            return base_loss
        return base_loss + self.config.ewc_lambda * self.penalty(model)

    def penalty(self, model: nn.Module) -> Tensor:
        """``sum_t sum_k F_t,k (theta_k - theta*_t,k)^2`` over the stored anchors."""
        params = dict(model.named_parameters())
        device = next((p.device for p in params.values()), torch.device("cpu"))
        self._to(device)
        total = torch.zeros((), device=device)
        for imp, saved in zip(self.importances, self.saved_params, strict=True):
            for name, f in imp.items():
                if name in params:
                    total = total + (f * (params[name] - saved[name]).pow(2)).sum()
        return total

    def on_experience_end(self, exp: Experience, model: nn.Module) -> None:
        bs = self.config.fisher_batch_size or self._train_bs or max(len(exp.train), 1)
        new = self.fisher(model, exp.train, exp.classes, bs)
        anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in new}
        if self.config.mode == "online" and self.importances:
            old = self.importances[-1]
            decay = self.config.decay_factor
            new = {n: decay * old[n] + f if n in old else f for n, f in new.items()}
            self.importances, self.saved_params = [new], [anchor]
        else:
            self.importances.append(new)
            self.saved_params.append(anchor)

    def fisher(self, model: nn.Module, data: Split, classes: tuple[int, ...],
               batch_size: int) -> TensorDict:
        """Empirical Fisher diagonal: mean over minibatches of squared loss gradients."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named or len(data) == 0:
            return {}
        device = named[0][1].device
        imp = {n: torch.zeros_like(p) for n, p in named}
        was_training = model.training
        model.eval()
        n_batches = 0
        try:
            for i in range(0, len(data), batch_size):
                x, y = data.x[i : i + batch_size].to(device), data.y[i : i + batch_size].to(device)
                grads = torch.autograd.grad(self._loss(model, x, y, classes), [p for _, p in named],
                                            allow_unused=True)
                for (n, _), g in zip(named, grads, strict=True):
                    if g is not None:
                        imp[n] += g.detach().pow(2)
                n_batches += 1
        finally:
            model.train(was_training)
        return {n: f / max(n_batches, 1) for n, f in imp.items()}

    def _loss(self, model: nn.Module, x: Tensor, y: Tensor, classes: tuple[int, ...]) -> Tensor:
        """The importance loss: class cross-entropy (masked per task), or the stream's token loss."""
        if self.objective.name != "classification":
            return self.objective.loss(model(x), Batch(x, y))
        out = model(x).float()
        if self._task_aware:
            out = mask_to_classes(out, classes)
        return F.cross_entropy(out, y)

    def _to(self, device: torch.device) -> None:
        first = next((t for d in self.importances for t in d.values()), None)
        if first is not None and first.device != device:
            self.importances = [{n: t.to(device) for n, t in d.items()} for d in self.importances]
            self.saved_params = [{n: t.to(device) for n, t in d.items()} for d in self.saved_params]

    def state_dict(self) -> dict[str, Any]:
        return {"importances": self.importances, "saved_params": self.saved_params}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.importances = [dict(d) for d in state["importances"]]
        self.saved_params = [dict(d) for d in state["saved_params"]]

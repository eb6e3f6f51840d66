"""Memory Aware Synapses: a quadratic penalty weighted by the sensitivity of the output's L2 norm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clbench.protocol import Method
from clbench.registry import register_method
from clbench.search import grid, with_base
from clbench.streams import Batch, Experience, Split, StreamInfo

TensorDict = dict[str, Tensor]


@dataclass(frozen=True)
class MASConfig:
    """Options of :class:`MAS`.

    Attributes:
        lambda_reg: weight of the penalty (Avalanche's ``lambda_reg``; no 1/2 factor).
        alpha: importance decay: after each experience but the first the importance becomes
            ``alpha * Omega_old + (1 - alpha) * Omega_new`` (Avalanche's ``alpha``; FACIL's).
        importance_batch_size: batch size of the importance pass; 0 = the training batch size
            (the largest training batch seen in the experience), as Avalanche's ``train_mb_size``.
    """

    lambda_reg: float = 1.0
    alpha: float = 0.5
    importance_batch_size: int = 0

    def __post_init__(self) -> None:
        if self.lambda_reg < 0:
            raise ValueError(f"lambda_reg must be >= 0, got {self.lambda_reg}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.importance_batch_size < 0:
            raise ValueError(f"importance_batch_size must be >= 0, got {self.importance_batch_size}")


def squared_output_norm(outputs: Tensor, x: Tensor, token_outputs: bool) -> Tensor:
    """The MAS objective ``mean ||F(x)||_2^2`` of one batch.

    Class logits (N, C): the squared L2 norm of each sample's output vector, averaged over the
    batch (Avalanche's arithmetic). Token logits (N, L, V) of packed ``(N, 2, L)`` inputs: the
    squared norm of the logit vector at every position whose next token the stream's loss
    covers (``x[:, 1]`` marks them; position ``t`` predicts token ``t + 1``), averaged over
    those positions.
    """
    if not token_outputs:
        return torch.norm(outputs, p="fro", dim=1).pow(2).mean()
    keep = x[:, 1, 1:] == 1
    if not keep.any():
        return outputs.sum() * 0.0
    return outputs[:, :-1][keep].float().pow(2).sum(-1).mean()


@register_method("mas")
class MAS(Method):
    """Memory Aware Synapses (MAS).

    Paper: Aljundi, Babiloni, Elhoseiny, Rohrbach & Tuytelaars, "Memory Aware Synapses: Learning
    what (not) to forget", ECCV 2018, arXiv:1711.09601. Official code:
    github.com/rahafaljundi/MAS-Memory-Aware-Synapses; Avalanche 0.6 ``MASPlugin`` (itself after
    FACIL's ``mas.py``) is the reference and the default here, parity-tested.

    Mechanism: after each experience the importance of every trainable parameter is
    ``Omega = mean over minibatches of |d/dtheta mean_x ||F(x)||_2^2|``, the absolute gradient
    of the squared L2 norm of the model's outputs (no labels needed), over the experience's
    training data in order; it is merged into the running importance as
    ``Omega <- alpha * Omega_old + (1 - alpha) * Omega_new`` (the first experience's importance
    is taken as is) and the parameters are saved as ``theta*``. While training later experiences
    the loss gets ``lambda_reg * sum_k Omega_k (theta_k - theta*_k)^2`` (no 1/2 factor, as the
    paper, the official code and Avalanche).

    Hooks used: ``setup`` (task-aware outputs), ``on_experience_start``, ``loss`` (adds the
    penalty), ``on_experience_end`` (importance + anchor), ``experience_report`` (mean
    importance), ``state_dict``/``load_state_dict``.

    Deviations from the paper/official code:
        - As Avalanche (and FACIL): the importance is the absolute gradient of the
          *minibatch-mean* squared norm, averaged over minibatches; the paper averages absolute
          per-sample gradients, the official code divides the summed absolute gradients of
          each minibatch's *summed* squared norm by the number of samples. Importances merge
          with the ``alpha`` decay; the paper and the official code add them up
          (``Omega_old + Omega_new``; ``alpha`` has no setting that does this).
        - The importance pass runs in eval mode (as the official code) with
          ``torch.autograd.grad``, so no ``.grad`` is touched, no batch-norm statistic moves
          and dropout is off; Avalanche runs it in train mode after ``optimizer.zero_grad()``
          and leaves the last batch's gradients in ``.grad``. Identical for models without
          dropout or batch norm (parity-tested).
        - Only parameters trainable at some experience end hold an importance (and an anchor);
          Avalanche keeps one for every parameter, zero for frozen ones. The values are the
          same: a missing importance counts as 0 in the update (a parameter frozen when an
          experience ends decays by ``alpha``; one first trainable after the first experience
          gets ``(1 - alpha) * Omega_new``).
        - Task-incremental streams: the norm is taken over the experience's own classes (the
          outputs of its task's head), as Avalanche's multi-head forward.
        - Language-model streams (``causal_lm``, ``causal_lm_text``): the squared norm of the
          token-logit vector at every position the stream's loss covers, averaged over those
          positions (the model's output function there); Avalanche has no LM path.
    """

    Config = MASConfig
    mechanism_figures: ClassVar[tuple[str, ...]] = ("mean_importance",)
    # the strength spans the paper's lambda = 1 by two decades each way; alpha stays Avalanche's 0.5
    search_space = with_base({"method.lambda_reg": grid(0.0, 0.01, 0.1, 1.0, 10.0, 100.0, closed_min=True)})

    def __init__(self, config: MASConfig | None = None) -> None:
        super().__init__(config)
        self.importance: TensorDict = {}
        self.saved_params: TensorDict = {}
        self._task_aware = False
        self._train_bs = 0

    def setup(self, model: nn.Module, stream_info: StreamInfo) -> nn.Module:
        self._task_aware = stream_info.scenario_type == "task_incremental"
        return model

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        self._train_bs = 0

    def loss(self, model: nn.Module, batch: Batch, outputs: Tensor, base_loss: Tensor) -> Tensor:
        self._train_bs = max(self._train_bs, len(batch))
        if not self.importance:
            return base_loss
        return base_loss + self.config.lambda_reg * self.penalty(model)

    def penalty(self, model: nn.Module) -> Tensor:
        """``sum_k Omega_k (theta_k - theta*_k)^2`` over the parameters with an importance."""
        params = dict(model.named_parameters())
        device = next((p.device for p in params.values()), torch.device("cpu"))
        self._to(device)
        total = torch.zeros((), device=device)
        for name, param in params.items():
            if name in self.importance:
                diff = param - self.saved_params[name]
                total = total + (self.importance[name] * diff.pow(2)).sum()
        return total

    def on_experience_end(self, exp: Experience, model: nn.Module) -> None:
        bs = self.config.importance_batch_size or self._train_bs or max(len(exp.train), 1)
        new = self.output_sensitivity(model, exp.train, exp.classes, bs)
        self.importance = self._merge(self.importance, new, [n for n, _ in model.named_parameters()])
        self.saved_params = {n: p.detach().clone() for n, p in model.named_parameters()
                             if n in self.importance}

    def _merge(self, old: TensorDict, new: TensorDict, names: list[str]) -> TensorDict:
        """``alpha * old + (1 - alpha) * new`` (``new`` alone the first time), in ``names`` order; a
        missing importance counts as 0, as in Avalanche's dictionary of every parameter."""
        if not old:
            return dict(new)
        a, out = self.config.alpha, {}
        for n in names:
            if n in old and n in new:
                out[n] = a * old[n] + (1 - a) * new[n]
            elif n in old:  # frozen at this experience's end: no new importance
                out[n] = a * old[n]
            elif n in new:  # trainable for the first time after the first experience
                out[n] = (1 - a) * new[n]
        return out

    def output_sensitivity(self, model: nn.Module, data: Split, classes: tuple[int, ...],
                           batch_size: int) -> TensorDict:
        """``Omega``: mean over minibatches of ``|grad of mean ||F(x)||^2|`` per trainable parameter."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named or len(data) == 0:
            return {}
        device = named[0][1].device
        imp = {n: torch.zeros_like(p) for n, p in named}
        token_outputs = not self.objective.class_logits
        was_training = model.training
        model.eval()
        n_batches = 0
        try:
            for i in range(0, len(data), batch_size):
                x = data.x[i : i + batch_size].to(device)
                out = model(x)
                if self._task_aware and not token_outputs:
                    out = out[:, list(classes)]
                norm = squared_output_norm(out, x, token_outputs)
                grads = torch.autograd.grad(norm, [p for _, p in named], allow_unused=True)
                for (n, _), g in zip(named, grads, strict=True):
                    if g is not None:
                        imp[n] += g.detach().abs()
                n_batches += 1
        finally:
            model.train(was_training)
        return {n: f / n_batches for n, f in imp.items()}

    def _to(self, device: torch.device) -> None:
        first = next(iter(self.importance.values()), None)
        if first is not None and first.device != device:
            self.importance = {n: t.to(device) for n, t in self.importance.items()}
            self.saved_params = {n: t.to(device) for n, t in self.saved_params.items()}

    def experience_report(self) -> dict[str, Any]:
        if not self.importance:
            return {}
        total = sum(float(t.sum()) for t in self.importance.values())
        count = sum(t.numel() for t in self.importance.values())
        return {"mean_importance": total / max(count, 1)}

    def state_dict(self) -> dict[str, Any]:
        return {"importance": self.importance, "saved_params": self.saved_params}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.importance = dict(state["importance"])
        self.saved_params = dict(state["saved_params"])

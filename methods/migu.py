"""MIGU: per-step masking of Linear gradient rows by the magnitude of the layer's outputs."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from clbench.modules import linear_layers
from clbench.protocol import Method
from clbench.registry import register_method
from clbench.search import grid, with_base
from clbench.streams import Experience, StreamInfo
from clbench.trainer import sum_across_processes


@dataclass(frozen=True)
class MIGUConfig:
    """Options of :class:`MIGU`.

    Attributes:
        threshold: T, the fraction of output rows *masked* per Linear and step (official
            ``ini_threshold``; 0.7 keeps the top 30 %).
        mask_first_experience: also mask during experience 0 (the official code trains the first
            task unmasked).
        mask_bias: also zero the bias gradient of masked rows (the official code does not).
        exclude: regexes (``re.search``) on qualified Linear names left unmasked, e.g. ``head``.
    """

    threshold: float = 0.7
    mask_first_experience: bool = False
    mask_bias: bool = False
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"exclude pattern {pattern!r} is not a valid regex: {exc}") from exc


def kth_for(d_out: int, threshold: float) -> int:
    """1-based rank of the cut so that ``n >= kthvalue(n, k)`` == ``n >= torch.quantile(n, T)``.

    Linear-interpolation quantiles put the cut between sorted positions ``floor`` and
    ``ceil(T * (d_out - 1))``; keeping ``>=`` it keeps every row from the ceil position up, i.e.
    ``d_out - ceil(T * (d_out - 1))`` rows when magnitudes are distinct (ties are kept).
    """
    return math.ceil(round(threshold * (d_out - 1), 9)) + 1


def _recorder(row: Tensor) -> Callable[[nn.Module, Any, Any], None]:
    """Forward hook adding ``sum over positions |output|`` (fp32) to ``row`` in training mode."""

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if module.training and isinstance(output, Tensor):
            out = output.detach()
            out = out if out.dim() > 1 else out.unsqueeze(0)
            row.add_(out.abs().sum(dim=tuple(range(out.dim() - 1)), dtype=torch.float32))

    return hook


class _Group:
    """Linear layers sharing (out_features, device): one magnitude buffer, one kthvalue per step."""

    def __init__(self, names: list[str], layers: list[nn.Linear], k: int) -> None:
        w = layers[0].weight
        self.names, self.layers, self.k = names, layers, k
        self.acc = torch.zeros(len(layers), w.shape[0], device=w.device)
        self.dropped = torch.zeros(len(layers), device=w.device)  # summed over steps

    def mask_(self, mask_bias: bool) -> None:
        """Zero the gradient rows below each layer's cut, count kept rows, reset the buffer."""
        sum_across_processes(self.acc)  # data parallel: magnitudes of the whole global batch
        cut = self.acc.kthvalue(self.k, dim=1, keepdim=True).values
        drop = self.acc < cut
        self.dropped += drop.sum(1)
        for i, layer in enumerate(self.layers):
            if layer.weight.grad is not None:
                layer.weight.grad.masked_fill_(drop[i].unsqueeze(1), 0.0)
            if mask_bias and layer.bias is not None and layer.bias.grad is not None:
                layer.bias.grad.masked_fill_(drop[i], 0.0)
        self.acc.zero_()


@register_method("migu")
class MIGU(Method):
    """MagnItude-based Gradient Updating (MIGU).

    Paper: Du et al., "Unlocking Continual Learning Abilities in Language Models",
    Findings of EMNLP 2024, arXiv:2406.17245. Official code: ``wenyudu/MIGU`` (full fine-tuning).

    Mechanism: from experience 1 on, a forward hook on every trainable ``nn.Linear`` adds
    ``n_i = sum over positions |y_i|`` (all tokens/samples of every micro-batch of the optimizer
    step, fp32) per output unit ``i``. After backward, per Linear, the weight-gradient rows with
    ``n_i < quantile(n, T)`` are zeroed (T = 0.7 keeps the top 30 %, ties kept), then the buffer
    is reset: the mask is rebuilt at every optimizer step from that step's batch. Experience 0 is
    plain fine-tuning. Works on any model with Linear layers (MLP, ViT, HF decoders/encoders).

    Hooks used: ``setup``, ``on_experience_start`` (install forward hooks),
    ``on_after_backward`` (mask gradient rows), ``on_experience_end`` (remove hooks),
    ``experience_report`` (kept fraction of gradient rows, overall and per layer; the overall
    one is the mechanism figure, 1.0 for the unmasked experience 0).

    Deviations from the paper/official code:
        - Magnitudes are not L1-normalised (as in the code; the paper's ``n / ||n||_1`` is a
          per-layer constant and does not change the ranking).
        - The cut is ``kthvalue`` at rank ``ceil(T * (d_out - 1)) + 1`` instead of
          ``torch.quantile`` (same kept set with ``>=``; works on any dtype and size).
        - Magnitudes accumulate in fp32 and the mask is applied to ``.grad`` right before
          clipping and the step (the released bf16 DeepSpeed config would crash in ``quantile``
          or mask gradients the optimizer no longer reads).
        - Hooks record in training mode only and exist only while an experience trains; other
          forward hooks are left alone (the code clears them and records at evaluation too).
        - Linears frozen at experience start are neither hooked nor counted. Layers whose
          forward is bypassed (e.g. ``nn.MultiheadAttention.out_proj``) see no magnitude and
          are never masked.
        - Data parallel (:mod:`clbench.trainer`): each process records the magnitudes of its
          shard; before the cut the buffers are summed over processes
          (``sum_across_processes``; the mean, as the code, ranks the same), so every
          process builds the mask of the whole global batch and applies it to the gradients the
          trainer has already summed across processes. In one process the sum is a no-op.
        - Options (off by default): ``mask_first_experience``, ``mask_bias``, ``exclude``.
        - Faithful but notable: the classifier head / lm_head is masked by logit magnitude
          (with tied embeddings this also masks embedding rows); gradient checkpointing counts a
          recomputed forward twice (uniform per layer, ranking unchanged).
    """

    Config = MIGUConfig
    mechanism_figures = ("kept_fraction",)
    # threshold 0 masks no row (plain fine-tuning, the limit); widened after vision_dil's winner sat
    # on 0.5.
    search_space = with_base({"method.threshold": grid(0.0, 0.3, 0.5, 0.7, 0.9, closed_min=True)})

    def __init__(self, config: MIGUConfig | None = None) -> None:
        super().__init__(config)
        self._handles: list[RemovableHandle] = []
        self._groups: list[_Group] = []
        self._steps = 0
        self._order: list[str] = []  # hooked layer names in model order
        self._report: dict[str, Any] = {}

    def setup(self, model: nn.Module, stream_info: StreamInfo) -> nn.Module:
        self._remove_hooks()
        return model

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        self._remove_hooks()
        self._steps, self._report = 0, {}
        if exp.index > 0 or self.config.mask_first_experience:
            self._install(model)

    def _install(self, model: nn.Module) -> None:
        patterns = [re.compile(p) for p in self.config.exclude]
        by_key: dict[tuple[int, torch.device], list[tuple[str, nn.Linear]]] = {}
        for name, layer in linear_layers(model):
            if layer.weight.requires_grad and not any(p.search(name) for p in patterns):
                self._order.append(name)
                by_key.setdefault((layer.out_features, layer.weight.device), []).append((name, layer))
        for (d_out, _), members in by_key.items():
            group = _Group([n for n, _ in members], [m for _, m in members],
                           kth_for(d_out, self.config.threshold))
            self._groups.append(group)
            for row, layer in zip(group.acc, group.layers, strict=True):
                self._handles.append(layer.register_forward_hook(_recorder(row)))

    def on_after_backward(self, model: nn.Module) -> None:
        if not self._groups:
            return
        for group in self._groups:
            group.mask_(self.config.mask_bias)
        self._steps += 1

    def on_experience_end(self, exp: Experience, model: nn.Module) -> None:
        self._report = self._summary()
        self._remove_hooks()

    def _summary(self) -> dict[str, Any]:
        if not self._groups:
            return {"kept_fraction": 1.0, "masked_steps": 0, "masked_layers": 0, "kept_fraction_per_layer": {}}
        steps = max(self._steps, 1)
        per_layer: dict[str, float] = {}
        kept = rows = 0.0
        for g in self._groups:
            total = steps * g.acc.shape[1]
            for name, dropped in zip(g.names, g.dropped.tolist(), strict=True):
                per_layer[name] = (total - dropped) / total if self._steps else 1.0
                kept, rows = kept + total - dropped, rows + total
        return {"kept_fraction": kept / rows if self._steps else 1.0, "masked_steps": self._steps,
                "masked_layers": len(per_layer),
                "kept_fraction_per_layer": {name: per_layer[name] for name in self._order}}

    def experience_report(self) -> dict[str, Any]:
        return dict(self._report)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._groups, self._order = [], [], []

    def state_dict(self) -> dict[str, Any]:
        # Masks are rebuilt every step from that step's batch and experience 0 is recognised by
        # its index, so nothing carries across experiences; hooks are re-installed per experience.
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore; the hooks of a running experience stay (a resume within an
        experience loads the state after on_experience_start installed them)."""

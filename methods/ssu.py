"""Source-Shielded Updates: freeze the source-important input columns of every weight matrix."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from clbench.modules import is_norm, linear_layers
from clbench.protocol import Method
from clbench.registry import register_method
from clbench.search import grid, with_base
from clbench.streams import Experience, Split

# norms whose feature (channel) axis is dim 1 of their input; every other norm uses the last axis
CHANNEL_FIRST: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                                              nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)
Entry = tuple[nn.Parameter, int, Tensor, Tensor]  # parameter, masked dim, frozen indices, saved values


@dataclass(frozen=True)
class SSUConfig:
    """Options of :class:`SSU`.

    Attributes:
        ratio: fraction of input columns of every target matrix (and of the elements of every
            vector parameter) that is frozen: ``floor(ratio * n)`` of them.
        calibration_samples: source samples used for calibration, picked by even striding over
            the source train split; 0 = all of it.
        calibration_batch_size: batch size of the calibration forward passes.
        score: ``code`` (official code, default): ``||W[:, j]||_2 * E[x_j^2]``; ``paper``:
            ``||W[:, j]||_1 * ||X_j||_2`` (Wanda summed over the column).
        freeze_vectors: also freeze the top elements of norm weights/biases and linear biases
            (official code); False = only matrices (the paper's description).
        include_head: also column-freeze the output head (the code skips embeddings and head).
        exact_freeze: restore frozen entries after every optimizer step, so weight decay and
            momentum cannot move them; False = gradient masking only (the code: decay leaks).
    """

    ratio: float = 0.5
    calibration_samples: int = 500
    calibration_batch_size: int = 64
    score: Literal["code", "paper"] = "code"
    freeze_vectors: bool = True
    include_head: bool = False
    exact_freeze: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {self.ratio}")
        if self.calibration_samples < 0:
            raise ValueError(f"calibration_samples must be >= 0, got {self.calibration_samples}")
        if self.calibration_batch_size < 1:
            raise ValueError(f"calibration_batch_size must be >= 1, got {self.calibration_batch_size}")
        if self.score not in ("code", "paper"):
            raise ValueError(f"score must be 'code' or 'paper', got {self.score!r}")


def column_scores(weight: Tensor, sumsq: Tensor, count: int, score: str = "code") -> Tensor:
    """Importance of each input column of ``weight`` (d_out, d_in).

    Args:
        sumsq: per input feature, the sum of ``x_j^2`` over the ``count`` calibration tokens.
        score: ``code``: ``||W[:, j]||_2 * sumsq_j / count``; ``paper``: ``||W[:, j]||_1 * sqrt(sumsq_j)``.
    """
    w = weight.detach().float()
    if score == "code":
        return torch.linalg.vector_norm(w, dim=0) * (sumsq / max(count, 1))
    return w.abs().sum(dim=0) * sumsq.sqrt()


def element_scores(param: Tensor, mean_sq: Tensor | float) -> Tensor:
    """Importance of each element of a vector parameter: ``|p_k| * (1 + E[x_k^2])`` (code)."""
    return param.detach().float().flatten().abs() * (1.0 + mean_sq)


def top_fraction(scores: Tensor, ratio: float) -> Tensor:
    """Ascending indices of the ``floor(ratio * n)`` highest scores (ties: lower index first)."""
    k = math.floor(ratio * scores.numel() + 1e-9)
    return torch.argsort(scores, descending=True, stable=True)[:k].sort().values


def output_head(model: nn.Module) -> nn.Module | None:
    """The output head: ``get_output_embeddings()`` (Hugging Face), else the last ``nn.Linear``."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return head if isinstance(head, nn.Module) else next(
        (m for _, m in reversed(list(linear_layers(model)))), None)


def _pname(module: str, param: str) -> str:
    return f"{module}.{param}" if module else param


def _features(module: nn.Module) -> int:
    """Input features of a Linear, or the element count of a norm's weight."""
    if isinstance(module, nn.Linear):
        return module.in_features
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight.numel()


def _view(t: Tensor, dim: int) -> Tensor:
    """Matrices are masked along dim 1 (columns); other parameters as flat vectors."""
    return t if dim == 1 else t.view(-1)


class _InputStats:
    """Forward hooks accumulating, per module, the fp32 sum of ``x^2`` per input feature."""

    def __init__(self, modules: dict[str, nn.Module], device: torch.device) -> None:
        self.device = device
        self.sumsq: dict[str, Tensor] = {}
        self.count = dict.fromkeys(modules, 0)
        self.handles = [m.register_forward_hook(self._hook(n, m)) for n, m in modules.items()]

    def _hook(self, name: str, module: nn.Module) -> Callable[..., None]:
        channel_first = isinstance(module, CHANNEL_FIRST)
        n = _features(module)

        def hook(mod: nn.Module, args: tuple[Tensor, ...], out: Any) -> None:
            x = args[0].movedim(1, -1) if channel_first and args[0].dim() > 2 else args[0]
            x = x.detach().reshape(-1, n).float()
            sq = x.pow(2).sum(dim=0)
            self.sumsq[name] = self.sumsq[name] + sq if name in self.sumsq else sq
            self.count[name] += len(x)

        return hook

    def get(self, name: str, size: int) -> tuple[Tensor, int]:
        """(sum of x^2 per feature, token count); zeros for a module never called."""
        return self.sumsq.get(name, torch.zeros(size, device=self.device)), self.count[name]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@register_method("ssu")
class SSU(Method):
    """Source-Shielded Updates (SSU).

    Paper: Yamaguchi, Morishita, Villavicencio, Aletras, "Mitigating Catastrophic Forgetting in
    Target Language Adaptation of LLMs via Source-Shielded Updates", ACL 2026, arXiv:2512.04844.
    Official code: github.com/gucci-j/ssu (the default behaviour here).

    Mechanism: once, before the first experience, forward passes over a strided subset of the
    source train split (inference mode, eval mode, fp32 statistics) give every target module the
    mean ``E[x_j^2]`` of each input feature. Every ``nn.Linear`` except the output head is scored
    per input column (``||W[:, j]||_2 * E[x_j^2]``, or the paper's Wanda sum
    ``||W[:, j]||_1 * ||X_j||_2``) and the top ``ratio`` of its columns is frozen, independently
    per matrix. Norm weights/biases are scored per element by ``|w_k| * (1 + E[x_k^2])`` and
    their top ``ratio`` frozen too. The mask is static for all experiences. Models without
    transformer blocks (an MLP) are handled the same way: every Linear but the head is a target.
    Other modules (convolutions, embeddings, positional/cls parameters, the head) stay trainable.

    Hooks used: ``on_source_data`` (calibration, masks), ``on_experience_start`` (bind masks to
    the live parameters, snapshot frozen values), ``on_after_backward`` (zero frozen gradients:
    clean optimizer moments and clip norm), ``on_after_step`` (restore frozen values exactly),
    ``experience_report`` (mechanism figure: ``frozen_fraction``, the share of the targeted
    entries frozen), ``state_dict``/``load_state_dict``.

    Deviations from the paper/official code:
        - Frozen entries are restored after every step (``exact_freeze``), so they stay
          bit-identical under weight decay and momentum; the code only masks gradients, which
          lets AdamW's decoupled decay shrink frozen weights (``exact_freeze=False`` = the code).
        - Calibration units are source samples (images), not packed 2048-token chat-templated
          text blocks; the default 500 keeps the code's count. There is no padding to exclude.
        - The head is found generically (``get_output_embeddings()`` or the last Linear) instead
          of by name substrings; chat/special-token row freezing of embeddings and head has no
          counterpart here (no tokens) and is not implemented.
        - Linear biases (absent in OLMo-2) are scored as vectors whose input is the constant 1:
          ``|b_k| * (1 + 1)``, i.e. by magnitude.
        - Statistics and scores are accumulated in fp32 (the code uses bf16); ties are broken by
          the lower index (stable sort).
    """

    Config = SSUConfig
    mechanism_figures = ("frozen_fraction",)
    search_space = with_base({"method.ratio": grid(0.25, 0.5, 0.75)})
    needs_source_data = True

    def __init__(self, config: SSUConfig | None = None) -> None:
        super().__init__(config)
        self.frozen: dict[str, Tensor] = {}  # parameter name -> frozen indices (CPU, ascending)
        self.dims: dict[str, int] = {}  # parameter name -> 1 (matrix columns) or 0 (flat vector)
        self.calibration_samples = 0
        self._entries: list[Entry] = []
        self._report: dict[str, Any] = {}

    def on_source_data(self, model: nn.Module, source: Split) -> None:
        c = self.config
        if len(source) == 0:
            raise ValueError("SSU needs a non-empty source split for calibration")
        head = None if c.include_head else output_head(model)
        linears = {n: m for n, m in linear_layers(model) if m is not head}
        norms = {n: m for n, m in model.named_modules()
                 if c.freeze_vectors and is_norm(m) and isinstance(getattr(m, "weight", None), Tensor)}
        stats = self._calibrate(model, source, {**linears, **norms})
        self.frozen, self.dims = {}, {}
        for name, lin in linears.items():
            sumsq, count = stats.get(name, lin.in_features)
            self._add(_pname(name, "weight"), 1,
                      top_fraction(column_scores(lin.weight, sumsq, count, c.score), c.ratio))
            if lin.bias is not None and c.freeze_vectors:
                self._add(_pname(name, "bias"), 0, top_fraction(element_scores(lin.bias, 1.0), c.ratio))
        for name, norm in norms.items():
            sumsq, count = stats.get(name, _features(norm))
            for pn, p in norm.named_parameters(recurse=False):
                if p.numel() == sumsq.numel():
                    scores = element_scores(p, sumsq / max(count, 1))
                    self._add(_pname(name, pn), 0, top_fraction(scores, c.ratio))

    def _calibrate(self, model: nn.Module, source: Split, modules: dict[str, nn.Module]) -> _InputStats:
        """Forward the strided calibration samples (eval + inference mode) with hooks installed."""
        n = len(source)
        k = min(self.config.calibration_samples or n, n)
        idx = torch.arange(k) * n // k  # even striding, deterministic
        device = next(model.parameters()).device
        stats, was_training = _InputStats(modules, device), model.training
        model.eval()
        try:
            with torch.inference_mode():
                for chunk in idx.split(self.config.calibration_batch_size):
                    model(source.x[chunk].to(device))
        finally:
            stats.remove()
            model.train(was_training)
        self.calibration_samples = k
        return stats

    def _add(self, name: str, dim: int, idx: Tensor) -> None:
        self.frozen[name], self.dims[name] = idx.cpu(), dim

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        if not self.calibration_samples:
            raise RuntimeError("SSU was not calibrated: on_source_data must run before training")
        params = dict(model.named_parameters(remove_duplicate=False))
        self._entries = []
        for name, idx in self.frozen.items():
            p, dim = params[name], self.dims[name]
            idx = idx.to(p.device)
            self._entries.append((p, dim, idx, _view(p.detach(), dim).index_select(dim, idx)))
        self._report = self._summary(params, sum(p.numel() for p in model.parameters()))

    def on_after_backward(self, model: nn.Module) -> None:
        for p, dim, idx, _ in self._entries:
            if p.grad is not None:
                _view(p.grad, dim).index_fill_(dim, idx, 0.0)

    def on_after_step(self, model: nn.Module) -> None:
        if self.config.exact_freeze:
            with torch.no_grad():
                for p, dim, idx, saved in self._entries:
                    _view(p, dim).index_copy_(dim, idx, saved)

    def _summary(self, params: dict[str, nn.Parameter], total: int) -> dict[str, Any]:
        frozen = targeted = 0
        columns: dict[str, float] = {}
        for name, idx in self.frozen.items():
            p, matrix = params[name], self.dims[name] == 1
            frozen += len(idx) * (p.shape[0] if matrix else 1)
            targeted += p.numel()
            if matrix:
                columns[name.removesuffix(".weight")] = len(idx) / p.shape[1]
        return {"frozen_fraction": frozen / max(targeted, 1), "frozen_fraction_model": frozen / max(total, 1),
                "frozen_params": frozen, "calibration_samples": self.calibration_samples,
                "score": self.config.score, "frozen_columns": columns}

    def experience_report(self) -> dict[str, Any]:
        return dict(self._report)

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": dict(self.frozen), "dims": dict(self.dims),
                "calibration_samples": self.calibration_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frozen = {n: t.cpu() for n, t in state["frozen"].items()}
        self.dims = {n: int(d) for n, d in state["dims"].items()}
        self.calibration_samples = int(state["calibration_samples"])

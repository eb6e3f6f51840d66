"""Owns generic tools for test-time methods: batch statistics, normalisation layers, entropy,
EMA teachers, drift, optimizers and reset points. They name no method; the online loop that
calls the methods is :mod:`clbench.tta`."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from clbench.streams import Experience

NAN = float("nan")

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
NORM_TYPES = (*BN_TYPES, nn.LayerNorm, nn.GroupNorm)


def use_batch_statistics(model: nn.Module) -> list[nn.Module]:
    """Make every BatchNorm normalise with the current batch's statistics (train or eval mode).

    Drops the running statistics (``track_running_stats=False``, buffers ``None``), as the
    reference CTTA implementations do; returns the BatchNorm modules.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for m in bns:
        m.track_running_stats = False
        m.running_mean = None
        m.running_var = None
        m.num_batches_tracked = None
    out: list[nn.Module] = list(bns)
    return out


def norm_modules(model: nn.Module, kind: str = "auto") -> list[nn.Module]:
    """Normalisation layers with affine parameters.

    Args:
        kind: ``batch`` (BatchNorm only), ``all`` (BatchNorm, LayerNorm, GroupNorm) or ``auto``
            (BatchNorm if the model has any, else LayerNorm/GroupNorm).
    """
    bns: list[nn.Module] = [m for m in model.modules() if isinstance(m, BN_TYPES) and m.weight is not None]
    others: list[nn.Module] = [m for m in model.modules()
                               if isinstance(m, nn.LayerNorm | nn.GroupNorm) and m.weight is not None]
    if kind == "batch" or (kind == "auto" and bns):
        return bns
    return others if kind == "auto" else bns + others


def weight_bias_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter registered directly as ``weight`` or ``bias`` of a module, by full name."""
    out: dict[str, nn.Parameter] = {}
    for mod_name, mod in model.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            if p_name in ("weight", "bias"):
                out[f"{mod_name}.{p_name}" if mod_name else p_name] = p
    return out


def softmax_entropy(logits: Tensor) -> Tensor:
    """Per-sample Shannon entropy ``H(p) = -Σ_c p_c log p_c`` of ``softmax(logits)``."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def soft_cross_entropy(student: Tensor, teacher: Tensor) -> Tensor:
    """Per-sample ``-Σ_c softmax(teacher)_c log softmax(student)_c``."""
    return -(teacher.softmax(1) * student.log_softmax(1)).sum(1)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """``θ' ← α θ' + (1 − α) θ`` for every parameter pair (buffers untouched)."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)


@torch.no_grad()
def relative_drift(params: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> float:
    """``‖θ − θ_ref‖₂ / ‖θ_ref‖₂`` over the named tensors present in both (0 = unchanged)."""
    keys = [k for k in params if k in reference]
    if not keys:
        return NAN
    diff = sum(float((params[k].detach().float().cpu() - reference[k].float().cpu()).pow(2).sum()) for k in keys)
    ref = sum(float(reference[k].float().cpu().pow(2).sum()) for k in keys)
    return (diff / max(ref, 1e-12)) ** 0.5


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters never receive gradients (teachers, anchors)."""
    twin = copy.deepcopy(model)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def follow(module: nn.Module, like: Tensor) -> nn.Module:
    """Move ``module`` to ``like``'s device if it lives elsewhere (method-held copies)."""
    p = next(iter(module.parameters()), None)
    if p is not None and p.device != like.device:
        module.to(like.device)
    return module


def make_optimizer(params: list[nn.Parameter], name: str, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0, nesterov: bool = True) -> torch.optim.Optimizer:
    """The test-time optimizers of the reference code: Adam (β = 0.9, 0.999) or SGD."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0)


class OptimizerOptions(Protocol):
    """The optimizer options of a test-time method's config."""

    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool


def optimize_all_weights(model: nn.Module, c: OptimizerOptions) -> torch.optim.Optimizer:
    """Every weight and bias of ``model`` trainable, under the method's optimizer (the setup of
    teacher-student methods that update the whole model)."""
    model.requires_grad_(True)
    return make_optimizer(list(weight_bias_parameters(model).values()), c.optimizer, c.lr, c.momentum,
                          c.weight_decay, c.nesterov)


class ResetPoint:
    """Snapshots of modules' and optimizers' states, restorable for episodic resets."""

    def __init__(self, *objects: nn.Module | torch.optim.Optimizer) -> None:
        self.objects = objects
        self.states = [copy.deepcopy(o.state_dict()) for o in objects]

    def restore(self) -> None:
        for obj, state in zip(self.objects, self.states, strict=True):
            obj.load_state_dict(copy.deepcopy(state))


def reset_due(reset: str, exp: Experience | None) -> bool:
    """Whether a ``reset`` policy (``never``/``domain``/``batch``) resets now.

    ``exp`` is the experience starting (domain policy) or ``None`` before a batch (batch policy).
    """
    if exp is None:
        return reset == "batch"
    return reset == "domain" and exp.index > 0

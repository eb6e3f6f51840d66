"""Owns optimizer parameter groups: a separate learning rate for a model's output head, and no
weight decay on norms and biases (``trainer.no_decay_norms_biases``).

A model declares its head by convention, the ``head`` submodule every clbench classifier has
(``head.*`` parameters), or explicitly with a ``head_parameter_names()`` method returning
parameter names as ``named_parameters()`` spells them. ``trainer.head_lr > 0`` puts the trainable
head parameters in their own group with that learning rate; every other setting is shared.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from clbench.config import TrainerConfig
from clbench.errors import ConfigError


def head_parameter_names(model: nn.Module) -> set[str] | None:
    """Names of the head's parameters; ``None`` when the model declares no head."""
    declared = getattr(model, "head_parameter_names", None)
    if callable(declared):
        return set(declared())
    if isinstance(getattr(model, "head", None), nn.Module):
        return {n for n, _ in model.named_parameters() if n.startswith("head.")}
    return None


def param_groups(model: nn.Module, params: list[nn.Parameter],
                 cfg: TrainerConfig) -> list[nn.Parameter] | list[dict[str, Any]]:
    """``params`` as is when neither ``head_lr`` nor ``no_decay_norms_biases`` is set; else groups:
    the body and (``head_lr`` > 0) the head with ``lr=head_lr``, each split (with
    ``no_decay_norms_biases``) into decayed weights and 1-D parameters (norm scales, biases)
    with ``weight_decay=0``, the usual rule of language-model fine-tuning recipes.

    Empty groups are left out (a head without trainable parameters gives no head group).

    Raises:
        ConfigError: ``head_lr`` is set but the model declares no head.
    """
    if cfg.head_lr <= 0 and not cfg.no_decay_norms_biases:
        return params
    head_ids: set[int] = set()
    if cfg.head_lr > 0:
        names = head_parameter_names(model)
        if names is None:
            raise ConfigError("trainer.head_lr", cfg.head_lr,
                              f"0 ({type(model).__name__} declares no head: a `head` submodule or "
                              "a head_parameter_names() method)")
        head_ids = {id(p) for n, p in model.named_parameters() if n in names}
    groups: list[dict[str, Any]] = []
    for is_head in (False, True):
        part = [p for p in params if (id(p) in head_ids) == is_head]
        extra = {"lr": cfg.head_lr} if is_head else {}
        if cfg.no_decay_norms_biases:
            groups += [{"params": [p for p in part if p.ndim >= 2], **extra},
                       {"params": [p for p in part if p.ndim < 2], "weight_decay": 0.0, **extra}]
        else:
            groups.append({"params": part, **extra})
    return [g for g in groups if g["params"]]

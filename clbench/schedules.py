"""Owns the learning-rate schedule of an experience and gradient checkpointing.

``trainer.scheduler`` = ``constant`` | ``linear`` | ``cosine`` with ``trainer.warmup_ratio``:
the learning rate rises linearly from 0 over the first ``warmup_ratio`` of the experience's
optimizer steps, then stays (constant), decays linearly to 0 or follows a half cosine to 0 by the
experience's last step; every experience starts its own schedule, as LLM continual fine-tuning
recipes do. The schedules are Hugging Face ``transformers``' (``get_scheduler``), the ones those
recipes use. ``trainer.gradient_checkpointing`` turns on the Hugging Face models' own activation
checkpointing.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from clbench.config import TrainerConfig
from clbench.errors import ConfigError

_HF_NAMES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def steps_per_experience(n_samples: int, cfg: TrainerConfig) -> int:
    """Optimizer steps the trainer takes on ``n_samples`` training samples (all epochs)."""
    batches = math.ceil(n_samples / cfg.batch_size)
    return cfg.epochs * math.ceil(batches / cfg.grad_accum)


def lr_scheduler(opt: torch.optim.Optimizer, cfg: TrainerConfig, steps: int) -> Any:
    """The experience's schedule over ``steps`` optimizer steps; None for a constant rate."""
    if cfg.scheduler == "constant" and cfg.warmup_ratio == 0.0:
        return None
    from transformers import get_scheduler

    return get_scheduler(_HF_NAMES[cfg.scheduler], opt, num_warmup_steps=round(cfg.warmup_ratio * steps),
                         num_training_steps=max(steps, 1))


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Turn on activation checkpointing in every outermost Hugging Face model inside ``model``
    (it covers the models nested in it); returns how many. ConfigError when there is none (only
    those models implement it)."""
    found: list[nn.Module] = []
    outer: list[str] = []
    for name, m in model.named_modules():  # parents come before their children
        if callable(getattr(m, "gradient_checkpointing_enable", None)) and \
                not any(name == o or name.startswith(o + ".") or o == "" for o in outer):
            found.append(m)
            outer.append(name)
    if not found:
        raise ConfigError("trainer.gradient_checkpointing", True,
                          f"false ({type(model).__name__} holds no Hugging Face model that implements it)")
    for m in found:
        if not getattr(m, "is_gradient_checkpointing", False):
            enable = getattr(m, "gradient_checkpointing_enable")  # noqa: B009 - an HF method, not a module attribute
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return len(found)

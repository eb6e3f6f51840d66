"""Owns the learning-rate schedule of an experience and gradient checkpointing.

``trainer.scheduler`` = ``constant`` | ``linear`` | ``cosine`` with ``trainer.warmup_ratio``:
the learning rate rises linearly from 0 over the first ``warmup_ratio`` of the experience's
optimizer steps, then stays (constant), decays linearly to 0 or follows a half cosine to 0 by the
experience's last step; every experience starts its own schedule, as LLM continual fine-tuning
recipes do. The schedules are Hugging Face ``transformers``' (``get_scheduler``), the ones those
recipes use.

``trainer.scheduler=multistep`` with ``trainer.milestones`` (epochs) and ``trainer.gamma`` is
PyTorch's ``MultiStepLR`` as the vision recipes use it (Mammoth's seq-cifar100 builds
``MultiStepLR(opt, [35, 45], gamma=0.1)`` at each task's start and steps it after each epoch): the
rate is ``lr * gamma ** k`` during an epoch that follows ``k`` milestones, so with milestones [35,
45] epochs 1-35 run at ``lr``, 36-45 at ``lr * gamma`` and 46 on at ``lr * gamma ** 2``. The
trainer steps every schedule after each optimizer step, so the milestones are placed at the
matching optimizer steps (a milestone times the steps of one epoch): the rate changes exactly at
the epoch boundary. Like the other schedules it restarts with every experience (the trainer builds
a fresh optimizer and schedule per experience, as Mammoth does per task); milestones at or past the
experience's last epoch never apply. No warmup (MultiStepLR has none).
``trainer.gradient_checkpointing`` turns on the Hugging Face models' own activation checkpointing.
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
    """The experience's schedule over ``steps`` optimizer steps (``cfg.epochs`` epochs of equal
    steps, :func:`steps_per_experience`), stepped after every optimizer step; None for a constant
    rate."""
    if cfg.scheduler == "constant" and cfg.warmup_ratio == 0.0:
        return None
    if cfg.scheduler == "multistep":
        per_epoch = steps // cfg.epochs
        return torch.optim.lr_scheduler.MultiStepLR(opt, [m * per_epoch for m in cfg.milestones], gamma=cfg.gamma)
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

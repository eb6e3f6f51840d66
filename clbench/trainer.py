"""Owns the one training loop: optimizer, steps, clipping, accumulation, device, counters.

The loop is identical for every method; methods act only through their hooks
(:mod:`clbench.protocol`). It counts optimizer steps, samples and wall time the same way for all.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from clbench.config import TrainerConfig
from clbench.errors import NonFiniteLossError
from clbench.protocol import Method, trainable
from clbench.streams import Batch, Experience, Split


@dataclass
class ExperienceStats:
    """Counters for one experience's training."""

    optimizer_steps: int = 0
    train_samples: int = 0  # samples of the experience's training data consumed
    forward_samples: int = 0  # samples forwarded (after transform_batch, e.g. with replay)
    train_time_s: float = 0.0
    mean_loss: float = float("nan")


def resolve_device(choice: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA when precision is auto/bf16; a no-op context on CPU/fp32."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_optimizer(params: list[nn.Parameter], cfg: TrainerConfig) -> torch.optim.Optimizer:
    """The default optimizer over ``params`` (trainable parameters only)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def mask_to_classes(logits: Tensor, classes: Sequence[int]) -> Tensor:
    """Task-incremental heads: logits outside the task's classes set to a large negative."""
    keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    keep[list(classes)] = True
    return logits.masked_fill(~keep, torch.finfo(logits.dtype).min)


class Trainer:
    """Runs one experience of training for any method through its hooks."""

    def __init__(self, cfg: TrainerConfig, device: torch.device, task_aware: bool = False) -> None:
        self.cfg = cfg
        self.device = device
        self.task_aware = task_aware  # task-incremental: losses on the task's classes only

    def train_experience(
        self,
        model: nn.Module,
        method: Method,
        exp: Experience,
        seen: Sequence[Experience],
        generator: torch.Generator,
    ) -> ExperienceStats:
        """Train ``model`` on ``exp`` with ``method``; ``generator`` drives shuffling."""
        method.on_experience_start(exp, model)
        data = method.train_data(exp, seen)
        params = trainable(model.parameters())
        opt = method.optimizer(params, self.cfg) or build_optimizer(params, self.cfg)
        opt.zero_grad(set_to_none=True)
        model.train()
        stats = ExperienceStats()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        n_batches = 0
        for epoch in range(self.cfg.epochs):
            total = math.ceil(len(data) / self.cfg.batch_size)
            bar = tqdm(self._batches(data, exp, generator), total=total, leave=False, unit="batch",
                       desc=f"exp {exp.index} epoch {epoch + 1}/{self.cfg.epochs}",
                       disable=not self.cfg.progress)
            for k, batch in enumerate(bar):
                stats.train_samples += len(batch)
                loss = self._forward_backward(model, method, exp, batch, stats, k)
                loss_sum += loss.detach()
                n_batches += 1
                if (k + 1) % self.cfg.grad_accum == 0 or k + 1 == total:
                    self._step(model, method, opt, params)
                    stats.optimizer_steps += 1
        method.on_experience_end(exp, model)
        stats.train_time_s = time.perf_counter() - start
        stats.mean_loss = float(loss_sum) / max(n_batches, 1)
        return stats

    def _batches(self, data: Split, exp: Experience, gen: torch.Generator) -> Iterator[Batch]:
        n, bs = len(data), self.cfg.batch_size
        order = torch.randperm(n, generator=gen) if self.cfg.shuffle else torch.arange(n)
        for i in range(0, n, bs):
            idx = order[i : i + bs]
            task = torch.full((len(idx),), exp.task_id, dtype=torch.long)
            yield Batch(data.x[idx], data.y[idx], task)

    def _forward_backward(
        self, model: nn.Module, method: Method, exp: Experience, batch: Batch,
        stats: ExperienceStats, k: int,
    ) -> Tensor:
        batch = method.transform_batch(batch.to(self.device, non_blocking=True))
        stats.forward_samples += len(batch)
        with autocast_for(self.device, self.cfg.precision):
            outputs = model(batch.x)
            if self.task_aware:
                outputs = mask_to_classes(outputs, exp.classes)
            assert batch.y is not None, "training batches carry labels"
            base = F.cross_entropy(outputs.float(), batch.y)
            loss = method.loss(model, batch, outputs, base)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(exp.index, k, float(loss.detach()))
        (loss / self.cfg.grad_accum).backward()
        return loss

    def _step(self, model: nn.Module, method: Method, opt: torch.optim.Optimizer,
              params: list[nn.Parameter]) -> None:
        method.on_after_backward(model)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.on_after_step(model)

"""Owns what the training loop carries from step to step: the experience's counters, the loss
monitor (NaN/inf stops the run) and the state of an experience interrupted between optimizer
steps (``trainer.checkpoint_every``), saved and restored so that the experience continues exactly
as it would have."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from clbench.errors import NonFiniteLossError

if TYPE_CHECKING:
    from clbench.protocol import Method


@dataclass
class ExperienceStats:
    """Counters for one experience's training."""

    optimizer_steps: int = 0
    train_samples: int = 0  # samples of the experience's training data consumed
    forward_samples: int = 0  # samples forwarded (after transform_batch, e.g. memory samples)
    train_time_s: float = 0.0
    mean_loss: float = float("nan")
    peak_cuda_mb: float | None = None  # CUDA: peak allocated memory while training the experience


class LossMonitor:
    """Sums losses and stops on NaN/inf without a host sync per step on accelerators.

    On CPU every step is checked (``.item()`` is cheap there); on CUDA the running sum is checked
    every ``cuda_every`` batches and at each epoch end, so a failure names a batch range.
    """

    def __init__(self, experience: int, device: torch.device, cuda_every: int = 50) -> None:
        self.experience, self.cpu, self.every = experience, device.type == "cpu", cuda_every
        self.total: float | Tensor = 0.0 if self.cpu else torch.zeros((), device=device)
        self.n = 0
        self.last_checked = -1

    def add(self, loss: Tensor, k: int) -> None:
        self.n += 1
        if self.cpu:
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(self.experience, k, value)
            self.total += value
        else:
            self.total += loss
            if (k + 1) % self.every == 0:
                self.check(k)

    def check(self, k: int) -> None:
        if not self.cpu and not bool(torch.isfinite(self.total)):  # type: ignore[arg-type]
            raise NonFiniteLossError(self.experience, k, float(self.total))
        self.last_checked = k

    def mean(self) -> float:
        return float(self.total) / max(self.n, 1)


def step_state(epoch: int, batch: int, gen_state: Tensor, model: nn.Module, method: Method,
                opt: torch.optim.Optimizer, sched: Any, stats: ExperienceStats, losses: LossMonitor,
                elapsed: float) -> dict[str, Any]:
    """Everything an experience needs to continue after ``batch`` of ``epoch``: weights, method,
    optimizer and schedule state, the generator state the epoch's order is drawn from, the global
    RNG (dropout, augmentation), counters and the loss sum so far."""
    return {"epoch": epoch, "batch": batch, "generator": gen_state, "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "model": model.state_dict(), "method": method.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": None if sched is None else sched.state_dict(),
            "counters": [stats.optimizer_steps, stats.train_samples, stats.forward_samples],
            "loss": [float(losses.total), losses.n], "elapsed": elapsed}


def restore_step(state: Mapping[str, Any], model: nn.Module, method: Method, opt: torch.optim.Optimizer,
                  sched: Any, generator: torch.Generator, stats: ExperienceStats,
                  losses: LossMonitor) -> tuple[int, int, float]:
    """Load a :func:`step_state`; returns (epoch, batch, seconds already spent)."""
    model.load_state_dict(state["model"])
    method.load_state_dict(state["method"])
    opt.load_state_dict(state["optimizer"])
    if sched is not None and state["scheduler"] is not None:
        sched.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    stats.optimizer_steps, stats.train_samples, stats.forward_samples = (int(c) for c in state["counters"])
    losses.total = losses.total + float(state["loss"][0])
    losses.n = int(state["loss"][1])
    return int(state["epoch"]), int(state["batch"]), float(state["elapsed"])

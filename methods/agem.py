"""Averaged Gradient Episodic Memory (A-GEM): project the gradient so that the loss on a memory
sample does not increase."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clbench.protocol import Method
from clbench.registry import register_method
from clbench.search import grid, with_base
from clbench.streams import Batch, Experience, StreamInfo
from clbench.trainer import sum_across_processes, world_info
from methods._memory import (
    Fields,
    add_task_classes,
    experience_seed,
    mask_to_tasks,
    memory_seed,
    training_inputs,
)


@dataclass(frozen=True)
class AGEMConfig:
    """Options of :class:`AGEM`.

    Attributes:
        patterns_per_experience: samples of each experience kept in the memory (a uniform random
            subset; the whole experience if it is smaller); 0 = no memory (plain fine-tuning).
        sample_size: memory samples of each reference gradient, split equally over the stored
            experiences (``sample_size // n_experiences`` from each, at least 1).
    """

    patterns_per_experience: int = 250
    sample_size: int = 256

    def __post_init__(self) -> None:
        if self.patterns_per_experience < 0:
            raise ValueError(f"patterns_per_experience must be >= 0, got {self.patterns_per_experience}")
        if self.sample_size < 1:
            raise ValueError(f"sample_size must be >= 1, got {self.sample_size}")


def flat_grads(grads: list[Tensor | None], params: list[nn.Parameter]) -> Tensor:
    """One float vector of ``grads`` (zeros where a parameter has none)."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                      for g, p in zip(grads, params, strict=True)])


def project(grad: Tensor, ref: Tensor) -> tuple[Tensor, bool]:
    """A-GEM's projection: ``g - (g.r / r.r) r`` when ``g.r < 0`` (else ``g``); and whether it did."""
    dot = torch.dot(grad, ref)
    if dot < 0:
        return grad - ref * (dot / torch.dot(ref, ref)), True
    return grad, False


@register_method("agem")
class AGEM(Method):
    """Averaged Gradient Episodic Memory (A-GEM).

    Paper: Chaudhry et al., "Efficient Lifelong Learning with A-GEM", ICLR 2019,
    arXiv:1812.00420; official code: github.com/facebookresearch/agem. Avalanche 0.6
    ``AGEMPlugin`` is the reference here (parity-tested).

    Mechanism: after each experience a random subset of ``patterns_per_experience`` of its
    training samples enters an episodic memory (one group per experience). At every optimizer step,
    once the batch gradient ``g`` is computed, the reference gradient ``g_ref`` of the loss on a
    memory sample (``sample_size // n_groups`` samples of each group, taken in stored order and
    cycling) is computed; if ``g . g_ref < 0`` the update would increase the memory loss on
    average, and ``g`` is replaced by its projection ``g - (g . g_ref / g_ref . g_ref) g_ref``,
    whose dot product with ``g_ref`` is 0.

    Hooks used: ``setup`` (task-aware flag), ``on_experience_start`` (restart the memory
    sampling), ``on_after_backward`` (reference gradient and projection, in place on ``.grad``),
    ``on_experience_end`` (memory update), ``experience_report`` (share of projected steps),
    ``state_dict``/``load_state_dict``.

    Deviations from the paper/official code:
        - As Avalanche: the memory sample is taken in stored order, ``sample_size // n_groups``
          per group, cycling (``GroupBalancedInfiniteDataLoader`` without shuffling); the paper
          draws it at random from the memory. The memory takes its subset of an experience once
          the experience has been trained on, as Avalanche.
        - The subset is drawn with ``torch.randperm`` on the global RNG (reseeded per experience
          by the runner) instead of Python's ``random.shuffle``; same distribution.
        - The reference gradient is computed after the batch's backward, in ``on_after_backward``
          (as Mammoth's and the ER-ACE authors' A-GEM do), with ``torch.autograd.grad`` so ``.grad`` keeps
          the batch gradient; Avalanche computes it before the batch's forward pass. Same
          parameters, so the same gradient; batch-norm running statistics see the memory sample
          after the batch instead of before. It runs outside the trainer's autocast (full
          precision); with gradient accumulation, once per optimizer step, against the accumulated
          gradient.
        - Only trainable parameters enter the vectors (Avalanche adds zeros for the others: the
          same dot products). ``sample_size // n_groups`` is at least 1 (Avalanche fails on 0).
          Avalanche has no defaults; ``patterns_per_experience=250`` is the official code's
          permuted-MNIST memory (25 per class, 10 classes per task) and ``sample_size=256`` its
          ``EPS_MEM_BATCH_SIZE``.
        - Data parallel: the reference gradient is averaged over processes, so every replica
          projects the same reduced gradient the same way.
        - Task-incremental streams: memory samples' logits are masked to their own task's classes,
          as the trainer masks training outputs. Language-model objectives use the stream's own
          loss on the memory sample. On uint8 image streams the memory sample gets the stream's
          training augmentation and normalisation (as Avalanche's buffers apply the training
          transforms), drawn from a seed of its own per optimizer step: the experience's seed (the
          one the runner gives the global RNG) with the step's number among the experience's
          reference gradients (``methods._memory.memory_seed``). So every data-parallel process
          draws the same and the draws do not depend on other random draws.
    """

    Config = AGEMConfig
    mechanism_figures: ClassVar[tuple[str, ...]] = ("projected_fraction",)
    # 4096 takes the whole memory (4096 // n_groups >= patterns_per_experience = 250 for streams of up
    # to 17 experiences, every shipped track), so no larger value is another setting: closed there.
    search_space = with_base({"method.sample_size": grid(16, 64, 256, 1024, 4096, closed_max=True)})

    def __init__(self, config: AGEMConfig | None = None) -> None:
        super().__init__(config)
        self.buffers: list[Fields] = []  # one group (x, y, task) per experience, in stream order
        self.task_classes: dict[int, tuple[int, ...]] = {}
        self._task_aware = False
        self._inputs: Any = None  # the stream's uint8 image pipeline, if any
        self._pos: list[int] = []  # next stored index of each group
        self._steps = self._projected = 0
        self._seed = 0  # the experience's seed (memory augmentation)

    def setup(self, model: nn.Module, stream_info: StreamInfo) -> nn.Module:
        self._task_aware = stream_info.scenario_type == "task_incremental"
        self._inputs = getattr(stream_info, "inputs", None)
        return model

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        add_task_classes(self.task_classes, exp.task_id, exp.classes)
        self._pos = [0] * len(self.buffers)
        self._steps = self._projected = 0
        self._seed = experience_seed()

    def on_after_backward(self, model: nn.Module) -> None:
        if not self.buffers:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        ref = self.reference_gradient(model, params)
        grad = flat_grads([p.grad for p in params], params)
        new, projected = project(grad, ref)
        self._steps += 1
        if not projected:
            return
        self._projected += 1
        offset = 0
        with torch.no_grad():
            for p in params:
                n = p.numel()
                if p.grad is not None:
                    p.grad.copy_(new[offset : offset + n].view_as(p))
                offset += n

    def reference_gradient(self, model: nn.Module, params: list[nn.Parameter]) -> Tensor:
        """Flat gradient of the loss on the next memory sample (averaged over processes); its
        augmentation (uint8 image streams) is drawn from the seed of the experience's step
        ``self._steps`` (the reference gradients so far)."""
        device = params[0].device if params else torch.device("cpu")
        mem = self.memory_sample()
        batch = self.objective.compact(Batch(mem["x"].to(device), mem["y"].to(device), mem["task"].to(device)))
        out = model(training_inputs(self._inputs, batch.x, memory_seed(self._seed, self._steps)))
        if self.objective.class_logits and self._task_aware:
            out = mask_to_tasks(out, batch.task, self.task_classes)  # type: ignore[arg-type]
        grads = torch.autograd.grad(self.objective.loss(out, batch), params, allow_unused=True)
        ref = flat_grads(list(grads), params)
        world = world_info()[1]
        return sum_across_processes(ref) / world if world > 1 else ref

    def memory_sample(self) -> Fields:
        """``sample_size // n_groups`` stored samples of each group, in stored order, cycling."""
        per = max(1, self.config.sample_size // len(self.buffers))
        parts = []
        for i, group in enumerate(self.buffers):
            start = self._pos[i] if self._pos[i] < len(group["y"]) else 0
            stop = min(start + per, len(group["y"]))
            parts.append({k: t[start:stop] for k, t in group.items()})
            self._pos[i] = stop
        return {k: torch.cat([p[k] for p in parts]) for k in ("x", "y", "task")}

    def on_experience_end(self, exp: Experience, model: nn.Module) -> None:
        add_task_classes(self.task_classes, exp.task_id, exp.classes)  # the memory's heads
        n, k = len(exp.train), self.config.patterns_per_experience
        sel = torch.randperm(n)[:k] if n > k else torch.arange(n)
        if len(sel) == 0:
            return
        y = exp.train.y
        task = exp.train.task if exp.train.task is not None else torch.full_like(y, exp.task_id)
        self.buffers.append({"x": exp.train.x[sel], "y": y[sel], "task": task[sel]})

    def experience_report(self) -> dict[str, Any]:
        return {"projected_fraction": self._projected / self._steps if self._steps else 0.0,
                "projected_steps": self._projected, "memory_size": sum(len(b["y"]) for b in self.buffers)}

    def state_dict(self) -> dict[str, Any]:
        return {"buffers": list(self.buffers), "pos": list(self._pos),
                "task_classes": [[t, list(c)] for t, c in self.task_classes.items()],
                "steps": self._steps, "projected": self._projected}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffers = [dict(b) for b in state["buffers"]]
        self._pos = [int(p) for p in state["pos"]]
        self.task_classes = {int(t): tuple(int(c) for c in v) for t, v in state["task_classes"]}
        self._steps, self._projected = int(state["steps"]), int(state["projected"])

"""Experience Replay with Asymmetric Cross-Entropy (ER-ACE): new data competes only among its own
classes, replayed data among all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.protocol import Method
from clbench.registry import register_method
from clbench.search import grid, with_base
from clbench.streams import Batch, Experience, StreamInfo
from methods._memory import (
    Fields,
    MemoryPasses,
    ReservoirMemory,
    add_task_classes,
    experience_seed,
    mask_to_tasks,
    memory_seed,
    training_inputs,
)


@dataclass(frozen=True)
class ERACEConfig:
    """Options of :class:`ERACE`.

    Attributes:
        mem_size: number of samples the memory holds at most.
        batch_size_mem: memory samples replayed with each training batch; 0 = the training batch
            size (the first training batch of the experience).
        storage: ``class_balanced`` (one reservoir per class, Avalanche's ``ER_ACE`` buffer) or
            ``reservoir`` (uniform sample of everything seen, the paper's buffer).
        shuffle_memory: visit the memory in a fresh random order each pass (False: stored order).
    """

    mem_size: int = 200
    batch_size_mem: int = 10
    storage: Literal["class_balanced", "reservoir"] = "class_balanced"
    shuffle_memory: bool = True

    def __post_init__(self) -> None:
        if self.mem_size < 0:
            raise ValueError(f"mem_size must be >= 0, got {self.mem_size}")
        if self.batch_size_mem < 0:
            raise ValueError(f"batch_size_mem must be >= 0, got {self.batch_size_mem}")


def asymmetric_ce(outputs: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy over the classes present in ``y`` only (the other logits are left out).

    Avalanche's ``cross_entropy_with_oh_targets`` arithmetic (max-shifted softmax, then its log),
    with the one-hot product taken as a gather of the target column: the same value, without
    Avalanche's ``0 * log(0) = NaN`` when a non-target probability underflows.
    """
    present = torch.unique(y)
    out = outputs[:, present]
    z = out - torch.max(out, dim=1, keepdim=True)[0]
    num = torch.exp(z)
    softmax = num / torch.sum(num, dim=1, keepdim=True)
    target = torch.searchsorted(present, y)
    return -softmax.gather(1, target[:, None]).log().squeeze(1).mean()


@register_method("er_ace")
class ERACE(Method):
    """Experience Replay with Asymmetric Cross-Entropy (ER-ACE).

    Paper: Caccia et al., "New Insights on Reducing Abrupt Representation Change in Online
    Continual Learning", ICLR 2022, arXiv:2104.05025; official code: github.com/pclucas14/AML
    (``methods/er_ace.py``). Avalanche 0.6 ``ER_ACE`` (its non-online version) is the reference
    here (parity-tested).

    Mechanism: a memory (class-balanced by default) is offered each experience's data at the
    experience's *start*. From the second experience on, each training batch comes with ``batch_size_mem``
    memory samples forwarded separately, and the loss is
    ``(CE(f(x_mem), y_mem) + CE_present(f(x), y)) / 2``: replayed samples use the ordinary
    cross-entropy over all classes, while the current batch's cross-entropy covers only the classes
    present in that batch, so new classes do not push old ones' logits down. On the first
    experience the loss is plain cross-entropy.

    Hooks used: ``setup`` (task-aware flag), ``on_experience_start`` (memory update, new pass),
    ``loss`` (memory forward + asymmetric loss), ``on_after_step`` (counts optimizer steps, which
    name the memory augmentation's draws), ``experience_report``,
    ``state_dict``/``load_state_dict``.

    Deviations from the paper/official code:
        - As Avalanche (non-online ``ER_ACE``): the whole experience enters the memory before its
          training (the paper adds each incoming batch after its step), so replayed minibatches may
          hold current-experience samples; replay starts with the second experience.
        - As Avalanche: the current batch's loss unmasks the classes present in the batch only; the
          official code also unmasks the not-yet-seen classes (``seen_so_far.max():``). The two
          terms are averaged (``/ 2``); Mammoth's implementation sums them (for SGD, a learning
          rate twice as large).
        - As Avalanche: class-balanced memory by default (``storage=reservoir`` gives the paper's
          reservoir buffer); defaults ``mem_size=200, batch_size_mem=10`` are Avalanche's.
        - The memory is visited in passes (a new random order each pass, incomplete last minibatch
          dropped, passes running on across epochs), as Avalanche's cycled ``DataLoader``; the
          order comes from ``torch.randperm`` on the global RNG (reseeded per experience by the
          runner). ``batch_size_mem=0`` takes the size of the experience's first training batch.
        - The present-class cross-entropy takes the target column by a gather instead of
          Avalanche's one-hot product: same value, no NaN when another class's probability
          underflows to 0.
        - Task-incremental streams: replayed samples' logits are masked to their own task's classes
          (as the trainer masks the current batch's).
        - Classification objectives only. Memory samples are forwarded inside ``loss``, so the
          run's ``forward_samples`` counter does not include them; on uint8 image streams they get
          the stream's training augmentation and normalisation there (as Avalanche's buffer
          applies the training transforms), drawn from a seed of their own per training batch: the
          experience's seed (the one the runner gives the global RNG) with the batch's optimizer
          step and micro-batch numbers (``methods._memory.memory_seed``). So the draws are the
          same in every data-parallel process and do not depend on other random draws; they are
          not the trainer's own draws for the batch (that seed is not passed to methods).
    """

    Config = ERACEConfig
    objectives: ClassVar[frozenset[str]] = frozenset({"classification"})
    search_space = with_base({"method.batch_size_mem": grid(10, 0)})

    def __init__(self, config: ERACEConfig | None = None) -> None:
        super().__init__(config)
        self.memory = ReservoirMemory(self.config.mem_size, self.config.storage == "class_balanced")
        self.passes = MemoryPasses(self.config.shuffle_memory)
        self.task_classes: dict[int, tuple[int, ...]] = {}
        self._task_aware = False
        self._inputs: Any = None  # the stream's uint8 image pipeline, if any
        self._mem: Fields = {}
        self._replay = False  # the running experience replays (not the first one)
        self._bsm = 0  # memory minibatch size of the running experience (0: not known yet)
        self._steps = 0
        self._seed = 0  # the experience's seed (memory augmentation)
        self._opt_steps = self._micro = 0  # optimizer steps, micro-batches of the running step

    def setup(self, model: nn.Module, stream_info: StreamInfo) -> nn.Module:
        self._task_aware = stream_info.scenario_type == "task_incremental"
        self._inputs = getattr(stream_info, "inputs", None)
        return model

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        add_task_classes(self.task_classes, exp.task_id, exp.classes)
        y = exp.train.y
        task = exp.train.task if exp.train.task is not None else torch.full_like(y, exp.task_id)
        self.memory.update({"x": exp.train.x, "y": y, "task": task})
        self._mem = self.memory.tensors()
        self.passes.reset()
        self._replay, self._bsm, self._steps = exp.index > 0, self.config.batch_size_mem, 0
        self._seed, self._opt_steps, self._micro = experience_seed(), 0, 0

    def loss(self, model: nn.Module, batch: Batch, outputs: Tensor, base_loss: Tensor) -> Tensor:
        self._bsm = self._bsm or len(batch)
        micro, self._micro = self._micro, self._micro + 1
        size = len(self._mem["y"]) if self._mem else 0
        if not self._replay or size < self._bsm or batch.y is None:
            return base_loss
        dev = batch.x.device
        if self._mem["x"].device != dev:
            self._mem = {k: t.to(dev) for k, t in self._mem.items()}
        idx = self.passes.next(size, self._bsm).to(dev)
        seed = memory_seed(self._seed, self._opt_steps, micro)
        mem_out = model(training_inputs(self._inputs, self._mem["x"][idx], seed))
        if self._task_aware:
            mem_out = mask_to_tasks(mem_out, self._mem["task"][idx], self.task_classes)
        self._steps += 1
        loss_buffer = F.cross_entropy(mem_out.float(), self._mem["y"][idx])
        return (loss_buffer + asymmetric_ce(outputs.float(), batch.y)) / 2

    def on_after_step(self, model: nn.Module) -> None:
        self._opt_steps, self._micro = self._opt_steps + 1, 0

    def experience_report(self) -> dict[str, Any]:
        return {"memory_size": len(self.memory), "replay_steps": self._steps}

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory.state_dict(), "passes": self.passes.state_dict(),
                "task_classes": [[t, list(c)] for t, c in self.task_classes.items()],
                "replay": self._replay, "bsm": self._bsm, "steps": self._steps,
                "optimizer_steps": self._opt_steps, "micro": self._micro}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory.load_state_dict(state["memory"])
        self._mem = self.memory.tensors()
        self.passes.load_state_dict(state["passes"])
        self.task_classes = {int(t): tuple(int(c) for c in v) for t, v in state["task_classes"]}
        self._replay, self._bsm, self._steps = bool(state["replay"]), int(state["bsm"]), int(state["steps"])
        # a state saved before these counters were kept: counted from 0
        self._opt_steps, self._micro = int(state.get("optimizer_steps", 0)), int(state.get("micro", 0))

"""Experience replay: a fixed-size memory of past samples appended to every training batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from clbench.protocol import Method
from clbench.registry import register_method
from clbench.search import grid, with_base
from clbench.streams import Batch, Experience
from methods._memory import Fields, ReservoirMemory

Storage = Literal["reservoir", "class_balanced", "experience_balanced"]


@dataclass(frozen=True)
class ReplayConfig:
    """Options of :class:`Replay`.

    Attributes:
        mem_size: number of samples the memory holds at most.
        storage: ``reservoir`` (uniform sample of everything seen), ``class_balanced`` (one
            reservoir per class, capacity split equally over seen classes) or
            ``experience_balanced`` (one reservoir per experience; Avalanche ``ReplayPlugin``'s
            default).
        batch_size_mem: memory samples appended to each batch; 0 = the training batch size
            (the largest training batch seen in the experience).
        shuffle_memory: visit the memory in a fresh random order each pass (False: stored order).
    """

    mem_size: int = 200
    storage: Storage = "reservoir"
    batch_size_mem: int = 0
    shuffle_memory: bool = True

    def __post_init__(self) -> None:
        if self.mem_size < 0:
            raise ValueError(f"mem_size must be >= 0, got {self.mem_size}")
        if self.batch_size_mem < 0:
            raise ValueError(f"batch_size_mem must be >= 0, got {self.batch_size_mem}")


@register_method("replay")
class Replay(Method):
    """Experience replay with a fixed-size memory and balanced minibatches.

    Paper: Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", arXiv:1902.10486
    (reservoir-sampled experience replay); Avalanche 0.6 ``ReplayPlugin`` is the reference.

    Mechanism: ``transform_batch`` appends a minibatch of ``batch_size_mem`` memory samples to
    each training batch (data first, memory after, one cross-entropy over both), visiting the
    memory in passes like Avalanche's ``ReplayDataLoader``: a new (shuffled) pass starts when
    the memory is exhausted and at each pass over the experience's data (epoch). After an
    experience the memory is updated by reservoir sampling: each new sample gets a uniform
    random weight and each group keeps its highest-weight samples, old and new together (the
    replay family's shared :class:`methods._memory.ReservoirMemory`; with ``experience_balanced``
    one group per experience, an experience without samples still taking its share).

    Hooks used: ``on_experience_start`` (memory snapshot for the experience),
    ``transform_batch`` (appends memory samples), ``on_experience_end`` (memory update),
    ``state_dict``/``load_state_dict``.

    Deviations from the paper/official code:
        - Default storage is ``reservoir`` (Avalanche's ``ReservoirSamplingBuffer``); Avalanche's
          ``ReplayPlugin`` defaults to ``experience_balanced``. Updates draw the same
          ``torch.rand`` weights in the same order as Avalanche's buffers, so the memory contents
          are identical given the same RNG state (parity-tested).
        - ``batch_size_mem=0`` infers the training batch size from the largest batch seen in
          the experience (Avalanche reads ``train_mb_size``); memory order uses the global torch
          RNG (reseeded per experience by the runner) instead of a DataLoader sampler.
        - The memory is updated once per experience, at its end (as Avalanche), not after every
          batch as in the paper's online setting: an experience never replays its own samples.
        - Task-incremental streams: replayed samples keep their task ids, and the trainer masks
          each sample's logits to its own task's classes.
    """

    Config = ReplayConfig
    shardable = True
    search_space = with_base({"method.storage": grid("reservoir", "class_balanced")})

    def __init__(self, config: ReplayConfig | None = None) -> None:
        super().__init__(config)
        self.memory = ReservoirMemory(self.config.mem_size, by_class=self.config.storage == "class_balanced")
        self._mem: Fields = {}
        self._order: Tensor | None = None
        self._pos = self._consumed = self._n_train = self._bs = 0

    @property
    def groups(self) -> dict[int, Fields]:
        """The memory's groups (x, y, task and reservoir weights ``w``, sorted descending), by key:
        0 (``reservoir``), the class (``class_balanced``) or the experience (``experience_balanced``)."""
        return self.memory.groups

    @property
    def memory_size(self) -> int:
        """Number of samples in the memory."""
        return len(self.memory)

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        self._mem = self.memory.tensors() if self.memory_size else {}
        self._order, self._pos, self._consumed = None, 0, 0
        self._n_train, self._bs = len(exp.train), 0

    def transform_batch(self, batch: Batch) -> Batch:
        if not self._mem:
            return batch
        self._bs = max(self._bs, len(batch))
        idx = self._next_indices(self.config.batch_size_mem or self._bs)
        self._consumed += len(batch)
        if self._consumed >= self._n_train:  # end of a pass over the data: restart the memory
            self._order, self._consumed = None, 0
        dev = batch.x.device
        if self._mem["x"].device != dev:
            self._mem = {k: t.to(dev) for k, t in self._mem.items()}
        idx = idx.to(dev)
        y = None if batch.y is None else torch.cat([batch.y, self._mem["y"][idx]])
        task = None if batch.task is None else torch.cat([batch.task, self._mem["task"][idx]])
        return Batch(torch.cat([batch.x, self._mem["x"][idx]]), y, task)

    def _next_indices(self, n: int) -> Tensor:
        size = len(self._mem["y"])
        if self._order is None or self._pos >= size:
            self._order = torch.randperm(size) if self.config.shuffle_memory else torch.arange(size)
            self._pos = 0
        idx = self._order[self._pos : self._pos + n]
        self._pos += len(idx)
        return idx

    def on_experience_end(self, exp: Experience, model: nn.Module) -> None:
        y = exp.train.y
        # every sample is stored with the experience's task id
        new = {"x": exp.train.x, "y": y, "task": torch.full_like(y, exp.task_id)}
        self.memory.update(new, group=exp.index if self.config.storage == "experience_balanced" else 0)

    def state_dict(self) -> dict[str, Any]:
        return self.memory.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory.load_state_dict(state)

"""Memory machinery shared by the replay-family baselines: reservoir buffers, passes over a memory,
per-task class masks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from clbench.trainer import mask_by_task
from methods.replay import group_lengths

Fields = dict[str, Tensor]  # one tensor per stored field (x, y, task, logits...), one row per sample


class ReservoirMemory:
    """A fixed-size memory of samples, updated as Avalanche 0.6's storage policies do.

    ``by_class=False``: one reservoir over everything seen (``ReservoirSamplingBuffer``);
    ``by_class=True``: one reservoir per class, the capacity split equally over the classes seen so
    far, classes in order of first appearance (``ClassBalancedBuffer(adaptive_size=True)``). Each new
    sample gets a uniform random weight (``torch.rand`` on the global RNG, drawn per class in order
    of first appearance, as Avalanche), and each group keeps its highest-weight samples, old and new
    together, sorted by weight (descending). The stored order is the groups' insertion order, each
    group sorted: Avalanche's ``buffer`` concatenates its groups the same way.

    Args:
        max_size: samples held at most.
        by_class: one reservoir per class (True) or one over everything (False).
    """

    def __init__(self, max_size: int, by_class: bool) -> None:
        self.max_size, self.by_class = max_size, by_class
        self.groups: dict[int, Fields] = {}  # each with its reservoir weights under "w"

    def __len__(self) -> int:
        return sum(len(g["w"]) for g in self.groups.values())

    def update(self, new: Fields) -> None:
        """Offer the samples ``new`` (``y`` among the fields) to the memory."""
        if len(new["y"]) == 0:
            return
        y = new["y"]
        parts = {int(c): y == c for c in dict.fromkeys(y.tolist())} if self.by_class else {0: None}
        for key, sel in parts.items():
            self._add(key, new if sel is None else {k: t[sel] for k, t in new.items()})
        caps = group_lengths(self.max_size, len(self.groups))
        for key, cap in zip(sorted(self.groups), caps, strict=True):
            self.groups[key] = {k: t[:cap] for k, t in self.groups[key].items()}

    def _add(self, key: int, new: Fields) -> None:
        new = {**new, "w": torch.rand(len(new["y"]))}
        old = self.groups.get(key)
        if old is not None:
            new = {k: torch.cat([new[k], old[k]]) for k in new}
        order = new["w"].sort(descending=True).indices
        self.groups[key] = {k: t[order] for k, t in new.items()}

    def tensors(self) -> Fields:
        """Every stored sample, groups concatenated in insertion order (weights left out)."""
        if not self.groups:
            return {}
        names = [k for k in next(iter(self.groups.values())) if k != "w"]
        return {k: torch.cat([g[k] for g in self.groups.values()]) for k in names}

    def state_dict(self) -> dict[str, Any]:
        return {"groups": [{"key": k, **g} for k, g in self.groups.items()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.groups = {int(g["key"]): {n: t for n, t in g.items() if n != "key"} for g in state["groups"]}


class MemoryPasses:
    """Minibatches of memory indices in passes, as a cycled DataLoader with ``drop_last=True``.

    Each pass visits the memory in a fresh random order (``torch.randperm`` on the global RNG) or
    in stored order; a new pass starts when fewer than the requested number of indices remain.
    """

    def __init__(self, shuffle: bool) -> None:
        self.shuffle = shuffle
        self.order: Tensor | None = None
        self.pos = 0

    def reset(self) -> None:
        self.order, self.pos = None, 0

    def next(self, size: int, n: int) -> Tensor:
        """The next ``n`` indices into a memory of ``size`` samples (``n <= size``)."""
        if self.order is None or len(self.order) != size or self.pos + n > size:
            self.order = torch.randperm(size) if self.shuffle else torch.arange(size)
            self.pos = 0
        idx = self.order[self.pos : self.pos + n]
        self.pos += n
        return idx

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order, "pos": self.pos}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.order, self.pos = state["order"], int(state["pos"])


def add_task_classes(table: dict[int, tuple[int, ...]], task: int, classes: Sequence[int]) -> None:
    """Record that ``classes`` belong to task ``task`` (union with what is known)."""
    table[task] = tuple(sorted(set(table.get(task, ())) | {int(c) for c in classes}))


def task_table(table: Mapping[int, Sequence[int]], n_classes: int) -> Tensor:
    """(n_tasks, n_classes) booleans from a task -> classes mapping (the trainer's form,
    :func:`clbench.trainer.task_class_mask`)."""
    keep = torch.zeros(max(table, default=0) + 1, n_classes, dtype=torch.bool)
    for t, classes in table.items():
        keep[t, list(classes)] = True
    return keep


def task_keep(task: Tensor, table: Mapping[int, Sequence[int]], n_classes: int) -> Tensor:
    """(N, n_classes) booleans: the classes of each sample's task (a task-incremental head)."""
    return task_table(table, n_classes).to(task.device)[task]


def mask_to_tasks(logits: Tensor, task: Tensor, table: Mapping[int, Sequence[int]]) -> Tensor:
    """Logits outside each sample's task classes set to the dtype's lowest value: the trainer's
    own task-incremental masking (:func:`clbench.trainer.mask_by_task`)."""
    return mask_by_task(logits, task_table(table, logits.shape[-1]), task)


def training_inputs(inputs: Any, x: Tensor) -> Tensor:
    """Stored samples as the trainer feeds a training batch, for a method's own forward pass.

    ``inputs`` is the stream's image pipeline (``StreamInfo.inputs``; None for streams stored as
    floats, whose inputs are used as they are): uint8 images get its training augmentation, drawn
    from a seed taken from the global RNG (reseeded per experience, restored on resume), and its
    normalisation, as the trainer's batches after ``transform_batch`` do.
    """
    if inputs is None or x.dtype != torch.uint8:
        return x
    seed = int(torch.randint(0, 2**62, (1,)))
    out: Tensor = inputs.train(x, seed, len(x))
    return out

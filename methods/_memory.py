"""Memory machinery shared by the replay-family baselines: the reservoir memory (the one
implementation every replay-family method stores its samples in), passes over a memory, per-task
class masks, the training pipeline of stored image samples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from clbench.loops import derive_seed
from clbench.trainer import mask_by_task

Fields = dict[str, Tensor]  # one tensor per stored field (x, y, task, logits...), one row per sample


def group_lengths(max_size: int, n_groups: int) -> list[int]:
    """Equal split of ``max_size`` over groups; the remainder goes to the first groups."""
    lengths = [max_size // n_groups] * n_groups
    for i in range(max_size - sum(lengths)):
        lengths[i] += 1
    return lengths


class ReservoirMemory:
    """A fixed-size memory of samples, updated as Avalanche 0.6's storage policies do.

    ``by_class=False``: the samples of an update join one group, the one :meth:`update` names
    (always the same: one reservoir over everything seen, ``ReservoirSamplingBuffer``; one per
    experience: ``ExperienceBalancedBuffer``); ``by_class=True``: one reservoir per class, classes in
    order of first appearance (``ClassBalancedBuffer(adaptive_size=True)``). The capacity is split
    equally over the groups (:func:`group_lengths`, in the order of their keys). Each new sample
    gets a uniform random weight (``torch.rand`` on the global RNG, one draw per group of the
    update, in that order, as Avalanche), and each group keeps its highest-weight samples, old and
    new together, sorted by weight (descending). The stored order is the groups' insertion order,
    each group sorted: Avalanche's ``buffer`` concatenates its groups the same way.

    An update with no samples draws nothing; without ``by_class`` it still registers its group
    (empty), which then takes its share of the capacity, as Avalanche's ``ExperienceBalancedBuffer``
    counts every experience.

    Args:
        max_size: samples held at most.
        by_class: one reservoir per class (True) or groups named by :meth:`update` (False).
    """

    def __init__(self, max_size: int, by_class: bool = False) -> None:
        self.max_size, self.by_class = max_size, by_class
        self.groups: dict[int, Fields] = {}  # each with its reservoir weights under "w"

    def __len__(self) -> int:
        return sum(len(g["w"]) for g in self.groups.values())

    def update(self, new: Fields, group: int = 0) -> None:
        """Offer the samples ``new`` (``y`` among the fields) to the memory, into group ``group``
        (ignored with ``by_class``: each class is its own group)."""
        y = new["y"]
        parts = {int(c): y == c for c in dict.fromkeys(y.tolist())} if self.by_class else {group: None}
        for key, sel in parts.items():
            self._add(key, new if sel is None else {k: t[sel] for k, t in new.items()})
        if not self.groups:
            return
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
        return {"groups": [{"key": k, **{n: t.cpu() for n, t in g.items()}} for k, g in self.groups.items()]}

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


def memory_seed(base: int, *counters: int) -> int:
    """The seed of the training augmentation of stored samples a method forwards itself (outside the
    trainer's batch), for the global batch that ``counters`` name (optimizer step, micro-batch...).

    ``base`` is the running experience's :func:`experience_seed`; the result is
    :func:`clbench.loops.derive_seed` of it and the counters: the same in every data-parallel
    process, and independent of any other use of the random generators (none is drawn from).
    """
    return derive_seed(base, *counters)


def experience_seed() -> int:
    """The seed the global RNG was last seeded with (``torch.initial_seed()``; reading it draws
    nothing): read at an experience's start, the seed the runner gives that experience
    (``derive_seed(seed, experience)``, the same in every data-parallel process)."""
    return torch.initial_seed()


def training_inputs(inputs: Any, x: Tensor, seed: int) -> Tensor:
    """Stored samples as the trainer feeds a training batch, for a method's own forward pass.

    ``inputs`` is the stream's image pipeline (``StreamInfo.inputs``; None for streams stored as
    floats, whose inputs are used as they are): uint8 images get its training augmentation, drawn
    from ``seed`` (:func:`memory_seed`), and its normalisation, as the trainer's batches after
    ``transform_batch`` do (``ImageInputs.train`` of the samples as a batch of their own).
    """
    if inputs is None or x.dtype != torch.uint8:
        return x
    out: Tensor = inputs.train(x, seed, len(x))
    return out

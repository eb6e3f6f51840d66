"""Owns the tensor containers every part of a run passes around: ``Split`` (a labelled set of
inputs) and ``Batch`` (a minibatch whose labels or task ids may be hidden).

They live apart from :mod:`clbench.streams` so that objectives, which judge batches, can be
declared on a stream without an import cycle.

A split's inputs may be images stored on disk (:class:`clbench.lazy_images.LazyImages`, a scenario
built with ``scenario.storage=disk``) standing in for the uint8 tensor: indexing it decodes those
rows, :meth:`Split.subset` keeps it on disk, and :meth:`Split.concat` gives one on disk too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from clbench.lazy_images import lazy_images


@dataclass(frozen=True)
class Split:
    """Inputs ``x`` (N, ...), integer labels ``y`` (N,) and, optionally, per-sample task ids
    ``task`` (N,) for training data mixed from several tasks (else the experience's task id).
    ``x`` may be a :class:`~clbench.lazy_images.LazyImages` (images read from disk on access)."""

    x: Tensor
    y: Tensor
    task: Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"split has {len(self.x)} inputs but {len(self.y)} labels")
        if self.task is not None and len(self.task) != len(self.y):
            raise ValueError(f"split has {len(self.y)} labels but {len(self.task)} task ids")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: Tensor) -> Split:
        lazy = lazy_images(self.x)
        x = self.x[idx] if lazy is None else cast(Tensor, lazy.take(idx))  # images on disk stay there
        return Split(x, self.y[idx], None if self.task is None else self.task[idx])

    def tagged(self, task_id: int) -> Split:
        """The same split with every sample's task id set to ``task_id``."""
        return Split(self.x, self.y, torch.full((len(self.y),), task_id, dtype=torch.long))

    @staticmethod
    def concat(splits: Sequence[Split]) -> Split:
        """Inputs and labels concatenated; task ids too when every split carries them. Inputs on disk
        concatenated with any others are on disk (``torch.cat`` of a LazyImages is one)."""
        tasks = [s.task for s in splits]
        task = torch.cat(tasks) if tasks and all(t is not None for t in tasks) else None  # type: ignore[arg-type]
        return Split(torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]), task)



@dataclass
class Batch:
    """A minibatch: inputs, labels (None when hidden) and task ids (None when hidden)."""

    x: Tensor
    y: Tensor | None
    task: Tensor | None = None

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Batch(mv(self.x), mv(self.y), mv(self.task))  # type: ignore[arg-type]

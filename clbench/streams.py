"""Owns the data model of a CL scenario: Split, Experience, Stream, StreamInfo and Batch.

Data stays as tensors end to end (no Dataset/DataLoader on the hot path). A ``Stream`` is an
ordered tuple of experiences; each has train/val/test splits, a task id and its class set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

ScenarioType = Literal["class_incremental", "domain_incremental", "task_incremental", "test_time"]
# test_time: unlabeled target domains seen once, online (each domain's data is its ``test`` split;
# the loop lives in clbench/tta.py and hides the labels from the method)
SCENARIO_TYPES: tuple[str, ...] = ("class_incremental", "domain_incremental", "task_incremental",
                                   "test_time")


@dataclass(frozen=True)
class Split:
    """Inputs ``x`` (N, ...), integer labels ``y`` (N,) and, optionally, per-sample task ids
    ``task`` (N,) for training data mixed from several tasks (else the experience's task id)."""

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
        return Split(self.x[idx], self.y[idx], None if self.task is None else self.task[idx])

    def tagged(self, task_id: int) -> Split:
        """The same split with every sample's task id set to ``task_id``."""
        return Split(self.x, self.y, torch.full((len(self.y),), task_id, dtype=torch.long))

    @staticmethod
    def concat(splits: Sequence[Split]) -> Split:
        """Inputs and labels concatenated; task ids too when every split carries them."""
        tasks = [s.task for s in splits]
        task = torch.cat(tasks) if tasks and all(t is not None for t in tasks) else None  # type: ignore[arg-type]
        return Split(torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]), task)


@dataclass(frozen=True)
class Experience:
    """One step of the stream."""

    index: int
    task_id: int
    classes: tuple[int, ...]
    train: Split
    val: Split
    test: Split


@dataclass(frozen=True)
class SourceData:
    """The source distribution of a foundation setting (what the pretrained model knows).

    ``train`` pretrains the foundation (and calibrates methods that declare
    ``needs_source_data``); ``test`` measures general capability before and after each experience.
    ``probe=False`` marks calibration-only data (e.g. unlabeled text beside a classification
    stream): no general-capability score is computed on it and no foundation is pretrained on it.
    """

    name: str
    train: Split
    val: Split
    test: Split
    probe: bool = True


@dataclass(frozen=True)
class ProbeTask:
    """A labelled task outside the stream for frozen-embedding probes (general capability).

    ``support`` gives the class centroids, ``query`` is scored against them
    (:mod:`clbench.probes`); labels are the probe task's own (0..k-1), not stream classes.
    """

    name: str
    support: Split
    query: Split


@dataclass(frozen=True)
class StreamInfo:
    """What a method may know about a stream before training (no data)."""

    name: str
    scenario_type: str
    n_experiences: int
    num_classes: int
    input_shape: tuple[int, ...]
    classes_per_experience: tuple[tuple[int, ...], ...]
    has_source: bool = False
    label_names: tuple[str, ...] = ()  # verbalised class names (``meta["label_names"]``), if any


@dataclass(frozen=True)
class Stream:
    """A built scenario: experiences plus provenance (VERSION, content hash)."""

    name: str
    version: str
    scenario_type: str
    experiences: tuple[Experience, ...]
    num_classes: int
    description: str = ""
    source: SourceData | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    probes: tuple[ProbeTask, ...] = ()  # general-capability probe tasks (not trained on)

    def __post_init__(self) -> None:
        if self.scenario_type not in SCENARIO_TYPES:
            raise ValueError(f"scenario_type {self.scenario_type!r} not in {SCENARIO_TYPES}")
        if not self.experiences:
            raise ValueError("a stream needs at least one experience")

    def __len__(self) -> int:
        return len(self.experiences)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.experiences[0].train.x.shape[1:])

    def info(self) -> StreamInfo:
        return StreamInfo(
            name=self.name,
            scenario_type=self.scenario_type,
            n_experiences=len(self),
            num_classes=self.num_classes,
            input_shape=self.input_shape,
            classes_per_experience=tuple(e.classes for e in self.experiences),
            has_source=self.source is not None,
            label_names=tuple(self.meta.get("label_names", ())),
        )

    def content_hash(self) -> str:
        """sha256 over every split's tensors, task ids and class sets (order-sensitive)."""
        h = hashlib.sha256()
        for e in self.experiences:
            h.update(f"{e.index}:{e.task_id}:{e.classes}".encode())
            for s in (e.train, e.val, e.test):
                _update(h, s)
        if self.source is not None:
            h.update(self.source.name.encode())
            for s in (self.source.train, self.source.val, self.source.test):
                _update(h, s)
        for p in self.probes:  # absent probes leave the hash as it was
            h.update(f"probe:{p.name}".encode())
            for s in (p.support, p.query):
                _update(h, s)
        return h.hexdigest()


def _update(h: Any, s: Split) -> None:
    for t in (s.x, s.y):
        c = t.detach().cpu().contiguous()
        h.update(str((tuple(c.shape), str(c.dtype))).encode())
        h.update(c.view(torch.uint8).numpy().tobytes() if c.numel() else b"")


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

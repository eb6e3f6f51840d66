"""Owns the data model of a CL scenario: Experience, Stream and StreamInfo (``Split`` and
``Batch`` are defined in :mod:`clbench.splits` and re-exported here).

Data stays as tensors end to end (no Dataset/DataLoader on the hot path), except images a scenario
stores on disk (:mod:`clbench.lazy_images`: decoded on access, and fed to the trainer through a
DataLoader). A ``Stream`` is an ordered tuple of experiences; each has train/val/test splits, a
task id and its class set. The stream carries the :class:`~clbench.objectives.Objective` its
outputs are trained and judged by, built by the scenario (classification unless the scenario says
otherwise).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from clbench.augment import ImageInputs
from clbench.lazy_images import lazy_images
from clbench.objectives import Objective
from clbench.splits import Batch, Split

__all__ = ["SCENARIO_TYPES", "Batch", "Experience", "ProbeTask", "ScenarioType", "SourceData", "Split",
           "Stream", "StreamInfo"]

ScenarioType = Literal["class_incremental", "domain_incremental", "task_incremental", "test_time"]
# test_time: unlabeled target domains seen once, online (each domain's data is its ``test`` split;
# the loop lives in clbench/tta.py and hides the labels from the method)
SCENARIO_TYPES: tuple[str, ...] = ("class_incremental", "domain_incremental", "task_incremental",
                                   "test_time")


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
    inputs: ImageInputs | None = None  # uint8 image streams: normalisation and augmentation


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
    objective: Objective = field(default_factory=Objective)  # loss and judging of the outputs
    # images stored as uint8: how they are normalised (every forward) and augmented (training);
    # see clbench/augment.py. None: the inputs are fed as stored
    inputs: ImageInputs | None = None

    def __post_init__(self) -> None:
        if self.scenario_type not in SCENARIO_TYPES:
            raise ValueError(f"scenario_type {self.scenario_type!r} not in {SCENARIO_TYPES}")
        recorded = self.meta.get("objective", Objective.name)
        if recorded != self.objective.name:  # meta is the provenance results.json records
            raise ValueError(f"stream {self.name!r} records objective {recorded!r} in meta but carries "
                             f"{self.objective.name!r}")
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
            inputs=self.inputs,
        )

    def content_hash(self) -> str:
        """sha256 over every split's tensors, task ids and class sets (order-sensitive).

        Images stored on disk are hashed as the tensor they stand for (the same hash as the
        stream held in memory): each split's images are decoded for it, once per split hashed
        (a test split shared by several experiences is decoded for each)."""
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
    lazy = lazy_images(s.x)
    if lazy is not None:  # the bytes the tensor would have, block by block
        h.update(str((tuple(lazy.shape), str(lazy.dtype))).encode())
        for block in lazy.chunks():
            h.update(block.numpy().tobytes())
    for t in (s.x, s.y) if lazy is None else (s.y,):
        c = t.detach().cpu().contiguous()
        h.update(str((tuple(c.shape), str(c.dtype))).encode())
        h.update(c.view(torch.uint8).numpy().tobytes() if c.numel() else b"")

"""Avalanche adapter: runs any Avalanche 0.6 benchmark object as a clbench :class:`Stream`.

:func:`from_avalanche` materialises an Avalanche benchmark (``train_stream``/``test_stream`` of
dataset experiences) into tensors: train experience i is matched with test experience i, the
validation split is carved out of train (stratified per class, fixed data seed, so it does not
depend on the run seed), and the task ids, class sets and scenario type are read from the
benchmark. The ``avalanche`` scenario builds one of ``avalanche.benchmarks.classic`` by name.

Provenance: the data are whatever the Avalanche benchmark yields (its own downloads, splits,
class order and transforms); ``Stream.meta`` records the Avalanche version, the benchmark class
and the original task labels, and the content hash covers every tensor. Conversion rules:

- items are ``(x, y, t)`` tuples (``(x, y)`` accepted, task label then taken from the
  experience); PIL images become float tensors with torchvision's ``to_tensor`` (C, H, W in
  [0, 1]); tensors/arrays are cast to float32 unchanged. No other transform is applied.
- by default both splits are read through the benchmark's **eval** transform group, so a random
  training augmentation is not frozen into the tensors (clbench has no augmentation stage);
  ``transform_group="train"`` reads train data through the train group instead.
- a benchmark with one complete test set (``complete_test_set_only``, e.g. ``ni_benchmark``)
  gives each experience the test samples of that experience's classes.

VERSION history: 1 = initial.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from clbench.errors import ConfigError, DataUnavailableError
from clbench.protocol import Scenario
from clbench.registry import register_scenario
from clbench.streams import SCENARIO_TYPES, Experience, Split, Stream
from scenarios._common import DATA_SEED, stratified_split

VERSION = "1"
OFFLINE_ALTERNATIVES = ("split_mnist", "permuted_mnist", "rotated_mnist", "split_digits")
_DOWNLOAD_HINTS = ("download", "not found", "urlopen", "name or service", "connection", "network")


@dataclass(frozen=True)
class _Part:
    """One materialised Avalanche experience dataset."""

    split: Split
    task_labels: frozenset[int]


def from_avalanche(
    benchmark: Any,
    scenario_type: str | None = None,
    name: str = "avalanche",
    val_fraction: float = 0.1,
    version: str = VERSION,
    transform_group: Literal["eval", "train"] = "eval",
) -> Stream:
    """Convert an Avalanche benchmark into a clbench stream.

    Args:
        benchmark: an Avalanche scenario with ``train_stream`` and ``test_stream``.
        scenario_type: one of :data:`clbench.streams.SCENARIO_TYPES`; ``None`` infers it
            (see :func:`infer_scenario_type`).
        name: the stream's name.
        val_fraction: fraction of each experience's train data moved to validation (per class).
        version: the stream's VERSION (bump it when the conversion changes).
        transform_group: the transform group train data is read through (test data always
            uses ``eval``).

    Returns:
        The stream; ``meta`` holds the Avalanche provenance.

    Raises:
        ValueError: mismatched train/test streams, an experience with several task labels,
            a bad ``val_fraction`` or an unknown ``scenario_type``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if scenario_type is not None and scenario_type not in SCENARIO_TYPES:
        raise ValueError(f"scenario_type {scenario_type!r} not in {SCENARIO_TYPES}")
    train_exps, test_exps = list(benchmark.train_stream), list(benchmark.test_stream)
    trains = [_materialize(e, transform_group) for e in train_exps]
    classes = [_classes_of(e, p.split) for e, p in zip(train_exps, trains, strict=True)]
    tests = _match_tests(test_exps, classes, len(trains))
    labels = [_single_task(p, i) for i, p in enumerate(trains)]
    kind = scenario_type or infer_scenario_type(labels, classes)
    exps = []
    for i, (tr, te, cls) in enumerate(zip(trains, tests, classes, strict=True)):
        train, val = _carve_validation(tr.split, val_fraction)
        task = _task_id(kind, labels, i)
        exps.append(Experience(i, task, cls, train, val, te.split))
    num_classes = 1 + max(int(p.split.y.max()) for p in (*trains, *tests) if len(p.split))
    meta = _provenance(benchmark, labels, transform_group)
    desc = f"Avalanche {type(benchmark).__name__} ({len(exps)} experiences) via clbench's adapter"
    return Stream(name, version, kind, tuple(exps), num_classes, desc, meta=meta)


def infer_scenario_type(task_labels: Sequence[int], classes: Sequence[Sequence[int]]) -> str:
    """The scenario type of a stream from its experiences' task labels and class sets.

    Distinct task labels -> ``task_incremental``; otherwise pairwise-disjoint class sets ->
    ``class_incremental``; otherwise (shared classes) ``domain_incremental``.
    """
    if len(set(task_labels)) > 1:
        return "task_incremental"
    seen: set[int] = set()
    for c in classes:
        if seen & set(c):
            return "domain_incremental"
        seen |= set(c)
    return "class_incremental"


def _materialize(exp: Any, group: str) -> _Part:
    ds = exp.dataset
    ds = ds.eval() if group == "eval" and hasattr(ds, "eval") else ds
    default_task = _experience_task(exp)
    xs: list[Tensor] = []
    ys: list[int] = []
    tasks: set[int] = set()
    for i in range(len(ds)):
        item = ds[i]
        xs.append(_as_float_tensor(item[0]))
        ys.append(int(item[1]))
        tasks.add(int(item[2]) if len(item) > 2 else default_task)
    if not xs:
        raise ValueError(f"Avalanche experience {exp.current_experience} has an empty dataset")
    return _Part(Split(torch.stack(xs), torch.tensor(ys, dtype=torch.long)), frozenset(tasks))


def _as_float_tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x.float()
    if hasattr(x, "getbands"):  # a PIL image
        import torchvision.transforms.functional as TF

        return TF.to_tensor(x)
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


def _experience_task(exp: Any) -> int:
    labels = getattr(exp, "task_labels", None) or [0]
    return int(labels[0])


def _classes_of(exp: Any, split: Split) -> tuple[int, ...]:
    declared = getattr(exp, "classes_in_this_experience", None)
    source = declared if declared is not None else split.y.unique().tolist()
    return tuple(sorted(int(c) for c in source))


def _match_tests(test_exps: list[Any], classes: list[tuple[int, ...]], n: int) -> list[_Part]:
    if len(test_exps) == n:
        return [_materialize(e, "eval") for e in test_exps]
    if len(test_exps) == 1:  # one complete test set: experience i gets its classes' samples
        full = _materialize(test_exps[0], "eval")
        return [_Part(full.split.subset(torch.isin(full.split.y, torch.tensor(c))), full.task_labels)
                for c in classes]
    raise ValueError(f"the benchmark has {n} train but {len(test_exps)} test experiences; "
                     "clbench needs one test experience per train experience (or one in all)")


def _single_task(part: _Part, index: int) -> int:
    if len(part.task_labels) != 1:
        raise ValueError(f"Avalanche experience {index} mixes task labels "
                         f"{sorted(part.task_labels)}; clbench needs one task per experience")
    return next(iter(part.task_labels))


def _task_id(kind: str, labels: Sequence[int], index: int) -> int:
    if kind != "task_incremental":
        return 0
    return labels[index] if len(set(labels)) == len(labels) else index


def _carve_validation(train: Split, val_fraction: float) -> tuple[Split, Split]:
    val_idx, train_idx = stratified_split(train.y.numpy(), [val_fraction], seed=DATA_SEED + 1)
    return train.subset(torch.as_tensor(train_idx)), train.subset(torch.as_tensor(val_idx))


def _provenance(benchmark: Any, labels: Sequence[int], group: str) -> dict[str, Any]:
    import avalanche

    return {"source": "avalanche", "avalanche_version": avalanche.__version__,
            "benchmark_class": type(benchmark).__name__, "task_labels": list(labels),
            "transform_group": group}


def classic_benchmarks() -> dict[str, Callable[..., Any]]:
    """The benchmark factories of ``avalanche.benchmarks.classic`` by name (functions only)."""
    import avalanche.benchmarks.classic as classic

    return {n: obj for n, obj in vars(classic).items()
            if n[:1].isupper() and inspect.isfunction(obj)
            and obj.__module__.startswith("avalanche.benchmarks.classic")}


def make_benchmark(name: str, kwargs: dict[str, Any]) -> Any:
    """Construct ``avalanche.benchmarks.classic.<name>(**kwargs)``.

    Raises:
        ConfigError: unknown ``name`` (lists the valid ones) or arguments it does not accept.
        DataUnavailableError: its data cannot be downloaded (offline) and is not on disk.
    """
    factories = classic_benchmarks()
    if name not in factories:
        raise ConfigError("scenario.benchmark", name, sorted(factories))
    factory = factories[name]
    signature = inspect.signature(factory)
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        accepted = ", ".join(signature.parameters)
        raise ConfigError("scenario.kwargs", kwargs,
                          f"keyword arguments of {name}: {accepted} ({exc})") from exc
    try:
        return factory(**kwargs)
    except Exception as exc:
        if _is_download_failure(exc):
            raise DataUnavailableError(_offline_message(name, exc)) from exc
        raise


def _is_download_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen).lower()
        if isinstance(seen, OSError) or any(h in text for h in _DOWNLOAD_HINTS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _offline_message(name: str, exc: BaseException) -> str:
    detail = " ".join(str(exc).split())
    return (f"Avalanche benchmark {name!r} could not get its data ({type(exc).__name__}: "
            f"{detail}); this machine is probably offline. Put the dataset files under "
            f"scenario.kwargs.dataset_root, or use an offline scenario: "
            f"{', '.join(OFFLINE_ALTERNATIVES)}")


@dataclass(frozen=True)
class AvalancheConfig:
    """Options of the ``avalanche`` scenario.

    Attributes:
        benchmark: a factory name in ``avalanche.benchmarks.classic`` (``SplitMNIST``...).
        kwargs: keyword arguments of that factory (``n_experiences``, ``seed``,
            ``dataset_root``...). The default fixes ``seed`` so the class order is reproducible.
        scenario_type: ``""`` infers it from task labels and class sets.
        val_fraction: fraction of each experience's train data moved to validation.
    """

    benchmark: str = "SplitMNIST"
    kwargs: dict[str, Any] = field(default_factory=lambda: {"n_experiences": 5, "seed": 0})
    scenario_type: Literal["", "class_incremental", "domain_incremental", "task_incremental"] = ""
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("scenario.val_fraction", self.val_fraction, "a value in [0, 1)")


@register_scenario("avalanche")
class AvalancheBenchmark(Scenario):
    """Any ``avalanche.benchmarks.classic`` benchmark as a stream (needs its data: downloads)."""

    Config = AvalancheConfig
    VERSION = VERSION

    def build(self) -> Stream:
        c: AvalancheConfig = self.config
        bench = make_benchmark(c.benchmark, dict(c.kwargs))
        return from_avalanche(bench, c.scenario_type or None, name=f"avalanche_{c.benchmark}",
                              val_fraction=c.val_fraction)

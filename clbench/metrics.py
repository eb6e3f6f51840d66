"""Owns the CL metrics: pure functions of the accuracy matrix R (formulas in docstrings).

Notation: ``R`` is T x T with ``R[i, j]`` = accuracy on experience j's test split after training
through experience i (0-based here; the formulas below use 1-based i, j = 1..T as the papers do).
``b[j]`` = accuracy on experience j before any training (the pre-training row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Matrix = np.ndarray | Sequence[Sequence[float]]


def _square(R: Matrix) -> np.ndarray:
    a = np.asarray(R, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"R must be a non-empty square matrix, got shape {a.shape}")
    return a


def average_accuracy(R: Matrix) -> float:
    """ACC = (1/T) Σ_j R[T, j]."""
    a = _square(R)
    return float(a[-1].mean())


def average_incremental_accuracy(R: Matrix) -> float:
    """AIA = (1/T) Σ_i (1/i) Σ_{j≤i} R[i, j]."""
    a = _square(R)
    return float(np.mean([a[i, : i + 1].mean() for i in range(len(a))]))


def backward_transfer(R: Matrix) -> float:
    """BWT = (1/(T−1)) Σ_{j<T} (R[T, j] − R[j, j])  (Lopez-Paz & Ranzato 2017). NaN if T = 1."""
    a = _square(R)
    T = len(a)
    if T < 2:
        return float("nan")
    return float(np.mean([a[-1, j] - a[j, j] for j in range(T - 1)]))


def forward_transfer(R: Matrix, b: Sequence[float]) -> float:
    """FWT = (1/(T−1)) Σ_{j≥2} (R[j−1, j] − b_j), b = pre-training accuracies. NaN if T = 1."""
    a = _square(R)
    base = np.asarray(b, dtype=float)
    T = len(a)
    if base.shape != (T,):
        raise ValueError(f"b must have length {T}, got shape {base.shape}")
    if T < 2:
        return float("nan")
    return float(np.mean([a[j - 1, j] - base[j] for j in range(1, T)]))


def forgetting(R: Matrix) -> float:
    """F = (1/(T−1)) Σ_{j<T} max_{l∈[j, T−1]} (R[l, j] − R[T, j])  (Chaudhry et al. 2018).

    NaN if T = 1.
    """
    a = _square(R)
    T = len(a)
    if T < 2:
        return float("nan")
    return float(np.mean([max(a[l, j] - a[-1, j] for l in range(j, T - 1)) for j in range(T - 1)]))


def zero_shot_transfer(R: Matrix) -> float:
    """Transfer (MTIL; Zheng et al. 2023, used by ZSCL and CoDyRA) = (1/(T−1)) Σ_{j≥2} (1/(j−1))
    Σ_{i<j} R[i, j]: accuracy on each experience before it is learnt, averaged over the rows
    above the diagonal, then over experiences. It measures zero-shot transfer only where the model
    can score classes it has not trained on (e.g. ``hf_encoder`` with ``model.head=label_embeddings``);
    with untrained head rows it sits near chance. NaN if T = 1.
    """
    a = _square(R)
    T = len(a)
    if T < 2:
        return float("nan")
    return float(np.mean([a[:j, j].mean() for j in range(1, T)]))


def learning_accuracy(R: Matrix) -> float:
    """Plasticity / learning accuracy LA = (1/T) Σ_j R[j, j]."""
    a = _square(R)
    return float(np.mean(np.diag(a)))


@dataclass(frozen=True)
class MetricSpec:
    """A metric as tables, boards and tracks name it: key in ``results.json`` ``metrics`` (and in
    MLflow), column label, which direction is better, its function of (R, b) when R alone
    determines it (:func:`summarize` computes exactly those), and the decimals tables show."""

    name: str
    label: str
    higher_is_better: bool
    doc: str
    of_R: Callable[[Matrix, Sequence[float]], float] | None = None
    digits: int = 3


#: Every metric a track may rank by or show, declared once; tables and boards take their labels
#: and sort directions from here.
METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("acc", "ACC", True, "final average accuracy over experiences",
               lambda R, b: average_accuracy(R)),
    MetricSpec("avg_inc_acc", "Avg incremental ACC", True, "average incremental accuracy",
               lambda R, b: average_incremental_accuracy(R)),
    MetricSpec("bwt", "BWT", True, "backward transfer", lambda R, b: backward_transfer(R)),
    MetricSpec("fwt", "FWT", True, "forward transfer against the pre-training row", forward_transfer),
    MetricSpec("forgetting", "Forgetting", False, "Chaudhry et al.'s forgetting", lambda R, b: forgetting(R)),
    MetricSpec("plasticity", "Plasticity", True, "mean accuracy on each experience just after learning it",
               lambda R, b: learning_accuracy(R)),
    MetricSpec("zero_shot_transfer", "Zero-shot transfer", True, "MTIL Transfer: accuracy before learning",
               lambda R, b: zero_shot_transfer(R)),
    MetricSpec("general_retention", "General retention", True, "general capability after / before the stream"),
    MetricSpec("mean_error", "Mean error", False, "test-time: mean online error over domains"),
    MetricSpec("mean_error_first_pass", "Error, first pass", False, "test-time: mean error of the first pass"),
    MetricSpec("mean_error_last_pass", "Error, last pass", False, "test-time: mean error of the last pass"),
    MetricSpec("mean_error_pretrain", "Error before adapting", False, "test-time: error of the unadapted model"),
    MetricSpec("source_acc_before", "Source acc before", True, "source test accuracy before the stream"),
    MetricSpec("source_acc_after", "Source acc after", True, "source test accuracy after the stream"),
    MetricSpec("source_forgetting", "Source forgetting", False, "source accuracy before - after"),
)}


def summarize(R: Matrix, b: Sequence[float]) -> dict[str, float]:
    """Every declared metric that R determines (keys are the MLflow metric names)."""
    return {m.name: m.of_R(R, b) for m in METRICS.values() if m.of_R is not None}


def metric_digits(name: str) -> int:
    """Decimals tables show for ``name`` (3 for an undeclared metric)."""
    spec = METRICS.get(name)
    return spec.digits if spec else 3


def metric_label(name: str) -> str:
    """The column label of ``name`` (the name itself for an undeclared metric)."""
    spec = METRICS.get(name)
    return spec.label if spec else name


def higher_is_better(name: str) -> bool:
    """Sort direction of ``name`` (undeclared metrics: higher is better)."""
    spec = METRICS.get(name)
    return spec.higher_is_better if spec else True

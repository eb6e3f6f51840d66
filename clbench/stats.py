"""Owns the statistics over seeds that tables and health checks report (one definition each)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def finite(values: Iterable[float]) -> list[float]:
    """The values that are finite numbers (NaN and ±inf left out)."""
    return [float(v) for v in values if math.isfinite(float(v))]


def mean(values: Iterable[float]) -> float:
    """Mean of the finite values; NaN when there are none."""
    v = finite(values)
    return math.fsum(v) / len(v) if v else float("nan")


def sample_sd(values: Iterable[float], single: float = float("nan")) -> float:
    """Sample standard deviation (ddof=1) of the finite values; ``single`` for fewer than two."""
    v = finite(values)
    if len(v) < 2:
        return single
    m = math.fsum(v) / len(v)
    return math.sqrt(math.fsum((x - m) ** 2 for x in v) / (len(v) - 1))

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


def ci95(values: Iterable[float]) -> tuple[float, float] | None:
    """Two-sided 95 % confidence interval of the mean of the finite values (Student's t with
    n − 1 degrees of freedom: mean ± t₀.₉₇₅ · sd / √n); None for fewer than two values."""
    from scipy.stats import t

    v = finite(values)
    if len(v) < 2:
        return None
    m, half = mean(v), float(t.ppf(0.975, len(v) - 1)) * sample_sd(v) / math.sqrt(len(v))
    return m - half, m + half


def paired_t(a: Iterable[float], b: Iterable[float]) -> tuple[float, float] | None:
    """(mean of a − b, two-sided p) of the paired t-test over matched pairs (same seeds); None for
    fewer than two pairs. Identical pairs give p = 1; a constant non-zero difference p = 0."""
    from scipy.stats import ttest_rel

    pairs = [(x, y) for x, y in zip(a, b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 2:
        return None
    d = [x - y for x, y in pairs]
    diff = mean(d)
    if sample_sd(d) <= 1e-12 * max(1.0, abs(diff)):  # a constant difference (up to float rounding)
        return diff, 1.0 if abs(diff) <= 1e-12 else 0.0
    return diff, float(ttest_rel([x for x, _ in pairs], [y for _, y in pairs]).pvalue)


def shared_ranks(intervals: list[tuple[float, float] | None]) -> list[str]:
    """Rank labels for items already sorted best first: an item whose interval overlaps the one
    above shares its rank, and a shared rank is written ``3=``; items without an interval never
    share."""
    ranks: list[int] = []
    for i, iv in enumerate(intervals):
        above = intervals[i - 1] if i else None
        tie = iv is not None and above is not None and iv[0] <= above[1] and above[0] <= iv[1]
        ranks.append(ranks[-1] if tie else i + 1)
    return [f"{r}=" if ranks.count(r) > 1 else str(r) for r in ranks]

"""Owns the checks of what an entry claims that the repository can confirm or recompute.

- **The method is registered**, and its **registered search space** is the one the entry was
  tuned over: an entry may not declare its own grid, and the chosen hyperparameters must be
  points of the registered grid (a method whose space has changed since has a stale entry).
- **The budget adds up:** at least one trial, failed trials among the used ones, a non-negative
  tuning time.
- **Summaries follow from the per-seed values:** every metric's mean, std and count, and every
  cost counter's, recomputed from ``runs``.

What the content hash does and does not prove is said in ``leaderboards/README.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from clbench.leaderboard.entry import mean_std, summarize_runs
from clbench.leaderboard.record import SUMMARY_COST, LeaderboardEntry, MeanStd

_SPACES: dict[str, dict[str, Any]] = {}


def registered_search_spaces() -> dict[str, dict[str, Any]]:
    """Method name -> the JSON record of its registered search space (imports the plug-ins)."""
    if not _SPACES:
        from clbench.registry import METHODS, load_plugins
        from clbench.search import space_record

        load_plugins()
        _SPACES.update({n: space_record(METHODS.get(n).search_space) for n in METHODS.names()})
    return dict(_SPACES)


def method_errors(entry: LeaderboardEntry, spaces: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The method registered; the entry's search space and H* inside the registered grid."""
    space = spaces.get(entry.method)
    if space is None:
        return [f"method {entry.method!r} is not registered (registered: {', '.join(sorted(spaces))})"]
    errs = []
    if entry.search_space != dict(space):
        errs.append(f"search space {sorted(entry.search_space)} is not {entry.method}'s registered "
                    f"grid {sorted(space)} (stale entry, or a grid declared by hand)")
    for key, value in sorted(entry.hyperparameters.items()):
        values = (space.get(key) or {}).get("values")
        if values is None or not any(_same(value, v) for v in values):
            errs.append(f"hyperparameter {key}={value!r} is outside {entry.method}'s registered grid"
                        + (f" {values}" if values is not None else f" (which has no {key})"))
    return errs


def budget_errors(entry: LeaderboardEntry) -> list[str]:
    """What the budget's own numbers must satisfy."""
    b, errs = entry.budget, []
    if b.trials_used < 1:
        errs.append(f"budget: trials_used={b.trials_used}; a protocol entry needs at least one trial")
    if not 0 <= b.trials_failed <= b.trials_used:
        errs.append(f"budget: trials_failed={b.trials_failed} is not between 0 and trials_used={b.trials_used}")
    if b.tuning_train_time_s < 0:
        errs.append(f"budget: tuning_train_time_s={b.tuning_train_time_s} is negative")
    return errs


def summary_errors(entry: LeaderboardEntry) -> list[str]:
    """Every stored mean, std and count (metrics and cost) recomputed from the per-seed values."""
    errs = []
    metrics = summarize_runs(entry.runs)
    stored = dict(entry.summary)
    bad = sorted(k for k in set(metrics) | set(stored) if not _agrees(stored.get(k), metrics.get(k)))
    if bad:
        errs.append(f"summary disagrees with the per-seed metrics ({', '.join(bad)})")
    cost = {k: mean_std([getattr(r.cost, k) for r in entry.runs]) for k in SUMMARY_COST}
    bad = [k for k in SUMMARY_COST if not _agrees(getattr(entry.cost, k), cost[k])]
    if bad:
        errs.append(f"cost summary disagrees with the per-seed costs ({', '.join(bad)})")
    return errs


def _agrees(stored: MeanStd | None, computed: MeanStd | None) -> bool:
    if stored is None or computed is None:
        return stored is None and computed is None
    return (stored.n == computed.n and _close(stored.mean, computed.mean)
            and _close(stored.std, computed.std))


def _close(a: float | None, b: float | None) -> bool:
    """Equal within 1e-6 (relative for large counters); None matches None only."""
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def _same(a: Any, b: Any) -> bool:
    """Equal grid points: numbers by value (0.001 == 1e-3), anything else by equality."""
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return bool(a == b)

"""Owns the checks of what an entry claims that the repository can confirm or recompute.

- **The method is registered**, and its **registered search space** is the one the entry was
  tuned over: an entry may not declare its own grid, and the chosen hyperparameters must be
  points of the registered grid (a method whose space has changed since has a stale entry). On a
  track that widens some of a method's grids (track.yaml ``search``) the widened grids are the
  registered ones there.
- **The budget adds up:** at least one trial (none under a zero budget), failed trials among the used ones, a non-negative
  tuning time.
- **Summaries follow from the per-seed values:** every metric's mean, std, count and 95 %
  interval, and every cost counter's, recomputed from ``runs`` by the rules of the entry's
  schema version.
- **Schema 2: made from one clean commit of a healthy track:** a git commit without ``-dirty``,
  the track's passing health check recorded, and (:func:`mixed_commit_errors`) every entry of a
  track from the same commit.

What the content hash does and does not prove is said in ``leaderboards/README.md``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
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


def method_errors(entry: LeaderboardEntry, spaces: Mapping[str, Mapping[str, Any]], tuned: bool = True,
                  protocol: Any = None) -> list[str]:
    """The method registered; the entry's search space and H* inside the registered grid (a
    zero-budget protocol, ``tuned`` false, searches no grid: the settings check requires both empty).
    ``protocol`` (a :class:`clbench.study.Protocol`): the grids its track widens replace the
    registered ones (track.yaml ``search``)."""
    space = spaces.get(entry.method)
    if space is None:
        return [f"method {entry.method!r} is not registered (registered: {', '.join(sorted(spaces))})"]
    if not tuned:
        return []
    if protocol is not None and protocol.search.get(entry.method):
        from clbench.search import from_record, space_record

        space = space_record(protocol.space_for(entry.method, {k: from_record(r) for k, r in space.items()}))
    errs = []
    if entry.search_space != dict(space):
        keys = sorted(set(entry.search_space) | set(space))
        diff = "; ".join(f"{k}: entry {entry.search_space.get(k, '(none)')}, registered {space.get(k, '(none)')}"
                         for k in keys if entry.search_space.get(k) != space.get(k))
        errs.append(f"search space differs from {entry.method}'s registered grid ({diff}): a stale "
                    "entry, or a grid declared by hand")
    for key, value in sorted(entry.hyperparameters.items()):
        values = (space.get(key) or {}).get("values")
        if values is None or not any(_same(value, v) for v in values):
            errs.append(f"hyperparameter {key}={value!r} is outside {entry.method}'s registered grid"
                        + (f" {values}" if values is not None else f" (which has no {key})"))
    return errs


def budget_errors(entry: LeaderboardEntry) -> list[str]:
    """What the budget's own numbers must satisfy."""
    b, errs = entry.budget, []
    if b.trials_used < 1 and b.n_trials > 0:  # n_trials 0: a zero-budget protocol (checked against the track's)
        errs.append(f"budget: trials_used={b.trials_used}; a protocol entry needs at least one trial")
    if not 0 <= b.trials_failed <= b.trials_used:
        errs.append(f"budget: trials_failed={b.trials_failed} is not between 0 and trials_used={b.trials_used}")
    if b.tuning_train_time_s < 0:
        errs.append(f"budget: tuning_train_time_s={b.tuning_train_time_s} is negative")
    return errs


def summary_errors(entry: LeaderboardEntry) -> list[str]:
    """Every stored mean, std and count (metrics and cost) recomputed from the per-seed values."""
    errs, version = [], entry.schema_version
    metrics = summarize_runs(entry.runs, version)
    stored = dict(entry.summary)
    bad = sorted(k for k in set(metrics) | set(stored) if not _agrees(stored.get(k), metrics.get(k)))
    if bad:
        errs.append(f"summary disagrees with the per-seed metrics ({', '.join(bad)})")
    cost = {k: mean_std([getattr(r.cost, k) for r in entry.runs], version) for k in SUMMARY_COST}
    bad = [k for k in SUMMARY_COST if not _agrees(getattr(entry.cost, k), cost[k])]
    if bad:
        errs.append(f"cost summary disagrees with the per-seed costs ({', '.join(bad)})")
    return errs


def commit_errors(entry: LeaderboardEntry) -> list[str]:
    """Schema 2: a clean tree's commit, and the track's passing health check recorded."""
    if entry.schema_version < 2:
        return []
    errs, commit = [], entry.env.git_commit
    if not commit:
        errs.append("env.git_commit is missing: an entry must name the commit it was made from")
    elif commit.endswith("-dirty"):
        errs.append(f"made from a dirty tree ({commit}); produce entries from a clean worktree of one "
                    "commit (git worktree add)")
    if entry.health is None:
        errs.append(f"records no health check of track {entry.track!r} (run `clbench track check "
                    f"{entry.track}` and commit its health.json first)")
    elif not entry.health.passed:
        errs.append(f"track {entry.track!r} failed its health check; a failing track has no board")
    return errs


def mixed_commit_errors(entries: Mapping[Path, LeaderboardEntry]) -> dict[Path, list[str]]:
    """Schema-2 entries of one track that come from another commit than most of the track's
    (a board is produced from one commit): path -> its reason."""
    by_track: dict[str, list[tuple[Path, str]]] = {}
    for path, e in entries.items():
        if e.schema_version >= 2 and e.env.git_commit:
            by_track.setdefault(e.track, []).append((path, e.env.git_commit))
    out: dict[Path, list[str]] = {}
    for track, items in by_track.items():
        counts = Counter(c for _, c in items)
        if len(counts) < 2:
            continue
        main, _ = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        for path, commit in items:
            if commit != main:
                out[path] = [f"made at commit {commit[:12]}, but {counts[main]} of track {track!r}'s "
                             f"{len(items)} entries are from {main[:12]}: a board comes from one commit"]
    return out


def _agrees(stored: MeanStd | None, computed: MeanStd | None) -> bool:
    if stored is None or computed is None:
        return stored is None and computed is None
    same_ci = (stored.ci95 is None and computed.ci95 is None) or (
        stored.ci95 is not None and computed.ci95 is not None and len(stored.ci95) == len(computed.ci95) == 2
        and all(_close(a, b) for a, b in zip(stored.ci95, computed.ci95, strict=True)))
    return (stored.n == computed.n and _close(stored.mean, computed.mean)
            and _close(stored.std, computed.std) and same_ci)


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

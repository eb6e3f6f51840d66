"""Owns what the boards show per entry: rank order and shared ranks, mean ± std and interval cells,
the paired test against the track's lower reference learner, grid-edge flags, columns,
and the protocol line.

Shared by the Markdown table (:mod:`clbench.leaderboard.markdown`), the HTML page
(:mod:`clbench.leaderboard.html`) and the SVG plots (:mod:`clbench.leaderboard.plots`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from clbench import stats
from clbench.leaderboard.record import LeaderboardEntry, MeanStd, is_num
from clbench.metrics import higher_is_better, metric_digits, metric_label
from clbench.search import grid_edges
from clbench.tuning import Protocol


def rank_metric(proto: Protocol | None) -> str:
    """The metric a board ranks by: its protocol's ``rank_by`` (ACC without a protocol)."""
    return proto.rank_by if proto is not None else "acc"


def _rank_key(entry: LeaderboardEntry, metric: str = "acc") -> tuple[float, str]:
    """Best first by ``metric``'s mean in its direction (:func:`clbench.metrics.higher_is_better`)."""
    v = metric_mean(entry, metric)
    if v is None:
        return (math.inf, entry.method)
    return (-v if higher_is_better(metric) else v, entry.method)


def metric_mean(entry: LeaderboardEntry, metric: str) -> float | None:
    """The mean over seeds of ``metric`` (a key of the entry's summary), None when it has none."""
    return _mean(entry.summary.get(metric))


def metric_std(entry: LeaderboardEntry, metric: str) -> float:
    """The std over seeds of ``metric``; 0.0 when it has none."""
    s = entry.summary.get(metric)
    return (s.std if s is not None else None) or 0.0


def _mean(s: MeanStd | None) -> float | None:
    v = None if s is None else s.mean
    return float(v) if v is not None and is_num(v) else None


def _pm(s: MeanStd | None, digits: int = 3) -> str:
    if s is None or s.mean is None or not is_num(s.mean):
        return "n/a"
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f}" if is_num(s.std) else f"{s.mean:.{digits}f}"


def _ci(s: MeanStd | None, digits: int = 3) -> str:
    """``mean [lo, hi]`` (95 % interval) where the entry has one, else ``mean ± std``."""
    if s is None or s.ci95 is None or s.mean is None:
        return _pm(s, digits)
    lo, hi = s.ci95
    return f"{s.mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def rank_labels(entries: Sequence[LeaderboardEntry], metric: str = "acc") -> list[str]:
    """Rank labels of entries already in rank order: an entry whose 95 % interval of the ranked
    ``metric`` overlaps the one above shares its rank (``3=``); entries without intervals
    (schema 1) never share."""
    intervals = [(s.ci95 if (s := e.summary.get(metric)) is not None else None) or None for e in entries]
    return stats.shared_ranks([(float(iv[0]), float(iv[1])) if iv else None for iv in intervals])


def baseline(entries: Sequence[LeaderboardEntry]) -> str | None:
    """The board's baseline, which every entry is tested against: the track's lower reference
    learner (sequential fine-tuning), as the entries' recorded health check names it."""
    return next((e.health.lower for e in entries if e.health is not None), None)


def versus_baseline(entry: LeaderboardEntry, entries: Sequence[LeaderboardEntry], metric: str = "acc") -> str:
    """Difference of ``metric`` to the baseline's entry on the same seeds and the paired t-test's
    p; ▲ (better) / ▼ (worse), in ``metric``'s direction (a lower error is better), marks
    p < 0.05. ``-`` for the baseline itself, without it, or without shared seeds."""
    name = baseline(entries)
    base = next((e for e in entries if e.method == name), None)
    if base is None or entry is base:
        return "-"
    mine, theirs = _by_seed(entry, metric), _by_seed(base, metric)
    seeds = sorted(set(mine) & set(theirs))
    test = stats.paired_t([mine[s] for s in seeds], [theirs[s] for s in seeds])
    if test is None:
        return "-"
    diff, p = test
    better = diff > 0 if higher_is_better(metric) else diff < 0
    mark = (" ▲" if better else " ▼") if p < 0.05 else ""
    return f"{diff:+.3f} (p {p:.2g}){mark}"


def _by_seed(entry: LeaderboardEntry, metric: str = "acc") -> dict[int, float]:
    return {r.seed: float(v) for r in entry.runs if (v := r.metrics.get(metric)) is not None}


def edge_params(entry: LeaderboardEntry) -> list[str]:
    """The entry's hyperparameters chosen at the edge of their grid (:func:`clbench.search.grid_edges`)."""
    return grid_edges(entry.hyperparameters, entry.search_space)


def protocol_seconds(entry: LeaderboardEntry) -> float:
    """What producing the entry cost on its machine: the tuning trials' training time plus the
    evaluation runs' wall time (seconds)."""
    return entry.budget.tuning_train_time_s + sum(r.cost.wall_time_s for r in entry.runs)


def mechanism_text(entry: LeaderboardEntry) -> str:
    """The method's declared mechanism figures: mean over experiences, then over seeds."""
    keys: list[str] = []
    for r in entry.runs:
        keys += [k for k in (r.mechanism or {}) if k not in keys]
    parts = []
    for k in keys:
        per_seed = [sum(v) / len(v) for r in entry.runs
                    if (v := [x for x in (r.mechanism or {}).get(k, []) if x is not None])]
        if per_seed:
            parts.append(f"{k} {sum(per_seed) / len(per_seed):.3g}")
    return "; ".join(parts) or "-"


def commits_line(entries: Sequence[LeaderboardEntry]) -> str:
    """Which commit(s) the ranked entries were produced from."""
    commits = sorted({e.env.git_commit or "unknown" for e in entries})
    if not commits:
        return ""
    if len(commits) == 1:
        return f"Every entry was produced from commit `{commits[0][:12]}`."
    return "Entries come from commits " + ", ".join(f"`{c[:12]}`" for c in commits) + "."


def _has_general(entries: Sequence[LeaderboardEntry]) -> bool:
    return any(metric_mean(e, "general_retention") is not None for e in entries)


Column = tuple[str, str, str, Callable[[LeaderboardEntry], str], Callable[[LeaderboardEntry], Any]]


def _metric_column(key: str, metric: str) -> Column:
    return (key, metric_label(metric), "num", lambda e: _pm(e.summary.get(metric), metric_digits(metric)),
            lambda e: metric_mean(e, metric))


def _columns(entries: Sequence[LeaderboardEntry], metric: str = "acc", shown: Sequence[str] = ()) -> list[Column]:
    """(key, header, type, text(entry), sort value(entry)) for the board's columns; ``metric``
    is the ranked one (key ``rank_by``), ``shown`` the track's metrics shown beside it."""
    cols: list[Column] = [("method", "Method", "text", lambda e: e.method, lambda e: e.method)]
    cis = any(e.summary.get(metric) is not None and e.summary[metric].ci95 for e in entries)
    label = metric_label(metric)
    cols.append((metric, f"{label} [95 % CI]" if cis else label, "num",
                 lambda e: _ci(e.summary.get(metric), metric_digits(metric)), lambda e: metric_mean(e, metric)))
    base = baseline(entries)
    if base is not None and any(e.method == base for e in entries):
        cols.append(("vs_base", f"Δ{label} vs {base} (paired t)", "text",
                     lambda e: versus_baseline(e, entries, metric), lambda e: versus_baseline(e, entries, metric)))
    if metric == "acc":
        cols += [_metric_column(m, m) for m in ("bwt", "forgetting", "plasticity")]
    else:  # ACC and the track's shown metrics that some entry has a number for
        cols += [_metric_column(m, m) for m in dict.fromkeys(("acc", *shown))
                 if m != metric and any(metric_mean(e, m) is not None for e in entries)]
    if _has_general(entries):
        cols.append(_metric_column("general", "general_retention"))
    cols += [
        ("time", "Train time (s)", "num", lambda e: _pm(e.cost.train_time_s, 1),
         lambda e: _mean(e.cost.train_time_s)),
        ("cost", "Protocol cost (s)", "num", lambda e: f"{protocol_seconds(e):.0f}", protocol_seconds),
        ("trials", "Trials", "num", lambda e: f"{e.budget.trials_used}/{e.budget.n_trials}",
         lambda e: e.budget.trials_used),
        ("edge", "H* on a grid edge", "text", lambda e: ", ".join(edge_params(e)) or "-",
         lambda e: len(edge_params(e))),
        ("mechanism", "Mechanism (mean)", "text", mechanism_text, mechanism_text),
        ("seeds", "Seeds", "num", lambda e: ", ".join(str(s) for s in e.seeds), lambda e: len(e.seeds)),
    ]
    return cols


def _protocol_line(track: str, proto: Protocol | None) -> str:
    if proto is None:
        return f"Track `{track}` is not a known track: every entry here is rejected."
    retired = ("**Superseded:** this track is retired; its board is kept readable and no longer "
               "extended (see `leaderboards/README.md` for the current tracks). ") if proto.retired else ""
    label = metric_label(proto.rank_by)
    order = "higher" if higher_is_better(proto.rank_by) else "lower"
    if not proto.tuned:
        return (f"{retired}Zero-budget protocol {proto.name} v{proto.version}: no tuning, every method runs "
                f"with its defaults on `{proto.eval_scenario}` with seeds {', '.join(map(str, proto.eval_seeds))}. "
                f"Ranked by {label} ({order} is better): mean ± sample std over seeds, {label} with its 95 % "
                f"t-interval; a rank shared with the entry above (`3=`) means the intervals overlap. Δ{label}: "
                f"paired t-test against the track's lower reference learner on the same seeds (▲ better, ▼ worse: p < 0.05).")
    return (f"{retired}Protocol {proto.name} v{proto.version}: tune on `{proto.tune_scenario}` "
            f"({proto.n_trials} trials, {proto.sampler} sampler seed {proto.sampler_seed}, objective "
            f"{proto.objective} on the validation split), evaluate H* on `{proto.eval_scenario}` with "
            f"seeds {', '.join(map(str, proto.eval_seeds))}. Mean ± sample std over seeds, ACC with its "
            f"95 % t-interval; a rank shared with the entry above (`3=`) means the intervals overlap. "
            f"ΔACC: paired t-test against the track's lower reference learner on the same seeds "
            f"(▲ better, ▼ worse: p < 0.05). Schema-1 entries "
            f"show the population std and no interval.{_widened(proto)}")


def _widened(proto: Protocol) -> str:
    """The grids the track widens (track.yaml ``search``), as a sentence; '' when none."""
    if not proto.search:
        return ""
    parts = [f"{m} `{k}` to {', '.join(map(str, v))}" for m, grids in sorted(proto.search.items())
             for k, v in sorted(grids.items())]
    return (" Grids this track widens (after a winner here sat on an open edge of the method's "
            f"registered grid; same budget): {'; '.join(parts)}.")

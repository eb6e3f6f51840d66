"""Owns what the boards show per entry: rank order, mean ± std cells, columns, protocol line.

Shared by the Markdown table (:mod:`clbench.leaderboard.markdown`), the HTML page
(:mod:`clbench.leaderboard.html`) and the SVG plots (:mod:`clbench.leaderboard.plots`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from clbench.leaderboard.record import LeaderboardEntry, MeanStd, is_num
from clbench.metrics import metric_digits, metric_label
from clbench.tuning import Protocol


def _rank_key(entry: LeaderboardEntry) -> tuple[float, str]:
    acc = metric_mean(entry, "acc")
    return (-acc if acc is not None else math.inf, entry.method)


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


def _has_general(entries: Sequence[LeaderboardEntry]) -> bool:
    return any(metric_mean(e, "general_retention") is not None for e in entries)


Column = tuple[str, str, str, Callable[[LeaderboardEntry], str], Callable[[LeaderboardEntry], Any]]


def _metric_column(key: str, metric: str) -> Column:
    return (key, metric_label(metric), "num", lambda e: _pm(e.summary.get(metric), metric_digits(metric)),
            lambda e: metric_mean(e, metric))


def _columns(entries: Sequence[LeaderboardEntry]) -> list[Column]:
    """(key, header, type, text(entry), sort value(entry)) for the board's columns."""
    cols: list[Column] = [("method", "Method", "text", lambda e: e.method, lambda e: e.method)]
    cols += [_metric_column(m, m) for m in ("acc", "bwt", "forgetting", "plasticity")]
    if _has_general(entries):
        cols.append(_metric_column("general", "general_retention"))
    cols += [
        ("time", "Train time (s)", "num", lambda e: _pm(e.cost.train_time_s, 1),
         lambda e: _mean(e.cost.train_time_s)),
        ("trials", "Trials", "num", lambda e: f"{e.budget.trials_used}/{e.budget.n_trials}",
         lambda e: e.budget.trials_used),
        ("seeds", "Seeds", "num", lambda e: ", ".join(str(s) for s in e.seeds), lambda e: len(e.seeds)),
    ]
    return cols


def _protocol_line(track: str, proto: Protocol | None) -> str:
    if proto is None:
        return f"Track `{track}` is not a known track: every entry here is rejected."
    return (f"Protocol {proto.name} v{proto.version}: tune on `{proto.tune_scenario}` "
            f"({proto.n_trials} trials, {proto.sampler} sampler seed {proto.sampler_seed}, objective "
            f"{proto.objective} on the validation split), evaluate H* on `{proto.eval_scenario}` with "
            f"seeds {', '.join(map(str, proto.eval_seeds))}. Mean ± std over seeds.")

"""Owns what the boards show per entry: rank order, mean ± std cells, columns, protocol line.

Shared by the Markdown table (:mod:`clbench.leaderboard.markdown`), the HTML page
(:mod:`clbench.leaderboard.html`) and the SVG plots (:mod:`clbench.leaderboard.plots`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from clbench.leaderboard.entry import _is_num
from clbench.metrics import metric_label
from clbench.tuning import Protocol


def _rank_key(entry: Mapping[str, Any]) -> tuple[float, str]:
    acc = _mean(entry, "acc")
    return (-acc if acc is not None else math.inf, entry["method"])


def _mean(entry: Mapping[str, Any], key: str, part: str = "summary") -> float | None:
    v = entry[part].get(key, {}).get("mean")
    return float(v) if _is_num(v) else None


def _pm(entry: Mapping[str, Any], key: str, part: str = "summary", digits: int = 3) -> str:
    s = entry[part].get(key) or {}
    if not _is_num(s.get("mean")):
        return "n/a"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" if _is_num(s.get("std")) else f"{s['mean']:.{digits}f}"


def _has_general(entries: Sequence[Mapping[str, Any]]) -> bool:
    return any(_mean(e, "general_retention") is not None for e in entries)


Column = tuple[str, str, str, Callable[[Mapping[str, Any]], str], Callable[[Mapping[str, Any]], Any]]


def _columns(entries: Sequence[Mapping[str, Any]]) -> list[Column]:
    """(key, header, type, text(entry), sort value(entry)) for the board's columns."""
    cols: list[Column] = [
        ("method", "Method", "text", lambda e: e["method"], lambda e: e["method"]),
        ("acc", metric_label("acc"), "num", lambda e: _pm(e, "acc"), lambda e: _mean(e, "acc")),
        ("bwt", metric_label("bwt"), "num", lambda e: _pm(e, "bwt"), lambda e: _mean(e, "bwt")),
        ("forgetting", metric_label("forgetting"), "num", lambda e: _pm(e, "forgetting"), lambda e: _mean(e, "forgetting")),
        ("plasticity", metric_label("plasticity"), "num", lambda e: _pm(e, "plasticity"), lambda e: _mean(e, "plasticity")),
    ]
    if _has_general(entries):
        cols.append(("general", metric_label("general_retention"), "num", lambda e: _pm(e, "general_retention"),
                     lambda e: _mean(e, "general_retention")))
    cols += [
        ("time", "Train time (s)", "num", lambda e: _pm(e, "train_time_s", "cost", 1),
         lambda e: _mean(e, "train_time_s", "cost")),
        ("trials", "Trials", "num", lambda e: f"{e['budget']['trials_used']}/{e['budget']['n_trials']}",
         lambda e: e["budget"]["trials_used"]),
        ("seeds", "Seeds", "num", lambda e: ", ".join(str(s) for s in e["seeds"]), lambda e: len(e["seeds"])),
    ]
    return cols


def _protocol_line(track: str, proto: Protocol | None) -> str:
    if proto is None:
        return f"Track `{track}` is not a known track: every entry here is rejected."
    return (f"Protocol {proto.name} v{proto.version}: tune on `{proto.tune_scenario}` "
            f"({proto.n_trials} trials, {proto.sampler} sampler seed {proto.sampler_seed}, objective "
            f"{proto.objective} on the validation split), evaluate H* on `{proto.eval_scenario}` with "
            f"seeds {', '.join(map(str, proto.eval_seeds))}. Mean ± std over seeds.")

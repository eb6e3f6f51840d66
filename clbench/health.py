"""Owns the track health check: can this track separate methods at all?

``clbench track check <track>`` trains the track's two reference learners (declared in its
``track.yaml``: for labelled tracks the lower bound, sequential fine-tuning, and the upper bound,
training on the union of the experiences; for test-time tracks no adaptation and BN adaptation)
with the track's reference settings on its evaluation scenario, one run per seed, and judges the
criteria below. It writes
``leaderboards/<track>/health.json`` and ``health.md`` (the table the board shows). A track that
fails is redesigned or dropped, never shipped with a caveat.

Criteria (``L`` = lower learner, ``U`` = upper learner, means over seeds, ``sd`` = sample
standard deviation, ddof=1):

- labelled and foundation tracks
    - *learns*: plasticity(L) = mean_j R[j, j] >= learns x ACC(U)
    - *forgets*: forgetting(L) >= forgets
    - *headroom*: ACC(U) - ACC(L) >= headroom
    - *resolution*: ACC(U) - ACC(L) >= resolution x sd(ACC(L))
- foundation tracks also
    - *strong source*: the general-capability score before the stream >= source_min (vision:
      source test accuracy; language models: the mean of the ``<task>/acc`` scores >= the suite's
      chance level + ``source_margin``, which replaces ``source_min`` when a track declares it)
    - *something to retain*: general retention(L) <= retention_max
- test-time tracks
    - *strong source*: source clean accuracy before the stream >= source_min
    - *adaptation matters*: mean error(L) - mean error(U) >= adapt_gain
    - *long stream*: adaptation steps in the stream >= min_steps
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clbench.checkpoint import atomic_write_json
from clbench.records import RunRecord
from clbench.report import markdown_table, method_of
from clbench.stats import mean, sample_sd
from clbench.tracks import Track, check_locations, health_path

HEALTH_SCHEMA_VERSION = 1
HEALTH_RUNS_DIR = "runs/health"


@dataclass(frozen=True)
class Criterion:
    name: str
    rule: str
    value: float
    threshold: float
    passed: bool

    def row(self) -> list[Any]:
        return [self.name, self.rule, f"{self.value:.3f}", f"{self.threshold:.3f}",
                "pass" if self.passed else "FAIL"]


def _metric(runs: Sequence[RunRecord], key: str) -> list[float]:
    return [float(r.metrics[key]) for r in runs if key in r.metrics]


def _source_before(r: RunRecord) -> float:
    before = r.general.before or {}
    accs = [float(v) for k, v in before.items() if k.endswith("/acc")]
    return mean(accs) if accs else float("nan")


def labelled_criteria(lower: Sequence[RunRecord], upper: Sequence[RunRecord],
                      th: Mapping[str, float], foundation: bool) -> list[Criterion]:
    """The criteria of a labelled (or foundation) track from the two learners' results.json."""
    acc_l, acc_u = _metric(lower, "acc"), _metric(upper, "acc")
    plast, forg = mean(_metric(lower, "plasticity")), mean(_metric(lower, "forgetting"))
    gap, sd = mean(acc_u) - mean(acc_l), sample_sd(acc_l)
    out = [
        Criterion("learns", f"plasticity(lower) >= {th['learns']} x ACC(upper)", plast,
                  th["learns"] * mean(acc_u), plast >= th["learns"] * mean(acc_u)),
        Criterion("forgets", "forgetting(lower) >= threshold", forg, th["forgets"], forg >= th["forgets"]),
        Criterion("headroom", "ACC(upper) - ACC(lower) >= threshold", gap, th["headroom"],
                  gap >= th["headroom"]),
        Criterion("resolution", f"ACC(upper) - ACC(lower) >= {th['resolution']:g} x sd(ACC(lower))", gap,
                  th["resolution"] * sd, gap >= th["resolution"] * sd),
    ]
    if foundation:
        src = mean([_source_before(r) for r in lower])
        ret = mean(_metric(lower, "general_retention"))
        floor, rule = th["source_min"], "general capability before the stream >= threshold"
        if th.get("source_margin"):  # language models: the suite's chance level + margin
            from clbench.general import suite_chance_level

            before = lower[0].general.before or {}
            tasks = sorted(k.split("/")[0] for k in before if k.endswith("/acc"))
            floor = suite_chance_level(tasks) + th["source_margin"]
            rule = f"general-capability mean before the stream >= its chance level + {th['source_margin']:g}"
        out += [Criterion("strong source", rule, src, floor, src >= floor),
                Criterion("something to retain", "general retention(lower) <= threshold", ret,
                          th["retention_max"], ret <= th["retention_max"])]
    return out


def test_time_criteria(lower: Sequence[RunRecord], upper: Sequence[RunRecord],
                       th: Mapping[str, float]) -> list[Criterion]:
    """The criteria of a test-time track (lower = no adaptation, upper = BN adaptation)."""
    src = mean(_metric(lower, "source_acc_before"))
    gain = mean(_metric(lower, "mean_error")) - mean(_metric(upper, "mean_error"))
    steps = min(float(r.cost.adapt_batches or 0) for r in [*lower, *upper])
    return [
        Criterion("strong source", "source clean accuracy >= threshold", src, th["source_min"],
                  src >= th["source_min"]),
        Criterion("adaptation matters", "mean error(lower) - mean error(upper) >= threshold", gain,
                  th["adapt_gain"], gain >= th["adapt_gain"]),
        Criterion("long stream", "adaptation steps in the stream >= threshold", steps, th["min_steps"],
                  steps >= th["min_steps"]),
    ]


test_time_criteria.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def criteria_for(track: Track, lower: Sequence[RunRecord],
                 upper: Sequence[RunRecord]) -> list[Criterion]:
    if track.kind == "test_time":
        return test_time_criteria(lower, upper, track.health.thresholds)
    return labelled_criteria(lower, upper, track.health.thresholds, track.kind == "foundation")


def _figures(runs: Sequence[RunRecord], keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in keys:
        vals = _metric(runs, k)
        if vals:
            out[k] = {"mean": mean(vals), "sd": sample_sd(vals), "per_seed": vals}
    out["wall_time_s"] = {"mean": mean([float(r.cost.wall_time_s) for r in runs]),
                          "per_seed": [float(r.cost.wall_time_s) for r in runs]}
    return out


FIGURE_KEYS = ("acc", "plasticity", "forgetting", "bwt", "general_retention", "mean_error",
               "source_acc_before", "source_acc_after", "mean_error_first_pass", "mean_error_last_pass")


def health_record(track: Track, lower: Sequence[RunRecord], upper: Sequence[RunRecord],
                  seeds: Sequence[int], commit: str | None,
                  locations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The content of health.json. ``settings`` is the declaration's (location overrides never
    enter it); ``locations``, present when the check was given any, records where the data and
    weights were read from."""
    crit = criteria_for(track, lower, upper)
    return {
        "schema_version": HEALTH_SCHEMA_VERSION, "kind": "clbench-track-health", "track": track.name,
        "declaration_sha256": track.digest(), "health_digest": track.health_digest(), "git_commit": commit, "seeds": list(seeds),
        "settings": track.run_values(),
        **({"locations": dict(locations)} if locations else {}),
        "learners": {"lower": track.health.lower, "upper": track.health.upper,
                     **({"upper_options": track.health.upper_options} if track.health.upper_options else {})},
        "figures": {"lower": _figures(lower, FIGURE_KEYS), "upper": _figures(upper, FIGURE_KEYS)},
        "criteria": [vars(c) for c in crit],
        "passed": all(c.passed for c in crit),
        "runs": [{"method": method_of(r), "seed": r.seeds.seed, "run_key": r.run_key,
                  "run_dir": r.run_dir} for r in [*lower, *upper]],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _learner(learners: Mapping[str, Any]) -> str:
    opts = learners.get("upper_options") or {}
    return str(learners["upper"]) + (f" ({', '.join(f'{k}={v}' for k, v in opts.items())})" if opts else "")


def health_table(rec: Mapping[str, Any]) -> str:
    """Markdown: one row per criterion with the measured figure and pass/fail."""
    rows = [Criterion(**c).row() for c in rec["criteria"]]
    lo, up = rec["figures"]["lower"], rec["figures"]["upper"]
    verdict = "passes" if rec["passed"] else "FAILS"
    head = (f"Health of `{rec['track']}`: {verdict} (lower = {rec['learners']['lower']}, "
            f"upper = {_learner(rec['learners'])}, seeds {', '.join(map(str, rec['seeds']))}; "
            f"one run of the lower learner takes {lo['wall_time_s']['mean']:.0f} s, of the upper "
            f"{up['wall_time_s']['mean']:.0f} s)")
    return head + "\n\n" + markdown_table(["criterion", "rule", "measured", "threshold", "result"], rows)


def _train_runs(values: Sequence[Mapping[str, Any]], resume: bool, threads: int) -> None:
    """One worker's share of a health check's runs (in a spawned process)."""
    import torch

    from clbench.config import build_run_config
    from clbench.runner import run

    if threads > 0 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads)
    for v in values:
        run(build_run_config(v), resume=resume, force=not resume)


def check_track(track: Track, seeds: Sequence[int] | None = None, resume: bool = True,
                runs_dir: str = HEALTH_RUNS_DIR, write: bool = True,
                run_fn: Callable[[Mapping[str, Any]], RunRecord] | None = None,
                workers: int = 1, locations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Train both reference learners on every seed and judge the criteria; write health.json.

    Finished runs are reused (``resume``), so a killed check continues where it stopped. With
    ``workers`` > 1 the runs are first trained in that many processes (the CPU's threads shared
    out among them unless ``OMP_NUM_THREADS`` is set); the judgement then reads them back.
    ``locations`` (keys of :func:`clbench.tracks.locations_of`, e.g. ``scenario.root``,
    ``model.weights``; anything else is refused) go into every run's settings on top of the
    declaration: each run's results.json records them, health.json lists them under
    ``locations``, and its ``settings`` and ``health_digest`` stay the declaration's.
    """
    from clbench.config import build_run_config
    from clbench.runner import run
    from clbench.tracking import git_commit

    seeds = list(seeds if seeds is not None else track.seeds)
    locs = check_locations(track, locations or {})

    def values_for(method: str, seed: int) -> dict[str, Any]:
        extra = track.health.upper_options if method == track.health.upper else {}
        return {**track.run_values(), **extra, **locs, "method": method, "seed": seed,
                "tracking.runs_dir": runs_dir}

    def one(method: str, seed: int) -> RunRecord:
        values = values_for(method, seed)
        if run_fn is not None:
            return run_fn(values)
        return run(build_run_config(values), resume=resume, force=not resume)

    start = time.perf_counter()
    if workers > 1 and run_fn is None:
        from clbench.workers import run_slices

        todo = [values_for(m, s) for s in seeds for m in (track.health.lower, track.health.upper)]
        threads = max(1, (os.cpu_count() or 1) // workers)
        run_slices(_train_runs, [(todo[k::workers], resume, threads) for k in range(workers)], "health-check")
        resume = True  # the workers trained every run: read them back
    lower = [one(track.health.lower, s) for s in seeds]
    upper = [one(track.health.upper, s) for s in seeds]
    rec = health_record(track, lower, upper, seeds, git_commit(), locs)
    rec["check_wall_time_s"] = time.perf_counter() - start
    if write:
        atomic_write_json(health_path(track), rec)
        health_path(track).with_suffix(".md").write_text(health_table(rec) + "\n")
    return rec


def load_health(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None

"""Owns ``clbench leaderboard reproduce``: re-run one evaluation seed of an entry from the settings
it records and compare the new R with the recorded one.

The run uses exactly what the entry records: its method, the evaluation scenario with its
options, the protocol's fixed settings plus the chosen hyperparameters (``config``), and the
seed. It is trained from scratch in its own runs directory (``runs/reproduce`` by default; never
the protocol's), without MLflow. It reproduces when the scenario's data are the same (content
hash) and every cell of R is within ``atol`` of the recorded one.

**Tolerance.** On the machine, code and packages that produced the entry the same config gives
the same R bit for bit (a tested property of the runner), so the difference is 0. Elsewhere,
float summation order (other CPUs, thread counts, BLAS builds) moves weights by ~1e-4 and can flip
the few test predictions that sit on a decision boundary. The default ``atol`` of 0.02 is 2
points of accuracy per cell of R: about 4 flipped predictions of a 200-example test split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clbench.errors import ClbenchError
from clbench.leaderboard.record import LeaderboardEntry

DEFAULT_ATOL = 0.02
DEFAULT_RUNS_DIR = "runs/reproduce"


@dataclass(frozen=True)
class Reproduction:
    """The outcome of re-running one seed of an entry."""

    entry: str
    seed: int
    atol: float
    max_abs_diff: float  # over every cell of R
    acc_recorded: float | None
    acc_rerun: float
    same_data: bool  # the evaluation scenario's content hash matches the entry's
    run_dir: str

    @property
    def reproduced(self) -> bool:
        return self.same_data and self.max_abs_diff <= self.atol

    def report(self) -> str:
        data = "same data" if self.same_data else "DIFFERENT DATA (content hash differs)"
        verdict = "reproduced" if self.reproduced else "NOT reproduced"
        acc = "n/a" if self.acc_recorded is None else f"{self.acc_recorded:.4f}"
        return (f"{self.entry} seed {self.seed}: {verdict}: max |ΔR| = {self.max_abs_diff:.4g} "
                f"(tolerance {self.atol:g}); ACC recorded {acc}, rerun {self.acc_rerun:.4f}; "
                f"{data}; run in {self.run_dir}")


def run_values(entry: LeaderboardEntry, seed: int, runs_dir: str) -> dict[str, Any]:
    """The dotted run settings of ``entry``'s evaluation run with ``seed``."""
    ev = entry.evaluation
    return {**entry.config, "method": entry.method, "scenario": ev.scenario, "seed": seed,
            **{f"scenario.{k}": v for k, v in ev.options.items()},
            "tracking.runs_dir": runs_dir, "tracking.mlflow": False}


def reproduce(path: str | Path, seed: int = 0, atol: float = DEFAULT_ATOL,
              runs_dir: str = DEFAULT_RUNS_DIR, progress: bool = True) -> Reproduction:
    """Re-run ``seed`` of the entry at ``path`` and compare R (see the module docstring).

    Raises:
        ClbenchError: the file is not an entry, or the entry has no run with ``seed``.
    """
    from clbench.config import build_run_config
    from clbench.runner import run

    p = Path(path)
    try:
        entry = LeaderboardEntry.from_json(json.loads(p.read_text(encoding="utf-8")), str(p))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClbenchError(f"cannot read entry {p}: {exc}") from exc
    recorded = next((r for r in entry.runs if r.seed == seed), None)
    if recorded is None:
        raise ClbenchError(f"{p} has no run with seed {seed}; its seeds: {[r.seed for r in entry.runs]}")
    cfg = build_run_config({**run_values(entry, seed, runs_dir), "trainer.progress": progress})
    record = run(cfg, force=True)
    if len(record.R) != len(recorded.R):
        raise ClbenchError(f"the rerun has {len(record.R)} experiences, the entry {len(recorded.R)}")
    diff = max(abs(a - b) for ra, rb in zip(record.R, recorded.R, strict=True)
               for a, b in zip(ra, rb, strict=True))
    return Reproduction(entry=str(p), seed=seed, atol=atol, max_abs_diff=diff,
                        acc_recorded=recorded.metrics.get("acc"), acc_rerun=record.metrics["acc"],
                        same_data=record.scenario.content_hash == entry.evaluation.content_hash,
                        run_dir=record.run_dir)

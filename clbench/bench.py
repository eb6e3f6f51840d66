"""Owns ``make bench``: one method on the default suite with fixed settings, one results table.

The settings are fixed so that every method is compared under the same budget; user overrides
(``key=value``) are applied on top and shown in the run configs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from clbench.config import build_run_config
from clbench.report import aggregate_table, summary_table
from clbench.runner import run

# Fixed settings (model, trainer) shared by the suite. Offline, minutes on 2 CPU cores.
FIXED: dict[str, Any] = {"model": "mlp", "trainer.epochs": 5, "trainer.batch_size": 32,
                         "trainer.lr": 0.01, "trainer.momentum": 0.9}
SUITE: dict[str, dict[str, Any]] = {"split_mnist": FIXED, "rotated_mnist": FIXED}
BENCH_RUNS_DIR = "runs/bench"


def run_bench(overrides: Mapping[str, Any], seeds: Sequence[int] = (0, 1, 2), resume: bool = False) -> str:
    """Run the suite for ``overrides['method']`` and return the Markdown summary table."""
    configs = []
    for scenario, fixed in SUITE.items():
        for seed in seeds:
            values = {**fixed, "tracking.runs_dir": BENCH_RUNS_DIR, **overrides,
                      "scenario": scenario, "seed": seed}
            configs.append(build_run_config(values))  # validate all before running any
    results = [run(cfg, resume=resume, force=not resume) for cfg in configs]
    per_seed = summary_table(results)
    if len(seeds) == 1:
        return per_seed
    return f"{aggregate_table(results)}\n\nPer seed:\n\n{per_seed}"

"""Owns ``make bench``: one method on the default suite with fixed settings, one results table.

The settings are fixed so that every method is compared under the same budget; user overrides
(``key=value``) are applied on top and shown in the run configs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from clbench.config import build_run_config
from clbench.report import summary_table
from clbench.runner import run

# scenario -> fixed overrides (model, trainer). Offline, a few minutes on 2 CPU cores.
SUITE: dict[str, dict[str, Any]] = {
    "split_mnist": {"model": "mlp", "trainer.epochs": 2, "trainer.batch_size": 32,
                    "trainer.lr": 0.01, "trainer.momentum": 0.9},
    "rotated_mnist": {"model": "mlp", "trainer.epochs": 2, "trainer.batch_size": 32,
                      "trainer.lr": 0.01, "trainer.momentum": 0.9},
}
BENCH_RUNS_DIR = "runs/bench"


def run_bench(overrides: Mapping[str, Any], seeds: Sequence[int] = (0,), resume: bool = False) -> str:
    """Run the suite for ``overrides['method']`` and return the Markdown summary table."""
    configs = []
    for scenario, fixed in SUITE.items():
        for seed in seeds:
            values = {**fixed, "tracking.runs_dir": BENCH_RUNS_DIR, **overrides,
                      "scenario": scenario, "seed": seed}
            configs.append(build_run_config(values))  # validate all before running any
    results = [run(cfg, resume=resume, force=not resume) for cfg in configs]
    return summary_table(results)

"""Owns ``make bench`` and ``make compare``: fixed settings on the default suite, one table.

The settings are fixed so that every method is compared under the same budget; user overrides
(``key=value``) are applied on top and recorded in the run configs. Pairs a method cannot run
(declared capabilities) are skipped with the reason, never silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clbench.config import RunConfig, build_run_config
from clbench.errors import ConfigError, IncompatibleError
from clbench.registry import METHODS
from clbench.report import aggregate_table, domain_error_table, summary_table
from clbench.runner import run

# Fixed settings shared by the suite. Offline, minutes on 2 CPU cores.
SCRATCH: dict[str, Any] = {"model": "mlp", "trainer.epochs": 5, "trainer.batch_size": 32,
                           "trainer.lr": 0.01, "trainer.momentum": 0.9}
FOUNDATION: dict[str, Any] = {"model": "vit_tiny", "trainer.epochs": 2, "trainer.batch_size": 32,
                              "trainer.optimizer": "adamw", "trainer.lr": 0.001,
                              "trainer.weight_decay": 0.01}
SUITE: dict[str, dict[str, Any]] = {
    "split_mnist": SCRATCH, "rotated_mnist": SCRATCH,
    "rotated_mnist_ft": FOUNDATION, "split_rotated_mnist_ft": FOUNDATION,
}
# Language-model track (offline default): SmolLM2-135M-Instruct adapting to three domains of
# unlabeled text, general capability by lm-eval on the bundled task. Minutes per run on 2 cores.
LM: dict[str, Any] = {"model": "hf_causal_lm", "trainer.epochs": 1, "trainer.batch_size": 8,
                      "trainer.optimizer": "adamw", "trainer.lr": 0.00002, "trainer.weight_decay": 0.01,
                      "scenario.max_length": 64, "scenario.max_blocks": 120, "eval.lm_eval_limit": 100,
                      "eval.validation": False}
# Standard CL benchmark with MiniLM + head (LFPT5 few-shot, order 1): needs the LFPT5 data
# (../shared/data or scenario.data_dir); test sets capped for CPU time.
TEXT_CL: dict[str, Any] = {"model": "hf_encoder", "trainer.epochs": 5, "trainer.batch_size": 16,
                           "trainer.optimizer": "adamw", "trainer.lr": 0.0002, "trainer.weight_decay": 0.01,
                           "scenario.max_length": 128, "scenario.max_test_per_task": 200}
# Continual test-time adaptation (offline): MNIST-C, 15 corruptions at severity 5 in the standard
# order, one online pass; a BatchNorm CNN pretrained on the clean source digits. 500 target digits
# per domain in batches of 50 (10 adaptation steps per domain) keep CoTTA's 32 augmented teacher
# passes within minutes on 2 CPU cores. Methods keep their official test-time hyperparameters.
TTA: dict[str, Any] = {"model": "cnn_bn", "model.channels": 16, "scenario.severity": 5,
                       "scenario.n_examples": 500, "scenario.batch_size": 50, "eval.validation": False}
TRACKS: dict[str, dict[str, dict[str, Any]]] = {"tta": {"mnist_c_stream": TTA},
                                                "vision": SUITE, "lm": {"text_domains": LM},
                                                "lm_standard_cl": {"text_cl": TEXT_CL}}
BENCH_RUNS_DIR = "runs/bench"
COMPARE_RUNS_DIR = "runs/compare"


def default_track(method: str) -> str:
    """``tta`` for methods that only run on test-time streams, else ``vision``."""
    return "tta" if set(METHODS.get(method).scenario_types) == {"test_time"} else "vision"


def suite_for(track: str) -> dict[str, dict[str, Any]]:
    """The scenarios and fixed settings of a track (``vision`` or ``lm``)."""
    if track not in TRACKS:
        raise ConfigError("track", track, sorted(TRACKS))
    return SUITE if track == "vision" else TRACKS[track]


def suite_configs(overrides: Mapping[str, Any], seeds: Sequence[int], runs_dir: str,
                  track: str = "vision") -> list[RunConfig]:
    """One validated RunConfig per (scenario, seed); overrides apply on top of the fixed settings."""
    suite = suite_for(track)
    return [build_run_config({**fixed, "tracking.runs_dir": runs_dir, **overrides,
                              "scenario": scenario, "seed": seed})
            for scenario, fixed in suite.items() for seed in seeds]


def run_all(configs: Sequence[RunConfig], resume: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every config; incompatible (method, scenario) pairs are skipped with the reason."""
    results, skipped = [], []
    for cfg in configs:
        try:
            results.append(run(cfg, resume=resume, force=not resume))
        except IncompatibleError as exc:
            note = f"skipped {cfg.method} on {cfg.scenario}: {exc}"
            if note not in skipped:
                skipped.append(note)
    return results, skipped


def run_bench(overrides: Mapping[str, Any], seeds: Sequence[int] = (0, 1, 2), resume: bool = False,
              track: str = "vision") -> str:
    """Run the suite for ``overrides['method']`` and return the Markdown summary."""
    configs = suite_configs(overrides, seeds, BENCH_RUNS_DIR, track)  # validate all before running any
    results, skipped = run_all(configs, resume)
    if results and all(r["scenario"]["type"] == "test_time" for r in results):
        return "\n\n".join([domain_error_table(results), *skipped])
    parts = [aggregate_table(results)] if results else []
    if len(seeds) > 1 and results:
        parts.append("Per seed:\n\n" + summary_table(results))
    return "\n\n".join(parts + skipped)


def run_compare(seeds: Sequence[int] = (0, 1, 2), resume: bool = False,
                readme: Path | None = None, track: str = "vision",
                methods: Sequence[str] | None = None) -> str:
    """Methods (default: all registered) on a track's suite; one table per scenario.

    The tables are written into ``readme`` between ``<!-- compare-<track>:start/end -->``.
    """
    from clbench.report import compare_tables, domain_error_table

    suite = suite_for(track)
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    for method in methods or METHODS.names():
        r, s = run_all(suite_configs({"method": method}, seeds, COMPARE_RUNS_DIR, track), resume)
        results += r
        skipped += s
    if results and all("test_time" in r for r in results):  # test-time track: per-domain errors
        text = "\n\n".join(f"**{name}** (error %, mean ± std over seeds {', '.join(map(str, seeds))}; "
                            "source acc after = source test accuracy after the stream)\n\n"
                            + domain_error_table([r for r in results if r["scenario"]["name"] == name],
                                                 per_seed=False)
                            for name in suite)
    else:
        text = compare_tables(results, list(suite), seeds)
    if skipped:
        text += "\n\n" + "\n".join(f"- {s}" for s in skipped)
    if readme is not None:
        embed(readme, f"compare-{track}", text)
    return text


def embed(path: Path, tag: str, text: str) -> None:
    """Replace the block between ``<!-- tag:start -->`` and ``<!-- tag:end -->`` in ``path``."""
    doc = path.read_text()
    start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
    if start not in doc or end not in doc:
        raise ValueError(f"{path} has no {start} ... {end} block")
    block = f"{start}\n<!-- generated by `make compare`; do not edit by hand -->\n{text}\n{end}"
    path.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, doc, flags=re.S))

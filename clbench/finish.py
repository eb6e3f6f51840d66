"""Owns a run directory's files after training, and reading a finished run back.

``results.json`` is written first (:func:`clbench.tracking.write_results`); then
:func:`finish_outputs` writes ``R.json`` and ``R.png``, logs the final metrics (at step = the
number of experiences) and artifacts (with ``samples.jsonl``, the judged generations, where the
stream judges by generation) and ends the tracked run FINISHED. Each of those steps can be redone, so ``--resume`` completes a
finish that a kill interrupted.
"""

from __future__ import annotations

import json
from pathlib import Path

from clbench.checkpoint import atomic_write_json
from clbench.config import RunConfig
from clbench.errors import ClbenchError
from clbench.evaluation import SAMPLES
from clbench.loops import numeric
from clbench.options import to_plain
from clbench.records import RunRecord
from clbench.tracking import Tracker, heatmap_png

STATUS = "status.json"  # why a run stopped (failed or killed); removed when it finishes
MLFLOW_ID = "mlflow_run_id"  # the MLflow run of this directory, written when it starts


def finish_outputs(run_dir: Path, record: RunRecord, cfg: RunConfig, tracker: Tracker,
                   extra: list[Path] | None = None) -> None:
    """Everything after ``results.json``: R.json, R.png, final metrics, artifacts, FINISHED.
    Each step can be redone, so ``--resume`` completes a finish that a kill interrupted."""
    (run_dir / STATUS).unlink(missing_ok=True)
    cost = {f"cost/{k}": v for k, v in numeric(to_plain(record.cost)).items()}  # not the per-experience names
    # once, one step after the last experience's (step = the number of experiences), under the
    # names searches use (``acc``, ``cost/train_time_s``): one value each, compared as bars
    tracker.log_metrics({**record.metrics, **cost}, step=record.scenario.n_experiences)
    r_json = run_dir / "R.json"
    atomic_write_json(r_json, {"R": record.R, "R_pretrain": record.R_pretrain})
    png = heatmap_png(record.R, run_dir / "R.png", f"{cfg.method} on {cfg.scenario} (seed {cfg.seed})")
    samples = [run_dir / SAMPLES] if (run_dir / SAMPLES).is_file() else []  # generative streams
    tracker.log_artifacts([run_dir / "results.json", r_json, png, *samples, *(extra or [])])
    tracker.end("FINISHED")


def read_finished(path: Path) -> RunRecord:
    """The record of a finished run; a damaged results.json is one clear error."""
    try:
        return RunRecord.from_json(json.loads(path.read_text(encoding="utf-8")), str(path))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ClbenchError(f"{path} is damaged ({type(exc).__name__}: {exc}); rerun with --force to "
                           "train this run again") from exc


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None

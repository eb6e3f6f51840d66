"""Owns run directories, ``results.json`` (schema-versioned), MLflow logging and the tracker
interface (:class:`Tracker`; the other backends live in :mod:`clbench.trackers`).

``results.json`` is always written to the run directory first, so a tracking failure loses
nothing. MLflow: the embedded default store is ``sqlite:///<cwd>/mlflow.db`` (artifacts in
``<cwd>/mlartifacts``); ``MLFLOW_TRACKING_URI`` or ``tracking.uri`` select another store or a
server. Metric names use only ``[a-z0-9_]`` (no quoting in MLflow search) except the
general-capability ones, ``general/<source>/<metric>``, which need backticks in a search.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import platform
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clbench.checkpoint import atomic_write_bytes, atomic_write_json
from clbench.config import TrackingConfig
from clbench.options import flatten
from clbench.records import RunRecord

RESULTS = "results.json"
_PACKAGES = ("torch", "torchvision", "numpy", "avalanche-lib", "mlflow", "transformers",
             "datasets", "lm-eval", "mlxtend", "scikit-learn")


def tracking_uri(cfg: TrackingConfig) -> str:
    """``tracking.uri`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<cwd>/mlflow.db``."""
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def environment(device: str) -> dict[str, Any]:
    """Git commit, package versions, device, world size, Python and platform."""
    versions: dict[str, str | None] = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "git_commit": git_commit(),
        "packages": versions,
        "device": device,
        "device_name": _device_name(device),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# What a board writes into the checkout (entries, rendered pages, tuned configs): changing them
# changes no run, so they do not make a tree dirty. Otherwise a board made at a new commit over a
# committed one would turn dirty at its first overwritten entry. Track declarations (track.yaml)
# and reported.yaml still count.
GENERATED = (":(exclude,glob)leaderboards/**/*.json", ":(exclude,glob)leaderboards/**/*.md",
             ":(exclude,glob)leaderboards/**/*.html", ":(exclude,glob)leaderboards/**/*.png",
             ":(exclude,glob)leaderboards/*/configs/**")


def git_commit(root: Path | None = None) -> str | None:
    """HEAD of the checkout holding clbench (or ``root``), with ``-dirty`` when a tracked file
    other than the boards' generated outputs (:data:`GENERATED`) has uncommitted changes."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no",
                                "--", ".", *GENERATED], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _device_name(device: str) -> str:
    """The GPU's name; on CPU the processor's model and the vector instruction set torch's kernels
    use (``Intel(R) Xeon(R) Processor (AVX512)``): runs on two CPUs that differ there can differ in
    the last bits of every sum, and so in R (see ``clbench leaderboard reproduce``)."""
    import torch

    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name(0))
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    model = model or platform.processor() or platform.machine()
    with contextlib.suppress(Exception):
        return f"{model} ({torch.backends.cpu.get_cpu_capability()})"
    return model


def write_results(run_dir: Path, record: RunRecord) -> Path:
    """Atomically write ``results.json`` (the record's JSON, schema version first)."""
    path = run_dir / RESULTS
    atomic_write_json(path, record.to_json())
    return path


def heatmap_png(R: list[list[float]], path: Path, title: str) -> Path:
    """Draw R as an annotated heatmap (rows: trained through i; columns: evaluated on j)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = np.asarray(R, dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * a.shape[1], 1.0 + 0.6 * a.shape[0]))
    im = ax.imshow(a, vmin=0.0, vmax=1.0, cmap="viridis")
    for (i, j), v in np.ndenumerate(a):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    ax.set_xlabel("evaluated on experience j")
    ax.set_ylabel("trained through experience i")
    ax.set_xticks(range(a.shape[1]))
    ax.set_yticks(range(a.shape[0]))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class Tracker(Protocol):
    """What the runner and the tuning protocol log through. Backends (``tracking.backends``):
    MLflow (:class:`MlflowRun`, the default) and those of :mod:`clbench.trackers` (TensorBoard,
    CSV, W&B offline); :class:`clbench.trackers.FanOut` logs to several. Every call degrades to a
    warning on failure: a tracker never loses a run.

    ``start`` receives flat params (the runner gives them under the command line's names,
    :func:`clbench.trackers.cli_params`) and tags (a run's include ``run_dir``, where the file
    backends write); ``log_metrics`` a step (experience index; the number of experiences for the
    final metrics; the optimizer step for ``train_step_loss`` and ``train_step_peak_mem_mb``)."""

    uri: str
    run_id: str | None

    def start(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str],
              resume_id: str | None = None) -> str | None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifacts(self, paths: list[Path]) -> None: ...

    def end(self, status: str, reason: str | None = None) -> None: ...


def open_tracker(cfg: TrackingConfig, run_id: str | None = None, run_dir: Path | None = None) -> Tracker:
    """The tracker of ``cfg``'s selected backends (``tracking.backends`` less mlflow when
    ``tracking.mlflow=false``; none selected: it records nothing), attached to an existing MLflow
    run when ``run_id`` is given. The file backends write into ``run_dir``, or, when it is None,
    into the ``run_dir`` tag given to ``start``."""
    selected = cfg.selected()
    mlflow = MlflowRun(cfg)
    if "mlflow" in selected:
        mlflow.run_id = run_id
    others = [b for b in selected if b != "mlflow"]
    if not others:
        return mlflow
    from clbench.trackers import FanOut, build

    return FanOut(mlflow if "mlflow" in selected else None, [build(b, cfg, run_dir) for b in others])


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock (``<db>.lock``, ``flock``) around a block that may create a SQLite
    store's tables or experiments; a no-op for other stores (servers serialise themselves)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    lock = Path(str(db) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            repaired = repair_sqlite_store(db)
            if repaired:
                warnings.warn(f"MLflow store {db}: an interrupted schema migration had left "
                              f"{', '.join(repaired)}; repaired", stacklevel=3)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def repair_sqlite_store(db: Path) -> list[str]:
    """Undo what an interrupted Alembic batch migration leaves in a SQLite store (its
    ``_alembic_tmp_<table>`` copies, which make every later migration fail with "table already
    exists"): a copy whose table still exists is dropped; a copy whose table is gone (killed
    between the drop and the rename) becomes that table again. Returns what was repaired."""
    import sqlite3

    if not db.is_file():
        return []
    done = []
    with contextlib.closing(sqlite3.connect(db)) as con:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for tmp in sorted(n for n in names if n.startswith("_alembic_tmp_")):
            table = tmp[len("_alembic_tmp_"):]
            if table in names:
                con.execute(f'DROP TABLE "{tmp}"')
                done.append(f"{tmp} (dropped; {table} is intact)")
            else:
                con.execute(f'ALTER TABLE "{tmp}" RENAME TO "{table}"')
                done.append(f"{tmp} (renamed back to {table})")
        con.commit()
    return done


class MlflowRun:
    """One MLflow run per (method, scenario, seed); every call degrades to a warning on failure."""

    def __init__(self, cfg: TrackingConfig) -> None:
        self.cfg = cfg
        self.uri = tracking_uri(cfg)
        self.run_id: str | None = None
        self._client: Any = None

    def start(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str],
              resume_id: str | None = None) -> str | None:
        """Create (or reopen, when resuming) the run and log flattened params."""
        if "mlflow" not in self.cfg.selected():
            return None
        try:
            # processes starting together on a fresh SQLite store would each create its tables
            # (and the experiment) and collide; the first store access is serialised
            with store_lock(self.uri):
                client = self._get_client()
                if resume_id:
                    self.run_id = resume_id
                    client.update_run(resume_id, status="RUNNING")
                    return resume_id
                exp_id = self._experiment_id(client)
                run = client.create_run(exp_id, run_name=run_name, tags=dict(tags))
            self.run_id = run.info.run_id
            self._log_params(flatten(params))
        except Exception as exc:  # noqa: BLE001 - tracking must never lose a run
            self._warn("start", exc)
        return self.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if np.isfinite(v)]
        self._call("log_metrics", lambda c: c.log_batch(self.run_id, metrics=items))

    def log_artifacts(self, paths: list[Path]) -> None:
        for p in paths:
            self._call("log_artifact", lambda c, p=p: c.log_artifact(self.run_id, str(p)))

    def end(self, status: str, reason: str | None = None) -> None:
        """Mark the run FINISHED / FAILED / KILLED (with ``failure_reason`` tag)."""
        if self.run_id is None:
            return
        if reason:
            self._call("set_tag", lambda c: c.set_tag(self.run_id, "failure_reason", reason[:4000]))
        elif status == "FINISHED":  # a run that failed before and finished on --resume
            self._call("delete_tag", lambda c: self._drop_tag(c, "failure_reason"))
        self._call("terminate", lambda c: c.set_terminated(self.run_id, status))

    def _drop_tag(self, client: Any, key: str) -> None:
        if key in client.get_run(self.run_id).data.tags:
            client.delete_tag(self.run_id, key)

    def _log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self._get_client().log_batch(self.run_id, params=items[i : i + 100])

    def _experiment_id(self, client: Any) -> str:
        exp = client.get_experiment_by_name(self.cfg.experiment)
        if exp is not None:
            return str(exp.experiment_id)
        location = None
        if self.uri.startswith("sqlite:///"):
            location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        return str(client.create_experiment(self.cfg.experiment, artifact_location=location))

    def _get_client(self) -> Any:
        if self._client is None:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _call(self, what: str, fn: Any) -> None:
        if self.run_id is None:
            return
        try:
            fn(self._get_client())
        except Exception as exc:  # noqa: BLE001
            self._warn(what, exc)

    def _warn(self, what: str, exc: Exception) -> None:
        warnings.warn(f"MLflow {what} failed ({self.uri}): {exc}; results.json is unaffected",
                      stacklevel=3)


def save_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())

"""Owns the tracking backends besides MLflow and the tracker that fans out to all selected ones.

``tracking.backends`` (any of :data:`clbench.config.TRACKING_BACKENDS`) selects them;
:func:`clbench.tracking.open_tracker` builds the :class:`FanOut` of those chosen. Every backend
has the :class:`clbench.tracking.Tracker` methods and degrades to a warning on failure: a tracker
never loses a run (``results.json`` is written first). The file backends write into the run
directory, which they take from the ``run_dir`` tag given to ``start`` (or from ``run_dir``
when a finished run is attached to): ``csv`` writes ``metrics.csv`` (``step,name,value``, one row
per logged value), ``params.json`` and ``tags.json``; ``tensorboard`` writes event files under
``tensorboard/``; ``wandb`` runs W&B in offline mode under ``wandb/`` (never the network; ``wandb
sync`` uploads a run later). A resumed run appends to the same files and may repeat the rows
logged after its last checkpoint.

Under a multi-process launch only rank 0 writes these files (:func:`process_rank`). The other
processes (replicas) train and log the same values but keep only their own run files under
``<runs_dir>/_replicas/rank<r>`` (:func:`clbench.resolve.distributed_view`, which turns MLflow off
for them): tracker files there would be a second copy of the same run (another W&B offline run to
sync, other TensorBoard event files), so their file backends log nothing.

Steps: per-experience metrics have ``step`` = experience index, the final metrics ``step`` = the
number of experiences, ``train_step_loss`` and ``train_step_peak_mem_mb`` (``tracking.loss_every``)
``step`` = the optimizer step counted over the whole stream.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import secrets
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clbench.checkpoint import atomic_write_bytes, atomic_write_json
from clbench.config import TrackingConfig
from clbench.errors import ConfigError
from clbench.options import flatten

STEP_LOSS = "train_step_loss"  # the training loss every ``tracking.loss_every`` optimizer steps
# beside it: the memory high-water mark up to that step (peak CUDA memory allocated since the
# experience began on CUDA, the process's peak resident set elsewhere), in MiB
STEP_PEAK_MEM = "train_step_peak_mem_mb"
STEP_PREFIX = "train_step_"  # metrics logged on the optimizer-step axis
_PLUGIN_OPTIONS = ("method", "scenario", "model")
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb"}  # backend -> the package it needs


def cli_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run's resolved config as flat params under the names the command line takes:
    ``method_options.x`` -> ``method.x`` (the same for ``scenario`` and ``model``),
    ``trainer.lr`` as it is; a plug-in without options adds nothing."""
    out: dict[str, Any] = {}
    for key, value in flatten(config).items():
        head, dot, rest = key.partition(".")
        if head.endswith("_options") and head[: -len("_options")] in _PLUGIN_OPTIONS:
            if dot:
                out[f"{head[: -len('_options')]}.{rest}"] = value
            continue  # an empty options mapping
        out[key] = value
    return out


def check_backends(cfg: TrackingConfig) -> None:
    """Refuse, before a run starts, a selected backend whose package is not installed."""
    for name in cfg.selected():
        pkg = _PACKAGE.get(name)
        if pkg and importlib.util.find_spec(pkg) is None:
            raise ConfigError("tracking.backends", name,
                              f"installed backends only: `{pkg}` is not installed (pip install {pkg}), "
                              "or leave it out of tracking.backends")


def build(name: str, cfg: TrackingConfig, run_dir: Path | None) -> Any:
    """The backend ``name`` (not mlflow) writing into ``run_dir`` (None: the ``run_dir`` tag)."""
    kinds: dict[str, type[FileTracker]] = {"csv": CsvTracker, "tensorboard": TensorBoardTracker,
                                           "wandb": WandbTracker}
    return kinds[name](cfg, run_dir)


def process_rank() -> int:
    """This process's rank in a multi-process launch: the initialised process group's, else the
    ``RANK`` the launcher (``torchrun``, ``accelerate launch``) sets when ``WORLD_SIZE`` > 1 (as
    :func:`clbench.resolve.distributed_view` tells replicas apart); 0 in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ.get("RANK", "0"))
    return 0


def finite(metrics: Mapping[str, float]) -> dict[str, float]:
    """The finite values of ``metrics`` as floats (MLflow drops NaN/inf; so do the others)."""
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


class FanOut:
    """Logs to every selected backend. ``uri`` and ``run_id`` are the MLflow backend's (the run id
    the run directory and ``results.json`` keep); without MLflow, ``run_id`` stays None."""

    def __init__(self, mlflow: Any, others: list[FileTracker]) -> None:
        self._mlflow = mlflow
        self.members: list[Any] = ([mlflow] if mlflow is not None else []) + list(others)
        self.uri: str = mlflow.uri if mlflow is not None else ""

    @property
    def run_id(self) -> str | None:
        return self._mlflow.run_id if self._mlflow is not None else None

    @run_id.setter
    def run_id(self, value: str | None) -> None:
        if self._mlflow is not None:
            self._mlflow.run_id = value

    def start(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str],
              resume_id: str | None = None) -> str | None:
        for m in self.members:
            m.start(run_name, params, tags, resume_id=resume_id)
        return self.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for m in self.members:
            m.log_metrics(metrics, step)

    def log_artifacts(self, paths: list[Path]) -> None:
        for m in self.members:
            m.log_artifacts(paths)

    def end(self, status: str, reason: str | None = None) -> None:
        for m in self.members:
            m.end(status, reason)


class FileTracker:
    """A backend that writes into the run directory; failures become warnings. In a process of rank
    > 0 (:func:`process_rank`, read when the backend is built) it writes nothing."""

    name = ""
    uri = ""
    run_id: str | None = None

    def __init__(self, cfg: TrackingConfig, run_dir: Path | None) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.broken = False  # a failed backend stays quiet for the rest of the run
        self.replica = process_rank() != 0  # a data-parallel replica: rank 0 writes the files

    def start(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str],
              resume_id: str | None = None) -> str | None:
        if self.run_dir is None and "run_dir" in tags:
            self.run_dir = Path(tags["run_dir"])
        self._guard("start", lambda: self._start(run_name, flatten(params), dict(tags)))
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        values = finite(metrics)
        if values:
            self._guard("log_metrics", lambda: self._log(values, step))

    def log_artifacts(self, paths: list[Path]) -> None:
        """Artifacts already lie in the run directory."""

    def end(self, status: str, reason: str | None = None) -> None:
        self._guard("end", lambda: self._end(status))

    def _start(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        raise NotImplementedError

    def _log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _end(self, status: str) -> None:
        """Nothing to close by default."""

    def _guard(self, what: str, fn: Any) -> None:
        if self.broken or self.replica or self.run_dir is None:
            return
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - tracking must never lose a run
            self.broken = True
            warnings.warn(f"{self.name} tracking {what} failed in {self.run_dir}: {type(exc).__name__}: "
                          f"{exc}; it logs nothing more for this run (results.json is unaffected)",
                          stacklevel=3)


class CsvTracker(FileTracker):
    """``metrics.csv`` (``step,name,value``), ``params.json`` and ``tags.json`` in the run dir."""

    name = "csv"

    def _start(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        assert self.run_dir is not None
        atomic_write_json(self.run_dir / "params.json", params)
        atomic_write_json(self.run_dir / "tags.json", {"run_name": run_name, **tags})

    def _log(self, metrics: dict[str, float], step: int) -> None:
        assert self.run_dir is not None
        path = self.run_dir / "metrics.csv"
        new = not path.is_file() or path.stat().st_size == 0
        with path.open("a", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(["step", "name", "value"])
            w.writerows([step, k, repr(v)] for k, v in metrics.items())


class TensorBoardTracker(FileTracker):
    """Scalars under ``<run dir>/tensorboard`` (``torch.utils.tensorboard``); params and tags as a
    text summary."""

    name = "tensorboard"

    def __init__(self, cfg: TrackingConfig, run_dir: Path | None) -> None:
        super().__init__(cfg, run_dir)
        self._writer: Any = None

    def _open(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            assert self.run_dir is not None
            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        return self._writer

    def _start(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in sorted({**params, **tags}.items()))
        self._open().add_text("config", f"**{run_name}**\n\n| name | value |\n|---|---|\n{rows}", 0)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        w = self._open()
        for k, v in metrics.items():
            w.add_scalar(k, v, step)
        w.flush()

    def _end(self, status: str) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbTracker(FileTracker):
    """Weights & Biases in offline mode under ``<run dir>/wandb`` (``wandb sync`` uploads it
    later). Project = ``tracking.experiment``; config = the params, with the tags under ``tags``;
    the run id is kept in ``<run dir>/wandb_run_id`` so a resumed run continues it. W&B steps only
    grow, so each metric is logged against its own axis: ``experience`` (per-experience and final
    metrics) or ``optimizer_step`` (``train_step_loss``, ``train_step_peak_mem_mb``); the summary holds
    the final values."""

    name = "wandb"

    def __init__(self, cfg: TrackingConfig, run_dir: Path | None) -> None:
        super().__init__(cfg, run_dir)
        self._run: Any = None
        self._defined: set[str] = set()

    def _open(self, run_name: str | None = None, config: dict[str, Any] | None = None) -> Any:
        if self._run is None:
            import wandb

            assert self.run_dir is not None
            id_file = self.run_dir / "wandb_run_id"
            run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
            atomic_write_bytes(id_file, run_id.encode())
            settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, save_code=False,
                                      disable_git=True, disable_job_creation=True, x_save_requirements=False)
            self._run = wandb.init(mode="offline", dir=str(self.run_dir), project=self.cfg.experiment,
                                   id=run_id, name=run_name, config=config, resume="allow",
                                   reinit="create_new", settings=settings)
            for axis in ("experience", "optimizer_step"):
                self._run.define_metric(axis, hidden=True)
        return self._run

    def _start(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        self._open(run_name, {**params, "tags": tags})

    def _log(self, metrics: dict[str, float], step: int) -> None:
        run = self._open()
        for axis in ("experience", "optimizer_step"):
            part = {k: v for k, v in metrics.items() if k.startswith(STEP_PREFIX) == (axis == "optimizer_step")}
            for k in sorted(part.keys() - self._defined):
                run.define_metric(k, step_metric=axis)
                self._defined.add(k)
            if part:
                run.log({axis: step, **part})

    def _end(self, status: str) -> None:
        if self._run is not None:
            self._run.finish(exit_code=0 if status == "FINISHED" else 1)
            self._run = None

"""Owns what a run is before it runs: the config resolved into plug-ins and validated options,
its run directory (and the lock that gives it one owner; a distributed replica's own directory),
seeding and the hash of a model's weights. Builds nothing heavy."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clbench.config import RunConfig
from clbench.errors import ClbenchError
from clbench.options import build_dataclass, to_plain
from clbench.protocol import Method, Scenario
from clbench.registry import METHODS, SCENARIOS


@dataclass(frozen=True)
class Resolved:
    """A validated run: the config plus the plug-ins' typed option objects."""

    cfg: RunConfig
    method_cls: type[Method]
    method_cfg: Any
    scenario: Scenario

    def config_dict(self) -> dict[str, Any]:
        d = self.cfg.to_dict()
        d["method_options"] = to_plain(self.method_cfg)
        d["scenario_options"] = to_plain(self.scenario.config)
        return d


def resolve(cfg: RunConfig) -> Resolved:
    """Look up plug-ins and validate their options (raises ConfigError; builds nothing)."""
    method_cls = METHODS.get(cfg.method)
    method_cfg = build_dataclass(method_cls.Config, cfg.method_options, "method")
    scenario_cls = SCENARIOS.get(cfg.scenario)
    scenario_cfg = build_dataclass(scenario_cls.Config, cfg.scenario_options, "scenario")
    return Resolved(cfg, method_cls, method_cfg, scenario_cls(scenario_cfg))


def run_dir_for(cfg: RunConfig) -> Path:
    return Path(cfg.tracking.runs_dir) / cfg.scenario / cfg.method / f"seed{cfg.seed}-{cfg.key()}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock (``flock`` on ``<run dir>.lock`` beside it) while a process works
    in ``run_dir``: a second process on the same directory (a duplicate run, a second
    ``--resume``, a ``--force`` while the owner is alive) gets one clear error."""
    lock = run_dir.with_name(run_dir.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            raise ClbenchError(f"run directory {run_dir} is in use by another process (pid {owner}); "
                               "wait for it to finish or stop it first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare_dir(run_dir: Path, resume: bool, force: bool) -> None:
    """Create (``force``: recreate) the run directory, refusing to reuse one without ``resume``;
    temp files of atomic writes a kill left behind are removed (the caller holds the lock)."""
    if run_dir.exists() and force:
        shutil.rmtree(run_dir)
    elif run_dir.exists() and not resume and any(run_dir.iterdir()):
        raise ClbenchError(
            f"run directory {run_dir} already exists; pass --resume to continue it "
            "or --force to start over"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    for tmp in run_dir.glob(".*.*"):  # ".<name>.<random>" from mkstemp in clbench.checkpoint
        if tmp.is_file():
            tmp.unlink()


def distributed_view(cfg: RunConfig) -> RunConfig:
    """Under ``accelerate launch``/``torchrun`` (WORLD_SIZE > 1): join the process group through
    accelerate (NCCL on GPUs, one device per process; gloo on CPU). Replicas other than rank 0
    train and evaluate identically but write only under ``<runs_dir>/_replicas/rank<r>``, without
    MLflow, so the run directory and the MLflow run are written once."""
    import os
    from dataclasses import replace

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return cfg
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.device.type == "cuda":
        torch.cuda.set_device(state.device)
    if state.process_index == 0:
        return cfg
    tracking = replace(cfg.tracking, mlflow=False,
                       runs_dir=str(Path(cfg.tracking.runs_dir) / "_replicas" / f"rank{state.process_index}"))
    return replace(cfg, tracking=tracking)

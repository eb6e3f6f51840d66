"""Owns one run end to end: resolve config, build stream/model/method, train, evaluate, record.

Everything that can be validated is validated before the run directory exists, so bad input
leaves nothing behind. Checkpoints are taken at experience boundaries; ``resume=True`` continues
from the last one and gives the same R as an uninterrupted run (per-experience reseeding).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clbench.checkpoint import (
    STEP_CHECKPOINT,
    atomic_write_bytes,
    atomic_write_json,
    load_checkpoint,
    save_checkpoint,
)
from clbench.config import RunConfig
from clbench.errors import ClbenchError, ConfigError
from clbench.finish import MLFLOW_ID, STATUS, finish_outputs, read_finished, read_text
from clbench.foundation import obtain_foundation
from clbench.loops import RunParts, TrainingLoop, derive_seed, peak_rss_mb
from clbench.models import build_model, count_params, is_pretrained, lm_eval_handle, model_family
from clbench.options import to_plain
from clbench.probes import probe_scores
from clbench.protocol import check_compatible, check_inputs
from clbench.records import (
    CostRecord,
    ExperienceRecord,
    GeneralRecord,
    MlflowRecord,
    ModelRecord,
    RunProgress,
    RunRecord,
    ScenarioRecord,
    SeedRecord,
)
from clbench.resolve import (
    Resolved,
    distributed_view,
    prepare_dir,
    resolve,
    run_dir_for,
    run_dir_lock,
    seed_everything,
    state_hash,
)
from clbench.sharding import (
    check_launch,
    check_shardable,
    load_model_state,
    model_state,
    shard_model,
)
from clbench.streams import Stream
from clbench.trackers import check_backends, cli_params
from clbench.tracking import environment, git_commit, open_tracker, write_results
from clbench.trainer import resolve_device, world_info
from clbench.tta import TestTimeLoop


def pretrains_foundation(model: Any, stream: Stream, cfg: RunConfig) -> bool:
    """Whether the run pretrains a foundation on the stream's source split before the stream:
    the scenario carries a source with a probe, ``foundation.pretrain`` is on, and the model does
    not arrive pretrained."""
    return (stream.source is not None and stream.source.probe and cfg.foundation.pretrain
            and not is_pretrained(model))


def starts_pretrained(model: Any, stream: Stream, cfg: RunConfig) -> bool:
    """Whether the stream's first experience meets a pretrained model: one that arrives
    pretrained, or one the run pretrains on the source split (:func:`pretrains_foundation`)."""
    return is_pretrained(model) or pretrains_foundation(model, stream, cfg)


def run(cfg: RunConfig, resume: bool = False, force: bool = False) -> RunRecord:
    """Run ``cfg`` and return its record (also written to ``<run dir>/results.json``).

    Args:
        resume: continue from the run directory's last checkpoint (a finished run is returned
            as is).
        force: delete an existing run directory for this config and start over.
    """
    cfg = distributed_view(cfg)
    res = resolve(cfg)
    check_backends(cfg.tracking)
    if cfg.eval.backend == "vllm":  # refused here, before anything is built, where it cannot run
        from clbench.vllm_backend import require_vllm

        require_vllm(world_info()[1])
    run_dir = run_dir_for(cfg)
    runs_root = Path(cfg.tracking.runs_dir)
    if any(p.exists() and not p.is_dir() for p in (runs_root, *runs_root.parents)):
        raise ConfigError("tracking.runs_dir", str(runs_root), "a directory (or a path that does not exist yet)")
    if resume and (run_dir / "results.json").is_file():
        record = read_finished(run_dir / "results.json")
        if not ((run_dir / "R.json").is_file() and (run_dir / "R.png").is_file()):  # killed while finishing
            with run_dir_lock(run_dir):
                tracker = open_tracker(cfg.tracking, run_id=record.mlflow.run_id, run_dir=run_dir)
                finish_outputs(run_dir, record, cfg, tracker)
        return record
    stream = res.scenario.build()
    seed_everything(cfg.seed)
    model_name = cfg.model if cfg.model != "auto" else (res.scenario.default_model or "auto")
    model, _ = build_model(model_name, stream.info(), dict(cfg.model_options))
    check_compatible(res.method_cls, stream, model_family(model))
    check_launch(stream.scenario_type, cfg.trainer.distributed, world_info()[1])
    check_shardable(res.method_cls, cfg.trainer.distributed, cfg.trainer.checkpoint_every, world_info()[1])
    check_inputs(model, stream)
    foundation = None
    # a model that arrives pretrained (Hugging Face checkpoints, a backbone given weights: read on
    # the instance, the class's declaration as default) is already the foundation: the source then
    # only serves calibration and the general-capability probe
    if pretrains_foundation(model, stream, cfg):
        foundation = obtain_foundation(model, model_name, dict(cfg.model_options), stream, cfg.foundation,
                                       resolve_device(cfg.trainer.device), cfg.trainer.progress)
        # pretraining draws random numbers, loading the cached foundation does not: reseed so
        # that the method's setup (random adapter inits...) does not depend on the cache
        seed_everything(cfg.seed)
    with run_dir_lock(run_dir):  # one process per run directory, for the whole run
        prepare_dir(run_dir, resume, force)
        return _Run(res, stream, model, run_dir, foundation).execute(resume)


class _Run:
    """The state of one executing run: builds the parts, chooses the loop by the stream's
    declared type, resumes, checkpoints, scores general capability and records."""

    def __init__(self, res: Resolved, stream: Stream, model: nn.Module, run_dir: Path,
                 foundation: dict[str, Any] | None) -> None:
        cfg = res.cfg
        self.res, self.cfg, self.stream, self.run_dir = res, cfg, stream, run_dir
        self.foundation = foundation
        self.device = resolve_device(cfg.trainer.device)
        self.init_hash = state_hash(model)
        self.method = res.method_cls(res.method_cfg)
        objective = stream.objective
        self.method.objective = objective
        self.model = self.method.setup(model, stream.info()).to(self.device)
        if cfg.trainer.distributed == "fsdp" and world_info()[1] > 1:
            self.model = shard_model(self.model)
        self.tracker = open_tracker(cfg.tracking)
        parts = RunParts(cfg, stream, self.model, self.method, self.device, objective, run_dir,
                         self.tracker.log_metrics)
        self.loop = TestTimeLoop(parts) if stream.scenario_type == "test_time" else TrainingLoop(parts)
        self.loop.evaluator.backend = cfg.eval.backend  # vllm: generation through clbench.vllm_backend
        self._content_hash: str | None = None
        self.progress = RunProgress(started_at=_now())

    def execute(self, resume: bool) -> RunRecord:
        if resume:
            self._restore()
            self.loop.resumed(self.progress)
        self._start_tracking()
        t0 = time.perf_counter()
        try:
            if self.progress.b is None:
                self._before_stream()
            for i in range(self.progress.done, len(self.stream)):
                self._experience(i, t0)
                t0 = time.perf_counter()
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            reason = f"{type(exc).__name__}: {exc}"
            atomic_write_json(self.run_dir / STATUS, {"status": status.lower(), "reason": reason,
                                                      "completed_experiences": self.progress.done})
            self.tracker.end(status, reason)
            raise
        return self._finish()

    def _before_stream(self) -> None:
        source = self.stream.source
        if source is not None and self.method.needs_source_data:
            self.method.on_source_data(self.model, source.train)
        self.progress.b = self.loop.before_stream()
        self.progress.general_before = self._general()
        self.tracker.log_metrics({f"general/{k}_before": v for k, v in self.progress.general_before.items()}, 0)

    def _general(self) -> dict[str, float]:
        """General capability: source test accuracy; lm-eval scores for language models.

        lm-eval scores the underlying Hugging Face model directly (a method's ``predict`` path
        is not used), through vLLM on a saved copy with ``eval.backend=vllm``
        (:func:`clbench.vllm_backend.lm_eval_scores_vllm`). The time of all of it (source test,
        frozen-embedding probes, lm-eval) is counted in ``cost.general_eval_time_s``, not in
        training.
        """
        start = time.perf_counter()
        scores: dict[str, float] = {}
        source = self.stream.source
        if source is not None and source.probe:
            scores[f"{source.name}/acc"] = self.loop.evaluator.split_accuracy(self.model, self.method, source.test)
        scores.update(probe_scores(self.model, self.stream.probes, self.device))  # frozen-embedding probes
        handle = lm_eval_handle(self.model)
        if handle is not None and self.cfg.eval.lm_eval_tasks:
            from clbench.general import lm_eval_scores
            from clbench.vllm_backend import lm_eval_scores_vllm

            score = lm_eval_scores_vllm if self.cfg.eval.backend == "vllm" else lm_eval_scores
            hf_model, tokenizer = handle()
            scores.update(score(hf_model, tokenizer, self.cfg.eval.lm_eval_tasks,
                                limit=self.cfg.eval.lm_eval_limit or None))
        self.progress.general_time_s += time.perf_counter() - start
        return scores

    def _experience(self, i: int, t0: float) -> None:
        logged = self.loop.experience(i, self.progress)
        every = self.cfg.eval.general_every
        scored = i == len(self.stream) - 1 or (every > 0 and (i + 1) % every == 0)
        general = self._general() if scored else {}  # {}: not scored after this experience
        self.progress.general.append(general)
        self.progress.done = i + 1
        self.progress.wall_s += time.perf_counter() - t0
        self._checkpoint()
        before = self.progress.general_before or {}
        for k, v in general.items():
            logged[f"general/{k}"] = v
            logged[f"general/{k}_retention"] = v / before[k] if before.get(k) else float("nan")
        self.tracker.log_metrics(logged, step=i)

    def _checkpoint(self) -> None:
        save_checkpoint(self.run_dir, {"model": model_state(self.model),
                                       "method": self.method.state_dict(),
                                       "progress": self.progress.to_checkpoint(), "config_key": self.cfg.key()})
        (self.run_dir / STEP_CHECKPOINT).unlink(missing_ok=True)  # the experience it was within is done

    def _restore(self) -> None:
        ckpt = load_checkpoint(self.run_dir)
        if ckpt is None:
            return
        if ckpt.get("config_key") != self.cfg.key():
            raise ClbenchError(f"checkpoint in {self.run_dir} belongs to another config")
        load_model_state(self.model, ckpt["model"])
        self.method.load_state_dict(ckpt["method"])
        self.progress = RunProgress.from_checkpoint(ckpt["progress"])

    def _start_tracking(self) -> None:
        cfg = self.cfg
        tags = {"method": cfg.method, "scenario": cfg.scenario, "seed": str(cfg.seed),
                "run_dir": str(self.run_dir.resolve()), "clbench.run_key": cfg.key(),
                "clbench.scenario_hash": self.content_hash()}
        commit = git_commit()
        if commit:
            tags["clbench.git_commit"] = commit
        if cfg.tracking.parent_run_id:
            tags["mlflow.parentRunId"] = cfg.tracking.parent_run_id
        name = cfg.tracking.run_name or f"{cfg.method}-{cfg.scenario}-s{cfg.seed}"
        known = self.progress.mlflow_run_id or read_text(self.run_dir / MLFLOW_ID)  # killed before a checkpoint
        rid = self.tracker.start(name, cli_params(self.res.config_dict()), tags, resume_id=known)
        self.progress.mlflow_run_id = rid
        if rid:
            atomic_write_bytes(self.run_dir / MLFLOW_ID, rid.encode())

    def content_hash(self) -> str:
        """The stream's content hash (computed once: a tag at the start and in the record)."""
        if self._content_hash is None:
            self._content_hash = self.stream.content_hash()
        return self._content_hash

    def _finish(self) -> RunRecord:
        record = self._record()
        write_results(self.run_dir, record)
        finish_outputs(self.run_dir, record, self.cfg, self.tracker, self.method.artifacts(self.run_dir))
        return record

    def _general_summary(self) -> dict[str, float]:
        """``general_retention``: mean over general-capability scores of last / before."""
        before, after = self.progress.general_before or {}, self.progress.general
        if not before or not after:
            return {}
        ratios = [after[-1][k] / v for k, v in before.items() if v]
        return {"general_retention": float(np.mean(ratios))} if ratios else {}

    def _metrics(self) -> dict[str, float]:
        return {**self.loop.metrics(self.progress), **self._general_summary()}

    def _cost(self) -> CostRecord:
        per, (trainable, total) = self.progress.per_exp, count_params(self.model)
        train_time = sum(p.train_time_s for p in per)
        samples = sum(p.train_samples for p in per)
        return self.loop.cost(self.progress, CostRecord(
            wall_time_s=self.progress.wall_s, train_time_s=train_time, train_samples=samples,
            train_samples_per_s=samples / max(train_time, 1e-9),
            optimizer_steps=sum(p.optimizer_steps for p in per),
            peak_rss_mb=peak_rss_mb(),
            peak_cuda_mb=_cuda_peak_mb(), trainable_params=trainable, total_params=total,
            general_eval_time_s=self.progress.general_time_s))

    def _record(self) -> RunRecord:
        """The finished run as a typed record (written to ``results.json``)."""
        p, stream, cfg = self.progress, self.stream, self.cfg
        trainable, total = count_params(self.model)
        return self.loop.finish(RunRecord(
            status="finished", run_key=cfg.key(), config=self.res.config_dict(),
            scenario=ScenarioRecord(
                name=stream.name, version=self.res.scenario.VERSION, type=stream.scenario_type,
                content_hash=self.content_hash(), n_experiences=len(stream), num_classes=stream.num_classes,
                classes=[list(e.classes) for e in stream.experiences], meta=to_plain(stream.meta)),
            model=ModelRecord(name=cfg.model, family=model_family(self.model), init_hash=self.init_hash,
                              trainable_params=trainable, total_params=total),
            seeds=SeedRecord(seed=cfg.seed, experience_seeds=[derive_seed(cfg.seed, i) for i in range(len(stream))]),
            R=p.R, R_pretrain=p.b, R_val=p.R_val, metrics=self._metrics(),
            general=GeneralRecord(before=p.general_before, after=p.general),
            foundation=self.foundation, per_experience=p.per_exp,
            mechanism=mechanism(self.method.mechanism_figures, p.per_exp),
            cost=self._cost(), env=environment(str(self.device)),
            mlflow=MlflowRecord(run_id=p.mlflow_run_id, tracking_uri=self.tracker.uri if p.mlflow_run_id else None),
            run_dir=str(self.run_dir), started_at=p.started_at, finished_at=_now()))


def mechanism(keys: tuple[str, ...], per_exp: list[ExperienceRecord]) -> dict[str, list[float | None]]:
    """Each declared mechanism figure per experience (``None`` where the report lacks it)."""
    out: dict[str, list[float | None]] = {}
    for k in keys:
        vals = [p.method.get(k) for p in per_exp]
        out[k] = [float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None for v in vals]
    return out


def _cuda_peak_mb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

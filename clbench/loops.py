"""Owns the loops a run drives, behind one interface: :class:`Loop`.

The runner (:mod:`clbench.runner`) builds the parts, resumes, checkpoints, scores general
capability and records; a loop runs the stream: the row before it (:meth:`Loop.before_stream`),
one experience at a time (:meth:`Loop.experience` appends the experience's R row and its
:class:`~clbench.records.ExperienceRecord` to the progress and returns the metrics to log), the
summary metrics of the finished stream and what it adds to the record. Two loops exist:
:class:`TrainingLoop` here (training streams) and :class:`clbench.tta.TestTimeLoop` (online
test-time streams); the runner chooses one by the stream's declared type. Loops never import
the runner.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clbench import metrics as M
from clbench.checkpoint import STEP_CHECKPOINT, load_checkpoint, save_checkpoint
from clbench.config import RunConfig
from clbench.evaluation import SAMPLES, Evaluator, SampleLog
from clbench.models import count_params
from clbench.objectives import Objective
from clbench.options import to_plain
from clbench.protocol import Method
from clbench.records import CostRecord, ExperienceRecord, RunProgress, RunRecord
from clbench.streams import Stream
from clbench.trackers import STEP_LOSS, STEP_PEAK_MEM
from clbench.trainer import Trainer, task_class_mask


@dataclass(frozen=True)
class RunParts:
    """What a loop works with: built (and the method set up) by the runner."""

    cfg: RunConfig
    stream: Stream
    model: nn.Module
    method: Method
    device: torch.device
    objective: Objective
    run_dir: Path | None = None  # where mid-experience checkpoints go (trainer.checkpoint_every)
    # logs metrics at a step (the run's tracker); receives ``train_step_loss`` every
    # ``tracking.loss_every`` optimizer steps, counted over the stream
    log: Callable[[dict[str, float], int], None] | None = None


class Loop:
    """One way of running a stream. ``evaluator`` also scores the general capability."""

    evaluator: Evaluator

    def __init__(self, parts: RunParts) -> None:
        self.parts = parts

    def before_stream(self) -> list[float]:
        """The pre-training row (one accuracy per experience), after ``on_source_data``."""
        raise NotImplementedError

    def experience(self, i: int, progress: RunProgress) -> dict[str, float]:
        """Run experience ``i``: append its R row and record to ``progress``; return the
        metrics to log at step ``i``."""
        raise NotImplementedError

    def metrics(self, progress: RunProgress) -> dict[str, float]:
        """The summary metrics of the finished stream (general retention is the runner's)."""
        raise NotImplementedError

    def cost(self, progress: RunProgress, base: CostRecord) -> CostRecord:
        """The run's cost record, with what this loop counts added to ``base``."""
        return base

    def finish(self, record: RunRecord) -> RunRecord:
        """The run's record, with what this loop adds."""
        return record

    def resumed(self, progress: RunProgress) -> None:
        """Called when a run resumes from ``progress`` (possibly fresh): drop what the killed run
        wrote beyond it, which the resumed run writes again."""


class TrainingLoop(Loop):
    """Training streams: per experience the trainer (the method's hooks), then a row of R on
    every experience's test split (and validation split when ``eval.validation``)."""

    def __init__(self, parts: RunParts) -> None:
        super().__init__(parts)
        cfg, stream = parts.cfg, parts.stream
        task_mask = None
        if stream.scenario_type == "task_incremental":
            task_mask = task_class_mask(stream.experiences, stream.num_classes)
        self.trainer = Trainer(cfg.trainer, parts.device, task_mask, parts.objective, stream.inputs)
        samples = None
        if parts.objective.judge is not None and parts.run_dir is not None:  # judged by generation
            samples = SampleLog(parts.run_dir / SAMPLES, stream.meta.get("tasks") or ())
        self.evaluator = Evaluator(parts.device, cfg.eval.batch_size, task_mask,
                                   cfg.trainer.precision, cfg.trainer.progress, parts.objective,
                                   samples=samples)

    def before_stream(self) -> list[float]:
        p = self.parts
        return self.evaluator.row(p.model, p.method, p.stream.experiences, desc="eval pre-training")

    def resumed(self, progress: RunProgress) -> None:
        log = self.evaluator.samples
        if log is not None:  # rows after the last checkpoint (and a pre-training row not checkpointed)
            log.keep(lambda r: r["after"] < progress.done and (r["after"] >= 0 or progress.b is not None))

    def experience(self, i: int, progress: RunProgress) -> dict[str, float]:
        p = self.parts
        exps = p.stream.experiences
        torch.manual_seed(derive_seed(p.cfg.seed, i))
        gen = torch.Generator().manual_seed(derive_seed(p.cfg.seed, i, 1))
        resume, save = self._step_checkpoints(i)
        stats = self.trainer.train_experience(p.model, p.method, exps[i], exps[: i + 1], gen, resume, save,
                                              self._loss_logger(progress))
        report = to_plain(p.method.experience_report())
        row = self.evaluator.row(p.model, p.method, exps, desc=f"eval after exp {i}", after=i)
        progress.R.append(row)
        if p.cfg.eval.validation:
            progress.R_val.append(self.evaluator.row(p.model, p.method, exps, "val", after=i))
        ppl = self.evaluator.perplexity(p.model, p.method, exps[i].test)  # language-modelling streams
        progress.per_exp.append(ExperienceRecord(
            optimizer_steps=stats.optimizer_steps, train_samples=stats.train_samples,
            train_time_s=stats.train_time_s, forward_samples=stats.forward_samples,
            mean_loss=stats.mean_loss, trainable_params=count_params(p.model)[0],
            test_perplexity=ppl if math.isfinite(ppl) else None, peak_cuda_mb=stats.peak_cuda_mb, method=report))
        m = {f"acc_exp_{j}": a for j, a in enumerate(row)}
        m.update(acc_seen=float(np.mean(row[: i + 1])), acc_all=float(np.mean(row)),
                 train_loss=stats.mean_loss, train_time_s=stats.train_time_s)
        if progress.R_val:
            m["val_acc_seen"] = float(np.mean(progress.R_val[-1][: i + 1]))
        if math.isfinite(ppl):
            m["test_perplexity"] = ppl
        if stats.peak_cuda_mb is not None:
            m["peak_cuda_mb"] = stats.peak_cuda_mb
        return {**m, **method_metrics(report)}

    def metrics(self, progress: RunProgress) -> dict[str, float]:
        return M.summarize(progress.R, progress.b or [])

    def _loss_logger(self, progress: RunProgress) -> Callable[[int, torch.Tensor], None] | None:
        """The trainer's step callback that logs ``train_step_loss`` and the memory high-water
        mark ``train_step_peak_mem_mb`` (:func:`peak_memory_mb`) at every
        ``tracking.loss_every``-th optimizer step of the stream (None when off)."""
        p, every = self.parts, self.parts.cfg.tracking.loss_every
        if not every or p.log is None:
            return None
        log, before = p.log, sum(e.optimizer_steps for e in progress.per_exp)  # steps of earlier experiences

        device = p.device

        def on_step(step: int, loss: torch.Tensor) -> None:
            if (before + step) % every == 0:
                log({STEP_LOSS: float(loss), STEP_PEAK_MEM: peak_memory_mb(device)}, before + step)

        return on_step

    def _step_checkpoints(self, i: int) -> tuple[dict[str, Any] | None, Callable[[dict[str, Any]], None] | None]:
        """(the saved state within experience ``i`` to resume from, the function that saves one);
        (None, None) without ``trainer.checkpoint_every`` or a run directory."""
        p = self.parts
        if not p.cfg.trainer.checkpoint_every or p.run_dir is None:
            return None, None
        run_dir, key = p.run_dir, p.cfg.key()
        state = load_checkpoint(run_dir, STEP_CHECKPOINT)
        if state is not None and (state.get("experience") != i or state.get("config_key") != key):
            state = None  # a finished experience's, or another config's: start the experience over

        def save(step: dict[str, Any]) -> None:
            save_checkpoint(run_dir, {**step, "experience": i, "config_key": key}, STEP_CHECKPOINT)

        return state, save


def peak_memory_mb(device: torch.device) -> float:
    """The memory high-water mark so far, in MiB: on CUDA the peak allocated since the experience
    began (the trainer resets it there), elsewhere the process's peak resident set (Linux
    ``ru_maxrss``, KiB), as ``cost.peak_rss_mb`` measures it."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """The process's peak resident set so far, in MiB (Linux ``ru_maxrss`` is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (stable across processes)."""
    h = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def numeric(d: dict[str, Any]) -> dict[str, float]:
    """The int/float entries of ``d`` as floats (booleans left out)."""
    return {k: float(v) for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def method_metrics(report: dict[str, Any]) -> dict[str, float]:
    """A method's experience report as MLflow metrics: ``method_<key>`` for its numbers."""
    return {f"method_{k}": v for k, v in numeric(report).items()}

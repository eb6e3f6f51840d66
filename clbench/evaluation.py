"""Owns evaluation: fills rows of the accuracy matrix R, batched under ``torch.inference_mode``
(``torch.no_grad`` for a sharded model: FSDP keeps its gathered weights for the next pass, and
inference tensors could not serve training).

The evaluator hides what the scenario does not grant: labels never reach ``predict``/``adapt``,
and task ids reach them only in task-incremental streams.

Objectives that judge by generation can leave a record of every judged example: given a
:class:`SampleLog`, the evaluator appends one JSON line per example to the run's
``samples.jsonl`` (see :class:`SampleLog` for the fields).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from clbench.objectives import Objective
from clbench.protocol import Method
from clbench.sharding import grad_free
from clbench.streams import Batch, Experience, Split
from clbench.trainer import autocast_for

SAMPLES = "samples.jsonl"


class SampleLog:
    """``samples.jsonl`` of a run directory: one JSON object per line and judged example, with
    ``after`` (the last experience trained before the evaluation; -1 = before training),
    ``experience`` (the evaluated experience's index), ``task`` (its name), ``split``
    (``test``/``val``), ``example`` (index in the split), ``metric``, ``prompt``,
    ``generation``, ``reference`` and ``score`` (the metric's figure on TRACE's scale;
    R[after][experience] = mean score / ``clbench.textmetrics.SCALE[metric]``)."""

    def __init__(self, path: Path, task_names: Sequence[str] = ()) -> None:
        self.path, self.task_names = path, list(task_names)

    def task(self, exp: Experience) -> str:
        return self.task_names[exp.index] if exp.index < len(self.task_names) else str(exp.task_id)

    def write(self, records: list[dict[str, Any]]) -> None:
        if records:
            with self.path.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)

    def keep(self, wanted: Callable[[dict[str, Any]], bool]) -> None:
        """Keep only the records ``wanted`` (a resumed run drops what it will evaluate again,
        and a line a kill cut short)."""
        if not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if line.endswith("\n") and _wanted(line, wanted)]
        if len(kept) != len(lines):
            self.path.write_text("".join(kept), encoding="utf-8")


def _wanted(line: str, wanted: Callable[[dict[str, Any]], bool]) -> bool:
    try:
        return wanted(json.loads(line))
    except ValueError:
        return False


class Evaluator:
    """Computes accuracies of ``method``'s inference path on experiences' splits."""

    def __init__(self, device: torch.device, batch_size: int, task_mask: Tensor | None = None,
                 precision: str = "auto", progress: bool = False,
                 objective: Objective | None = None,
                 prepare: Callable[[Tensor], Tensor] | None = None,
                 samples: SampleLog | None = None) -> None:
        """``prepare`` maps each batch of stored inputs to model inputs before the objective's
        ``eval_inputs`` (e.g. uint8 images to floats in [0, 1]); ``samples`` receives the judged
        examples of objectives that judge by generation."""
        self.objective = objective or Objective()
        self.samples = samples
        self.prepare = prepare
        self.device = device
        self.batch_size = batch_size
        self.task_mask = None if task_mask is None else task_mask.to(device)  # task-IL only
        self.precision = precision
        self.progress = progress

    def row(self, model: nn.Module, method: Method, experiences: Sequence[Experience],
            split: str = "test", desc: str = "eval", after: int = -1) -> list[float]:
        """Accuracy on each experience's ``split`` ("test" or "val"); ``after``: the last
        experience trained (-1: none), as the sample log records it."""
        was_training = model.training
        model.eval()
        try:
            bar = tqdm(experiences, desc=desc, leave=False, unit="exp", disable=None if self.progress else True)  # None: off when not a TTY
            return [self.accuracy(model, method, e, getattr(e, split), {"after": after, "split": split})
                    for e in bar]
        finally:
            model.train(was_training)

    def accuracy(self, model: nn.Module, method: Method, exp: Experience, data: Split,
                 tag: dict[str, Any] | None = None) -> float:
        """Accuracy on ``data`` of ``exp``; ``tag`` (``after``, ``split``) goes into the sample log."""
        with grad_free(model):
            return self._accuracy(lambda b: method.predict(model, b), exp, data, tag)

    def split_accuracy(self, model: nn.Module, method: Method, data: Split) -> float:
        """Accuracy on a split outside the stream (e.g. the source test split); no task id."""
        was_training = model.training
        model.eval()
        try:
            with grad_free(model):
                return self._accuracy(lambda b: method.predict(model, b), None, data)
        finally:
            model.train(was_training)

    def _accuracy(self, infer: Callable[[Batch], Tensor], exp: Experience | None, data: Split,
                  tag: dict[str, Any] | None = None) -> float:
        if len(data) == 0:
            return float("nan")
        if self.objective.judge is not None:  # judged by generation (open-ended answers)
            task_id = exp.task_id if (self.task_mask is not None and exp is not None) else None
            log = self.samples if exp is not None and tag is not None else None
            records: list[dict[str, Any]] | None = [] if log is not None else None
            with autocast_for(self.device, self.precision):
                score = self.objective.judge(infer, data, exp.index if exp is not None else None, task_id,
                                             self.batch_size, self.device, samples=records)
            if log is not None and exp is not None and records:
                where = {**(tag or {}), "experience": exp.index, "task": log.task(exp)}
                log.write([{**where, **r} for r in records])
            return score
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        judged = 0
        for i in range(0, len(data), self.batch_size):
            x = data.x[i : i + self.batch_size]
            x = self.objective.eval_inputs(self.prepare(x) if self.prepare else x).to(self.device, non_blocking=True)
            task = None
            if self.task_mask is not None and exp is not None:
                task = torch.full((len(x),), exp.task_id, dtype=torch.long, device=self.device)
            with autocast_for(self.device, self.precision):
                batch = self.objective.compact(Batch(x, None, task))
                outputs = infer(batch)
            y = data.y[i : i + self.batch_size].to(self.device, non_blocking=True)
            hits, n = self.objective.count(outputs, batch, y, self.task_mask)
            correct += hits
            judged += n
        return float(correct) / max(judged, 1)

    def perplexity(self, model: nn.Module, method: Method, data: Split) -> float:
        """exp(mean next-token NLL) on ``data`` (language-modeling objectives only; else NaN)."""
        nll_fn = getattr(self.objective, "nll", None)
        if nll_fn is None or len(data) == 0:
            return float("nan")
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            with grad_free(model):
                for i in range(0, len(data), self.batch_size):
                    batch = self.objective.compact(Batch(data.x[i : i + self.batch_size].to(self.device), None, None))
                    with autocast_for(self.device, self.precision):
                        s, n = nll_fn(method.predict(model, batch), batch)
                    total, count = total + s, count + n
        finally:
            model.train(was_training)
        return math.exp(total / max(count, 1))

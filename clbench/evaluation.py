"""Owns evaluation: fills rows of the accuracy matrix R, batched under ``torch.inference_mode``.

The evaluator hides what the scenario does not grant: labels never reach ``predict``/``adapt``,
and task ids reach them only in task-incremental streams.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from clbench.objectives import Objective
from clbench.protocol import Method
from clbench.streams import Batch, Experience, Split
from clbench.trainer import autocast_for


class Evaluator:
    """Computes accuracies of ``method``'s inference path on experiences' splits."""

    def __init__(self, device: torch.device, batch_size: int, task_mask: Tensor | None = None,
                 precision: str = "auto", progress: bool = False,
                 objective: Objective | None = None,
                 prepare: Callable[[Tensor], Tensor] | None = None) -> None:
        """``prepare`` maps each batch of stored inputs to model inputs before the objective's
        ``eval_inputs`` (e.g. uint8 images to floats in [0, 1])."""
        self.objective = objective or Objective()
        self.prepare = prepare
        self.device = device
        self.batch_size = batch_size
        self.task_mask = None if task_mask is None else task_mask.to(device)  # task-IL only
        self.precision = precision
        self.progress = progress

    def row(self, model: nn.Module, method: Method, experiences: Sequence[Experience],
            split: str = "test", desc: str = "eval") -> list[float]:
        """Accuracy on each experience's ``split`` ("test" or "val")."""
        was_training = model.training
        model.eval()
        try:
            bar = tqdm(experiences, desc=desc, leave=False, unit="exp", disable=None if self.progress else True)  # None: off when not a TTY
            return [self.accuracy(model, method, e, getattr(e, split)) for e in bar]
        finally:
            model.train(was_training)

    @torch.inference_mode()
    def accuracy(self, model: nn.Module, method: Method, exp: Experience, data: Split) -> float:
        return self._accuracy(lambda b: method.predict(model, b), exp, data)

    @torch.inference_mode()
    def split_accuracy(self, model: nn.Module, method: Method, data: Split) -> float:
        """Accuracy on a split outside the stream (e.g. the source test split); no task id."""
        was_training = model.training
        model.eval()
        try:
            return self._accuracy(lambda b: method.predict(model, b), None, data)
        finally:
            model.train(was_training)

    def _accuracy(self, infer: Callable[[Batch], Tensor], exp: Experience | None, data: Split) -> float:
        if len(data) == 0:
            return float("nan")
        if self.objective.judge is not None:  # judged by generation (open-ended answers)
            task_id = exp.task_id if (self.task_mask is not None and exp is not None) else None
            with autocast_for(self.device, self.precision):
                return self.objective.judge(infer, data, exp.index if exp is not None else None, task_id,
                                            self.batch_size, self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        judged = 0
        for i in range(0, len(data), self.batch_size):
            x = data.x[i : i + self.batch_size]
            x = self.objective.eval_inputs(self.prepare(x) if self.prepare else x).to(self.device, non_blocking=True)
            task = None
            if self.task_mask is not None and exp is not None:
                task = torch.full((len(x),), exp.task_id, dtype=torch.long, device=self.device)
            with autocast_for(self.device, self.precision):
                batch = Batch(x, None, task)
                outputs = infer(batch)
            y = data.y[i : i + self.batch_size].to(self.device, non_blocking=True)
            hits, n = self.objective.count(outputs, batch, y, self.task_mask)
            correct += hits
            judged += n
        return float(correct) / max(judged, 1)

    @torch.inference_mode()
    def perplexity(self, model: nn.Module, method: Method, data: Split) -> float:
        """exp(mean next-token NLL) on ``data`` (language-modeling objectives only; else NaN)."""
        nll_fn = getattr(self.objective, "nll", None)
        if nll_fn is None or len(data) == 0:
            return float("nan")
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            for i in range(0, len(data), self.batch_size):
                batch = Batch(data.x[i : i + self.batch_size].to(self.device), None, None)
                with autocast_for(self.device, self.precision):
                    s, n = nll_fn(method.predict(model, batch), batch)
                total, count = total + s, count + n
        finally:
            model.train(was_training)
        return math.exp(total / max(count, 1))

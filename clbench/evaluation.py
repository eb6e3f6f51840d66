"""Owns evaluation: fills rows of the accuracy matrix R, batched under ``torch.inference_mode``
(``torch.no_grad`` for a sharded model: FSDP keeps its gathered weights for the next pass, and
inference tensors could not serve training) and, on CUDA with ``trainer.precision`` auto or
bf16, bf16 autocast.

The evaluation batch starts at ``eval.batch_size``; a batch that runs out of CUDA memory is
retried at half its length, and the evaluator keeps the smaller size (:class:`EvalBatches`).
Objectives that judge by generation get the model's cached greedy generator where it stands
for the method's prediction (:func:`fast_generator`); with ``eval.backend=vllm`` vLLM runs it on
a saved copy of the model (:mod:`clbench.vllm_backend`; optional, not yet run on a GPU).

The evaluator hides what the scenario does not grant: labels never reach ``predict``/``adapt``,
and task ids reach them only in task-incremental streams.

Objectives that judge by generation can leave a record of every judged example: given a
:class:`SampleLog`, the evaluator appends one JSON line per example to the run's
``samples.jsonl`` (see :class:`SampleLog` for the fields).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from clbench.objectives import Chunks, FixedChunks, GreedyFn, GreedyGenerator, Objective
from clbench.protocol import Method
from clbench.sharding import grad_free, is_sharded
from clbench.streams import Batch, Experience, Split
from clbench.trainer import autocast_for

if TYPE_CHECKING:
    from clbench.vllm_backend import VllmGenerators

SAMPLES = "samples.jsonl"

_T = TypeVar("_T")
logger = logging.getLogger(__name__)


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


class EvalBatches:
    """The evaluation batch size, shrunk on CUDA out-of-memory (a :class:`Chunks` runner).

    Calling it runs ``fn(i, j)`` over consecutive chunks of at most :attr:`size` items. A chunk
    that raises ``torch.cuda.OutOfMemoryError`` is run again at half its length (the CUDA cache
    emptied first), down to one item, where the error propagates; the size that then works is
    kept for every later call (the largest batch that fits, as far as halving finds it; it
    never grows back). The first reduction is logged as a warning, once per instance. ``fn``
    must leave no trace of a chunk that raised (its results count only once it returns).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.reduced = False  # whether out-of-memory has shrunk the size (logged once)

    def __call__(self, n: int, fn: Callable[[int, int], _T]) -> list[_T]:
        out: list[_T] = []
        i = 0
        while i < n:
            j = min(i + self.size, n)
            try:
                out.append(fn(i, j))
                i = j
                continue
            except torch.cuda.OutOfMemoryError:
                if j - i <= 1:
                    raise
            # out of the except block: the failed chunk's tensors are no longer referenced
            self._shrink(j - i)
        return out

    def _shrink(self, failed: int) -> None:
        self.size = max(1, failed // 2)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if not self.reduced:
            logger.warning("evaluation batch of %d ran out of CUDA memory; this evaluator now "
                           "evaluates in batches of at most %d (halved again if needed)", failed, self.size)
        self.reduced = True


def fast_generator(model: nn.Module, method: Method) -> GreedyFn | None:
    """``model.generate_greedy`` (:class:`~clbench.objectives.GreedyGenerator`) where it stands
    for generating through ``method.predict``, else None (generation takes the exact path).

    That is when the method keeps the base class's ``predict`` (the model's forward pass), the
    model offers the hook, its class does not override ``forward`` below the class that defines
    ``generate_greedy``, no ``forward`` is set on the instance, it has no forward (pre-)hooks of
    its own, and it is not sharded (the hook would bypass FSDP's root). Hooks inside the model
    still run in both paths, on the cached path with other inputs (one new token per pass).
    """
    if type(method).predict is not Method.predict or not isinstance(model, GreedyGenerator):
        return None
    if is_sharded(model) or model._forward_hooks or model._forward_pre_hooks or "forward" in vars(model):
        return None
    mro = type(model).__mro__
    defines_generate = next(c for c in mro if "generate_greedy" in vars(c))
    defines_forward = next(c for c in mro if "forward" in vars(c))
    if not issubclass(defines_generate, defines_forward):
        return None
    return model.generate_greedy


class Evaluator:
    """Computes accuracies of ``method``'s inference path on experiences' splits."""

    def __init__(self, device: torch.device, batch_size: int, task_mask: Tensor | None = None,
                 precision: str = "auto", progress: bool = False,
                 objective: Objective | None = None,
                 prepare: Callable[[Tensor], Tensor] | None = None,
                 samples: SampleLog | None = None, backend: str = "hf") -> None:
        """``prepare`` maps each batch of stored inputs to model inputs before the objective's
        ``eval_inputs`` (e.g. uint8 images to floats in [0, 1]); ``samples`` receives the judged
        examples of objectives that judge by generation. ``backend`` (``eval.backend``; the
        runner sets the attribute): ``vllm`` generates through vLLM where the model's cached
        generator would stand for the method's prediction (:meth:`generation`)."""
        self.backend = backend
        self._vllm: VllmGenerators | None = None  # the open generation pass's (vllm backend)
        self.objective = objective or Objective()
        self.samples = samples
        self.prepare = prepare
        self.device = device
        self.batches = EvalBatches(batch_size)
        self.task_mask = None if task_mask is None else task_mask.to(device)  # task-IL only
        self.precision = precision
        self.progress = progress

    @property
    def batch_size(self) -> int:
        """The evaluation batch size now (``eval.batch_size`` unless out-of-memory shrank it)."""
        return self.batches.size

    @contextlib.contextmanager
    def generation(self) -> Iterator[None]:
        """One generation pass: with ``backend`` vllm, the vLLM engine built inside it serves
        every evaluation inside (the weights do not change there) and is shut down on exit, so
        training gets its GPU memory back. Re-entrant: an inner pass joins the outer one."""
        if self.backend != "vllm" or self._vllm is not None:
            yield
            return
        from clbench.vllm_backend import VllmGenerators

        bf16 = self.device.type == "cuda" and self.precision in ("auto", "bf16")  # as autocast_for
        generators = self._vllm = VllmGenerators(dtype="bfloat16" if bf16 else None)
        try:
            yield
        finally:
            self._vllm = None
            generators.close()

    def _generator(self, model: nn.Module, method: Method) -> GreedyFn | None:
        """:func:`fast_generator`, run by vLLM inside a vllm :meth:`generation` pass where the
        model exposes a plain Hugging Face causal LM (``lm_eval_handle``)."""
        cached = fast_generator(model, method)
        if cached is None or self._vllm is None or self.objective.judge is None:
            return cached
        return self._vllm.get(model, cached)

    def _chunks(self, model: nn.Module) -> Chunks:
        """The batch runner: :attr:`batches`, or fixed batches for a sharded model (its ranks
        must run the same passes, so out-of-memory propagates there at once)."""
        return FixedChunks(self.batch_size) if is_sharded(model) else self.batches

    def row(self, model: nn.Module, method: Method, experiences: Sequence[Experience],
            split: str = "test", desc: str = "eval", after: int = -1) -> list[float]:
        """Accuracy on each experience's ``split`` ("test" or "val"); ``after``: the last
        experience trained (-1: none), as the sample log records it."""
        was_training = model.training
        model.eval()
        try:
            bar = tqdm(experiences, desc=desc, leave=False, unit="exp", disable=None if self.progress else True)  # None: off when not a TTY
            with self.generation():  # one vLLM engine for the whole row (vllm backend)
                return [self.accuracy(model, method, e, getattr(e, split), {"after": after, "split": split})
                        for e in bar]
        finally:
            model.train(was_training)

    def accuracy(self, model: nn.Module, method: Method, exp: Experience, data: Split,
                 tag: dict[str, Any] | None = None) -> float:
        """Accuracy on ``data`` of ``exp``; ``tag`` (``after``, ``split``) goes into the sample log."""
        with grad_free(model), self.generation():
            return self._accuracy(lambda b: method.predict(model, b), exp, data, tag,
                                  self._chunks(model), self._generator(model, method))

    def split_accuracy(self, model: nn.Module, method: Method, data: Split) -> float:
        """Accuracy on a split outside the stream (e.g. the source test split); no task id."""
        was_training = model.training
        model.eval()
        try:
            with grad_free(model), self.generation():
                return self._accuracy(lambda b: method.predict(model, b), None, data, None,
                                      self._chunks(model), self._generator(model, method))
        finally:
            model.train(was_training)

    def _accuracy(self, infer: Callable[[Batch], Tensor], exp: Experience | None, data: Split,
                  tag: dict[str, Any] | None = None, chunks: Chunks | None = None,
                  generator: GreedyFn | None = None) -> float:
        if len(data) == 0:
            return float("nan")
        chunks = chunks if chunks is not None else self.batches
        if self.objective.judge is not None:  # judged by generation (open-ended answers)
            task_id = exp.task_id if (self.task_mask is not None and exp is not None) else None
            log = self.samples if exp is not None and tag is not None else None
            records: list[dict[str, Any]] | None = [] if log is not None else None
            with autocast_for(self.device, self.precision):
                score = self.objective.judge(infer, data, exp.index if exp is not None else None, task_id,
                                             chunks, self.device, samples=records, generator=generator)
            if log is not None and exp is not None and records:
                where = {**(tag or {}), "experience": exp.index, "task": log.task(exp)}
                log.write([{**where, **r} for r in records])
            return score

        def count(i: int, j: int) -> tuple[Tensor, int]:
            x = data.x[i:j]
            x = self.objective.eval_inputs(self.prepare(x) if self.prepare else x).to(self.device, non_blocking=True)
            task = None
            if self.task_mask is not None and exp is not None:
                task = torch.full((len(x),), exp.task_id, dtype=torch.long, device=self.device)
            with autocast_for(self.device, self.precision):
                batch = self.objective.compact(Batch(x, None, task))
                outputs = infer(batch)
            y = data.y[i:j].to(self.device, non_blocking=True)
            return self.objective.count(outputs, batch, y, self.task_mask)

        correct = torch.zeros((), dtype=torch.long, device=self.device)
        judged = 0
        for hits, n in chunks(len(data), count):
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

        def nll(i: int, j: int) -> tuple[float, int]:
            batch = self.objective.compact(Batch(data.x[i:j].to(self.device), None, None))
            with autocast_for(self.device, self.precision):
                return nll_fn(method.predict(model, batch), batch)  # type: ignore[no-any-return]

        try:
            with grad_free(model):
                for s, n in self._chunks(model)(len(data), nll):
                    total, count = total + s, count + n
        finally:
            model.train(was_training)
        return math.exp(total / max(count, 1))

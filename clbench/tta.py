"""Owns continual test-time adaptation (CTTA): the online adapt-while-predicting loop and its tools.

A ``test_time`` stream is a sequence of unlabeled target domains, one experience each, whose data
is the experience's ``test`` split. The domains are presented once, in order, without shuffling,
in batches of ``stream.meta["batch_size"]`` (default ``eval.batch_size``). For every batch the
method's ``adapt`` receives ``Batch(x, None, None)``: labels never leave this module. The logits
``adapt`` returns are the prediction for that batch, made before any later batch is seen; the
loop never re-runs the model afterwards. Labels are used here only to count errors.

Hook order (tested in ``tests/test_contract.py``)::

    setup, [label_preserving set on AugmentsInputs methods], on_source_data (only if declared),
    predict (pre-adaptation row R_pretrain),
    for each domain: on_experience_start(label-free experience) -> adapt per batch ->
    on_experience_end(label-free experience) -> experience_report -> predict (source test split)

The experiences handed to hooks carry the index, task id and class set but empty splits, so the
domain boundary is known (needed by per-domain resets) while no data or label is.

Streams declare which input transforms keep labels in ``stream.meta["label_preserving"]``
(e.g. ``{"hflip": False}`` for digits); undeclared transforms are taken to keep them (natural
images). After ``setup`` the loop hands the declaration to methods that augment their inputs
(subclasses of :class:`AugmentsInputs`), so every such method leaves out the same transforms.

Results (schema 1): ``R`` is one row of online accuracies, one column per domain (1 x D);
``R_pretrain`` the method's ``predict`` accuracy on each domain before any adaptation (for
batch-statistics methods this already uses test-batch statistics). ``metrics`` holds
``error_<domain>``, ``mean_error``, ``acc`` (= 1 - mean_error), ``mean_error_pretrain``,
``mean_error_first_pass``/``mean_error_last_pass`` (streams that repeat their domains name pass k's
domains ``<domain>_pass<k>``; see :func:`domain_pass`), and, when
the scenario has a source split, ``source_acc_before``/``source_acc_after``/``source_forgetting``
(source test accuracy through ``predict`` before and after the stream). The matrix metrics of
training streams (BWT, FWT, forgetting, plasticity) are undefined for one online pass and are
NaN. ``uint8`` inputs (real-data loaders) are scaled to [0, 1] batch by batch. The loop runs in
fp32 (no autocast): methods backpropagate inside ``adapt``.

Generic tools for test-time methods (batch statistics, entropy, EMA, reset points) live in
:mod:`clbench.adapt`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clbench.evaluation import Evaluator
from clbench.loops import Loop, RunParts, derive_seed, method_metrics
from clbench.options import to_plain
from clbench.records import CostRecord, ExperienceRecord, RunProgress, RunRecord, TestTimeRecord
from clbench.streams import Batch, Experience, Split

NAN = float("nan")


def as_float(x: Tensor) -> Tensor:
    """Images stored as uint8 become float32 in [0, 1]; anything else is returned unchanged."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def blind(exp: Experience) -> Experience:
    """``exp`` with empty splits: index, task id and classes only (what a hook may know)."""
    empty = Split(exp.test.x[:0], exp.test.y[:0])
    return Experience(exp.index, exp.task_id, exp.classes, empty, empty, empty)


def domain_names(meta: dict[str, Any], n: int) -> list[str]:
    names = list(meta.get("domains") or [])
    return names if len(names) == n else [f"domain_{j}" for j in range(n)]


def domain_pass(name: str) -> int:
    """The pass a domain belongs to: ``k`` for ``<domain>_pass<k>``, else 1 (MLflow metric names
    allow ``[A-Za-z0-9_-. /]`` only, so no other separator)."""
    head, sep, tail = name.rpartition("_pass")
    return int(tail) if sep and head and tail.isdigit() and int(tail) >= 1 else 1


def tta_metrics(row: list[float], pretrain: list[float], domains: list[str],
                before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per-domain error rates, their mean, per-pass means, and source accuracy before/after.

    ``error_d = 1 - acc_d``; ``mean_error = (1/D) Σ_d error_d``; ``mean_error_first_pass`` and
    ``mean_error_last_pass`` = the mean over the domains of the first and of the last pass (equal
    to ``mean_error`` for a single pass; last − first > 0 means the method drifted);
    ``source_forgetting = source_acc_before - source_acc_after`` (first ``*/acc`` general score,
    the source test split).
    """
    errors = [1.0 - a for a in row]
    m = {f"error_{d}": e for d, e in zip(domains, errors, strict=True)}
    m["mean_error"] = float(np.mean(errors)) if errors else NAN
    passes = [domain_pass(d) for d in domains]
    for name, k in (("first", min(passes, default=1)), ("last", max(passes, default=1))):
        chosen = [e for e, p in zip(errors, passes, strict=True) if p == k]
        m[f"mean_error_{name}_pass"] = float(np.mean(chosen)) if chosen else NAN
    m["acc"] = float(np.mean(row)) if row else NAN
    m["mean_error_pretrain"] = 1.0 - float(np.mean(pretrain)) if pretrain else NAN
    key = next((k for k in after if k.endswith("/acc")), None)
    if key is not None:
        m["source_acc_before"] = before.get(key, NAN)
        m["source_acc_after"] = after[key]
        m["source_forgetting"] = m["source_acc_before"] - after[key]
    m.update(bwt=NAN, fwt=NAN, forgetting=NAN, plasticity=NAN)
    return m


LABEL_PRESERVING = "label_preserving"  # stream.meta key: {transform name: keeps labels}


def label_preserving(meta: dict[str, Any]) -> dict[str, bool]:
    """Which input transforms keep labels on a stream (``stream.meta["label_preserving"]``).

    Undeclared transforms are taken to keep labels (natural images); ``hflip`` is always present.
    """
    declared = {str(k): bool(v) for k, v in dict(meta.get(LABEL_PRESERVING) or {}).items()}
    return {"hflip": True, **declared}


class AugmentsInputs:
    """Mixin of test-time methods that augment their inputs.

    After ``setup`` the test-time loop sets :attr:`label_preserving` from the stream's declaration
    (:func:`label_preserving`); a method applies a transform only where it is ``True`` there.
    """

    label_preserving: dict[str, bool]

    def allows(self, transform: str) -> bool:
        """Whether the stream declares ``transform`` label-preserving (default: yes)."""
        return getattr(self, "label_preserving", {}).get(transform, True)


class TestTimeLoop(Loop):
    """Test-time streams: one online pass, ``adapt`` per unlabeled batch, its logits judged."""

    __test__ = False  # not a pytest class

    def __init__(self, parts: RunParts) -> None:
        super().__init__(parts)
        cfg, stream = parts.cfg, parts.stream
        if isinstance(parts.method, AugmentsInputs):
            parts.method.label_preserving = label_preserving(stream.meta)
        self.batch_size = int(stream.meta.get("batch_size") or cfg.eval.batch_size)
        # predictions in the stream's batches, fp32 (methods backpropagate inside adapt), uint8 scaled
        self.evaluator = Evaluator(parts.device, self.batch_size, None, "fp32", cfg.trainer.progress,
                                   parts.objective, prepare=as_float)
        self.domains = domain_names(stream.meta, len(stream))

    def before_stream(self) -> list[float]:
        """``predict`` (no adaptation) on each domain, in the stream's batches."""
        p = self.parts
        return [self.evaluator.split_accuracy(p.model, p.method, e.test) for e in p.stream.experiences]

    def _online(self, data: Split) -> tuple[float, int]:
        """One pass over a domain: ``adapt`` on each unlabeled batch, its logits judged."""
        correct, batches = 0, 0
        for i in range(0, len(data), self.batch_size):
            x = as_float(data.x[i : i + self.batch_size]).to(self.parts.device, non_blocking=True)
            logits = self.parts.method.adapt(self.parts.model, Batch(x, None, None))
            correct += int((logits.detach().argmax(-1).cpu() == data.y[i : i + self.batch_size]).sum())
            batches += 1
        return correct / max(len(data), 1), batches

    def experience(self, i: int, progress: RunProgress) -> dict[str, float]:
        p = self.parts
        exp = p.stream.experiences[i]
        torch.manual_seed(derive_seed(p.cfg.seed, i))
        start = time.perf_counter()
        p.method.on_experience_start(blind(exp), p.model)
        acc, batches = self._online(exp.test)
        p.method.on_experience_end(blind(exp), p.model)
        secs = time.perf_counter() - start
        report = to_plain(p.method.experience_report())
        progress.R = [_online_row(progress) + [acc]]
        progress.per_exp.append(ExperienceRecord(
            domain=self.domains[i], error=1.0 - acc, adapt_batches=batches, adapt_samples=len(exp.test),
            adapt_time_s=secs, method=report))
        return {"error": 1.0 - acc, "acc_domain": acc, "adapt_time_s": secs, **method_metrics(report)}

    def metrics(self, progress: RunProgress) -> dict[str, float]:
        after = progress.general[-1] if progress.general else {}
        return tta_metrics(_online_row(progress), progress.b or [], self.domains,
                           progress.general_before or {}, after)

    def cost(self, progress: RunProgress, base: CostRecord) -> CostRecord:
        per = progress.per_exp
        secs = sum(p.adapt_time_s or 0.0 for p in per)
        samples = sum(p.adapt_samples or 0 for p in per)
        return replace(base, adapt_batches=sum(p.adapt_batches or 0 for p in per),
                       adapt_samples=samples, adapt_time_s=secs, adapt_samples_per_s=samples / max(secs, 1e-9))

    def finish(self, record: RunRecord) -> RunRecord:
        return replace(record, test_time=TestTimeRecord(
            domains=list(self.domains), batch_size=self.batch_size,
            errors=[1.0 - a for a in (record.R[0] if record.R else [])]))


def _online_row(progress: RunProgress) -> list[float]:
    """The online accuracies so far, one per finished domain."""
    return list(progress.R[0]) if progress.R else []

"""Owns training objectives: the base loss and the class scores a stream's outputs are judged by.

- ``classification``: outputs are class logits (N, C); loss = cross-entropy; scores = outputs.
- ``causal_lm``: inputs are packed ``(N, 2, L)`` tensors, row 0 the token ids (prompt, answer,
  padding) and row 1 a 0/1 mask of the answer tokens; outputs are token logits (N, L, V).
  Loss = next-token cross-entropy on the answer tokens only (instruction tuning). Scores = the
  log-probability of each class's first verbaliser token at the position that predicts the first
  answer token (rank classification over the label set, one forward pass). Exact match of the
  greedy answer against the label set coincides with it whenever the labels' first tokens differ,
  which the text streams check when they are built.
- ``causal_lm_generate``: the same packed inputs and answer-token loss, but each test example is
  judged on the model's **greedy generation** (prompt only; the gold answer is never in the
  inputs) against the gold answer with its task's metric (``clbench/textmetrics.py``: exact
  match, ROUGE-L, edit similarity, SARI, as TRACE computes them). R then holds the mean metric
  per task, scaled to [0, 1]; each judged example can be recorded (the run's ``samples.jsonl``).
  Generation recomputes the whole prefix per new token through the method's prediction, unless
  the evaluator passes the model's own cached generator (:class:`GreedyGenerator`), which it
  does only where the prediction is the model's plain forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from clbench.splits import Batch, Split

OBJECTIVES = ("classification", "causal_lm", "causal_lm_text", "causal_lm_generate")

_T = TypeVar("_T")

#: a bound :meth:`GreedyGenerator.generate_greedy`: (prompts, per-row budgets, eos id) -> tokens
GreedyFn = Callable[[Sequence[Tensor], Sequence[int], int | None], list[list[int]]]


@runtime_checkable
class GreedyGenerator(Protocol):
    """A model that continues prompts greedily faster than one full forward pass per new token
    (the hook :class:`GenerationObjective` uses for its fast path).

    ``generate_greedy(prompts, max_new_tokens, eos_id)``: ``prompts`` are 1-D token-id tensors
    (at least one token each) exactly as the model's forward pass would see them in a packed
    row before the answer; row ``r`` stops after ``max_new_tokens[r]`` tokens or at ``eos_id``
    (not included). It must give the tokens that feeding the model's forward pass the prompt
    plus the tokens generated so far (marked in the answer row) would give, one pass per token.
    """

    def generate_greedy(self, prompts: Sequence[Tensor], max_new_tokens: Sequence[int],
                        eos_id: int | None) -> list[list[int]]: ...


class Chunks(Protocol):
    """Runs ``fn(i, j)`` over consecutive ranges ``[i, j)`` that cover ``range(n)`` in order and
    returns the results in that order."""

    def __call__(self, n: int, fn: Callable[[int, int], _T]) -> list[_T]: ...


class FixedChunks:
    """:class:`Chunks` of ``size`` items (the last one shorter)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, n: int, fn: Callable[[int, int], _T]) -> list[_T]:
        return [fn(i, min(i + self.size, n)) for i in range(0, n, self.size)]


class Objective:
    """Class-logit classification (the default)."""

    name = "classification"
    #: the outputs are class logits, which a task-incremental stream masks to the sample's task
    class_logits = True
    # objectives that judge a whole split by generation set this (see GenerationObjective.judge)
    judge: Callable[..., float] | None = None

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        assert batch.y is not None, "training batches carry labels"
        return F.cross_entropy(outputs.float(), batch.y)

    def scores(self, outputs: Tensor, batch: Batch) -> Tensor:
        """(N, C) class scores from the model's outputs (argmax = prediction)."""
        return outputs

    def eval_inputs(self, x: Tensor) -> Tensor:
        """What inference may see of a test input (nothing that reveals the label)."""
        return x

    def compact(self, batch: Batch) -> Batch:
        """The batch without what cannot change the outputs that count (identity here)."""
        return batch

    def count(self, outputs: Tensor, batch: Batch, y: Tensor, task_mask: Tensor | None) -> tuple[Tensor, int]:
        """(number correct, number judged) for one evaluation batch."""
        scores = self.scores(outputs, batch)
        if task_mask is not None and batch.task is not None:
            keep = task_mask.to(scores.device)[batch.task]
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        return (scores.argmax(-1) == y).sum(), len(y)


class CausalLMObjective(Objective):
    """Answer-token LM loss; first-verbaliser-token class scores (see the module docstring)."""

    name = "causal_lm"
    class_logits = False  # token logits; the class scores come from :meth:`scores`

    def __init__(self, first_tokens: Tensor, pad_id: int) -> None:
        self.first_tokens = first_tokens  # (C,) token id of each class's first answer token
        self.pad_id = pad_id

    def compact(self, batch: Batch) -> Batch:
        """Trailing columns that are padding in every row dropped (right padding, causal model:
        no earlier position attends to them, and no loss or score reads them)."""
        x = batch.x
        return trim_columns(batch, (x[:, 0] != self.pad_id) | (x[:, 1] == 1))

    def eval_inputs(self, x: Tensor) -> Tensor:
        """The gold answer tokens are replaced by padding; the mask still marks where it starts."""
        ids = x[:, 0].masked_fill(x[:, 1] == 1, self.pad_id)
        return torch.stack([ids, x[:, 1]], dim=1)

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        ids, mask = batch.x[:, 0], batch.x[:, 1]
        logits = outputs[:, :-1].float()
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)

    def scores(self, outputs: Tensor, batch: Batch) -> Tensor:
        pos = answer_start(batch.x[:, 1]) - 1
        logp = outputs[torch.arange(len(pos), device=outputs.device), pos].float().log_softmax(-1)
        return logp[:, self.first_tokens.to(outputs.device)]


class LanguageModelingObjective(Objective):
    """Unlabeled text (continual pre-training): next-token loss on real tokens.

    Inputs are packed (N, 2, L): token ids and a 0/1 mask of real (non-padding) tokens. R holds
    next-token **top-1 accuracy** on each experience's test text (higher is better, so BWT and
    forgetting keep their meaning); :meth:`nll` gives the perplexity reported beside it.
    """

    name = "causal_lm_text"
    class_logits = False

    def compact(self, batch: Batch) -> Batch:
        """Trailing columns without a real token in any row dropped (see CausalLMObjective)."""
        return trim_columns(batch, batch.x[:, 1] == 1)

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        ids, mask = batch.x[:, 0], batch.x[:, 1]
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        logits = outputs[:, :-1].float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)

    def count(self, outputs: Tensor, batch: Batch, y: Tensor, task_mask: Tensor | None) -> tuple[Tensor, int]:
        real = batch.x[:, 1, 1:] == 1
        hits = (outputs[:, :-1].argmax(-1) == batch.x[:, 0, 1:]) & real
        return hits.sum(), int(real.sum())

    def nll(self, outputs: Tensor, batch: Batch) -> tuple[float, int]:
        """(summed next-token negative log-likelihood, number of predicted tokens)."""
        real = batch.x[:, 1, 1:] == 1
        logp = outputs[:, :-1].float().log_softmax(-1)
        tok = logp.gather(-1, batch.x[:, 0, 1:].unsqueeze(-1)).squeeze(-1)
        return float(-(tok * real).sum()), int(real.sum())


class GenerationObjective(CausalLMObjective):
    """Answer-token loss for training; greedy generation + a task metric for evaluation."""

    name = "causal_lm_generate"

    def __init__(self, pad_id: int, eos_id: int | None, tokenizer_id: str, metrics: list[str],
                 max_new_tokens: list[int]) -> None:
        super().__init__(torch.zeros(0, dtype=torch.long), pad_id)
        self.eos_id, self.tokenizer_id = eos_id, tokenizer_id
        self.metrics, self.max_new_tokens = metrics, max_new_tokens

    def judge(self, infer: Callable[[Batch], Tensor], data: Split, exp_index: int | None,
              task: int | None, batch_size: int | Chunks, device: torch.device,
              samples: list[dict[str, Any]] | None = None,
              generator: GreedyFn | None = None) -> float:
        """Mean metric of greedy generations over ``data`` (exact match outside the stream), in
        [0, 1] (TRACE's figure / ``textmetrics.SCALE``). Prompt, generation and reference are
        decoded without clean-up (as TRACE decodes), and the space the packing put before each
        answer is dropped from generation and reference. ``samples``: one record per example
        (its index in ``data``, metric, prompt, generation, reference and the metric's figure on
        TRACE's scale) is appended, in example order.

        ``batch_size``: prompts per generation batch, or a :class:`Chunks` runner that chooses
        the batches (the evaluator's, which shrinks them on CUDA out-of-memory); a batch's
        records count only once it has finished. ``generator``: see :meth:`generate`."""
        from clbench.hf import load_tokenizer
        from clbench.textmetrics import METRIC_FNS, SCALE

        tok = load_tokenizer(self.tokenizer_id)
        name = self.metrics[exp_index] if exp_index is not None else "accuracy"
        metric, scale = METRIC_FNS[name], SCALE[name]
        budget = self.max_new_tokens[exp_index] if exp_index is not None else max(self.max_new_tokens)
        chunks = FixedChunks(batch_size) if isinstance(batch_size, int) else batch_size

        def text(ids: list[int]) -> str:
            return str(tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

        # prompts of similar length share a batch, so little of each forward pass is padding
        order = torch.argsort(answer_start(data.x[:, 1]), stable=True)

        def judge_batch(i: int, j: int) -> list[tuple[float, dict[str, Any]]]:
            index = order[i:j]
            x = data.x[index]
            preds = self.generate(infer, x, task, device, budget, generator)
            judged = []
            for k, row, pred in zip(index.tolist(), x, preds, strict=True):
                prompt_ids = row[0][: int(answer_start(row[1:2])[0])]
                ref = text([t for t in row[0][row[1] == 1].tolist() if t != self.eos_id]).removeprefix(" ")
                source = text(prompt_ids.tolist())
                generation = text(pred).removeprefix(" ")
                score = metric(generation, ref, source)
                judged.append((score, {"example": k, "metric": name, "prompt": source,
                                       "generation": generation, "reference": ref, "score": score}))
            return judged

        results = [r for part in chunks(len(data), judge_batch) for r in part]
        total = 0.0
        for score, _ in results:
            total += score / scale
        if samples is not None:
            samples.extend(sorted((r for _, r in results), key=lambda r: r["example"]))
        return total / max(len(data), 1)

    def generate(self, infer: Callable[[Batch], Tensor], x: Tensor, task: int | None,
                 device: torch.device, max_new_tokens: int,
                 generator: GreedyFn | None = None) -> list[list[int]]:
        """Greedy continuation of each prompt (row 0 before the answer mask) until eos/budget.

        The exact path: ``infer`` on the right-padded prompt plus the tokens generated so far,
        once per new token. Row ``r`` gets at most ``max_new_tokens`` tokens and never runs past
        the packed width ``L`` (at most ``L - start_r`` tokens); eos ends a row and is not kept.
        ``generator`` (a model's :meth:`GreedyGenerator.generate_greedy`, offered by the
        evaluator only where ``infer`` is the model's own forward pass) is used instead when
        every prompt holds a token, with the same per-row budgets and eos; it ignores ``task``,
        which only a method's own prediction could read."""
        start = answer_start(x[:, 1])
        length = x.shape[-1]
        if generator is not None and bool((start > 0).all()):
            prompts = [row[: int(s)] for row, s in zip(x[:, 0], start, strict=True)]
            return generator(prompts, [min(max_new_tokens, length - int(s)) for s in start], self.eos_id)
        ids = x[:, 0].clone()
        pos = torch.arange(length).expand_as(ids)
        ids[pos >= start[:, None]] = self.pad_id  # the gold answer and padding never reach the model
        gen_mask = torch.zeros_like(ids)
        out: list[list[int]] = [[] for _ in range(len(x))]
        done = torch.zeros(len(x), dtype=torch.bool)
        tasks = None if task is None else torch.full((len(x),), task, dtype=torch.long, device=device)
        for step in range(max_new_tokens):
            cur = start + step
            done |= cur >= length
            if bool(done.all()):
                break
            # columns past the furthest position still predicting are never read (causal model)
            width = int(cur[~done].max())
            packed = torch.stack([ids[:, :width], gen_mask[:, :width]], dim=1).to(device)
            logits = infer(Batch(packed, None, tasks))
            rows = torch.arange(len(x))
            nxt = logits[rows.to(device), (cur - 1).clamp(max=width - 1).to(device)].argmax(-1).cpu()
            for r in rows[~done].tolist():
                token = int(nxt[r])
                if self.eos_id is not None and token == self.eos_id:
                    done[r] = True
                    continue
                out[r].append(token)
                ids[r, cur[r]] = token
                gen_mask[r, cur[r]] = 1
        return out


def trim_columns(batch: Batch, used: Tensor) -> Batch:
    """``batch`` with its packed inputs (N, 2, L) cut after the last column any row ``used``."""
    cols = used.any(0).nonzero()
    width = int(cols.max()) + 1 if len(cols) else 1
    if width == batch.x.shape[-1]:
        return batch
    return Batch(batch.x[..., :width], batch.y, batch.task)


def answer_start(mask: Tensor) -> Tensor:
    """Index of the first answer token per row of a 0/1 answer mask (N, L)."""
    return mask.int().argmax(dim=1)

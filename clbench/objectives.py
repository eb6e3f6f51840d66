"""Owns training objectives: the base loss and the class scores a stream's outputs are judged by.

- ``classification``: outputs are class logits (N, C); loss = cross-entropy; scores = outputs.
- ``causal_lm``: inputs are packed ``(N, 2, L)`` tensors, row 0 the token ids (prompt, answer,
  padding) and row 1 a 0/1 mask of the answer tokens; outputs are token logits (N, L, V).
  Loss = next-token cross-entropy on the answer tokens only (instruction tuning). Scores = the
  log-probability of each class's first verbaliser token at the position that predicts the first
  answer token (rank classification over the label set, one forward pass). Exact match of the
  greedy answer against the label set coincides with it whenever the labels' first tokens differ,
  which the text streams check when they are built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clbench.streams import Batch, Stream

OBJECTIVES = ("classification", "causal_lm", "causal_lm_text")


class Objective:
    """Class-logit classification (the default)."""

    name = "classification"

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        assert batch.y is not None, "training batches carry labels"
        return F.cross_entropy(outputs.float(), batch.y)

    def scores(self, outputs: Tensor, batch: Batch) -> Tensor:
        """(N, C) class scores from the model's outputs (argmax = prediction)."""
        return outputs

    def eval_inputs(self, x: Tensor) -> Tensor:
        """What inference may see of a test input (nothing that reveals the label)."""
        return x

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

    def __init__(self, first_tokens: Tensor, pad_id: int) -> None:
        self.first_tokens = first_tokens  # (C,) token id of each class's first answer token
        self.pad_id = pad_id

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


def answer_start(mask: Tensor) -> Tensor:
    """Index of the first answer token per row of a 0/1 answer mask (N, L)."""
    return mask.int().argmax(dim=1)


def objective_for(stream: Stream) -> Objective:
    """The objective a stream declares in ``meta["objective"]`` (default classification)."""
    name = stream.meta.get("objective", "classification")
    if name == "causal_lm_text":
        return LanguageModelingObjective()
    if name == "causal_lm":
        return CausalLMObjective(torch.as_tensor(stream.meta["first_tokens"], dtype=torch.long),
                                 int(stream.meta["pad_id"]))
    return Objective()

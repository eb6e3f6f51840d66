"""Owns frozen-embedding probes: nearest-class-centroid accuracy on tasks outside the stream.

A general-capability score for models that expose ``embed(x) -> (N, D)`` (e.g. the pooled
sentence embedding of ``hf_encoder``): for each :class:`~clbench.streams.ProbeTask` a stream
declares, embed the support and query inputs with the current model (no training, no method
hook), L2-normalise, take each class's mean support embedding as its centroid and predict the
class whose normalised centroid has the highest cosine similarity. Scores are named
``probe_<task>/acc``; the runner records them before training and after every experience, like
the other general-capability scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.models import embedder
from clbench.streams import ProbeTask


def nearest_centroid_accuracy(support: Tensor, support_y: Tensor, query: Tensor, query_y: Tensor) -> float:
    """Accuracy of cosine nearest-class-centroid classification of ``query``.

    Args:
        support: (S, D) embeddings whose class means are the centroids.
        support_y: (S,) labels 0..k-1; a class without support examples is never predicted.
        query: (Q, D) embeddings to classify; query_y: their (Q,) labels.
    """
    s, q = F.normalize(support.float(), dim=-1), F.normalize(query.float(), dim=-1)
    k = int(max(support_y.max(), query_y.max())) + 1
    sums = torch.zeros(k, s.shape[1], device=s.device).index_add_(0, support_y.to(s.device), s)
    counts = torch.bincount(support_y.to(s.device), minlength=k)
    scores = q @ F.normalize(sums, dim=-1).T
    scores[:, counts == 0] = float("-inf")
    return float((scores.argmax(-1).cpu() == query_y.cpu()).float().mean())


def embed_all(embed: Callable[[Tensor], Tensor], x: Tensor, device: torch.device,
              batch_size: int = 64) -> Tensor:
    """``embed`` over ``x`` in batches (on ``device``), concatenated on ``device``."""
    return torch.cat([embed(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)])


def probe_scores(model: nn.Module, probes: Sequence[ProbeTask], device: torch.device,
                 batch_size: int = 64) -> dict[str, float]:
    """``{"probe_<task>/acc": accuracy}`` per probe; ``{}`` without probes or ``model.embed``."""
    embed = embedder(model)
    if not probes or embed is None:
        return {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return {f"probe_{p.name}/acc": nearest_centroid_accuracy(
                embed_all(embed, p.support.x, device, batch_size), p.support.y,
                embed_all(embed, p.query.x, device, batch_size), p.query.y) for p in probes}
    finally:
        model.train(was_training)

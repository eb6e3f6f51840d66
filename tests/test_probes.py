"""Frozen-embedding probes: nearest-class-centroid accuracy on tasks outside the stream."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clbench.probes import nearest_centroid_accuracy, probe_scores
from clbench.streams import ProbeTask, Split


def test_nearest_centroid_accuracy_by_hand() -> None:
    support = torch.tensor([[1.0, 0.0], [3.0, 0.2], [0.0, 1.0], [0.1, 2.0]])
    sy = torch.tensor([0, 0, 1, 1])
    query = torch.tensor([[5.0, 1.0], [0.2, 0.1], [1.0, 4.0], [2.0, 1.9]])  # cosine, so scale is ignored
    qy = torch.tensor([0, 1, 1, 1])
    assert nearest_centroid_accuracy(support, sy, query, qy) == 0.5  # [0.2, 0.1] and [2, 1.9] lean to class 0
    # a class without support examples is never predicted
    assert nearest_centroid_accuracy(support[:2], sy[:2], query, torch.tensor([0, 0, 2, 2])) == 0.5


class _Embedder(nn.Module):
    """Embeds by a fixed projection; counts calls and records its mode."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 2, bias=False)
        self.modes: list[bool] = []

    def embed(self, x: Tensor) -> Tensor:
        self.modes.append(self.training)
        return self.proj(x)


def test_probe_scores_per_task_in_eval_mode_and_empty_without_embed() -> None:
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0]])

    def split(n: int) -> Split:
        y = torch.arange(2).repeat(n)
        return Split(means[y] + 0.3 * torch.randn(len(y), 4, generator=g), y)

    model = _Embedder()
    with torch.no_grad():
        model.proj.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    probes = [ProbeTask("easy", split(8), split(10)), ProbeTask("flipped", split(8), Split(split(10).x, 1 - split(10).y))]
    scores = probe_scores(model.train(), probes, torch.device("cpu"), batch_size=5)
    assert scores == {"probe_easy/acc": 1.0, "probe_flipped/acc": 0.0}
    assert model.training and set(model.modes) == {False} and len(model.modes) == 2 * (4 + 4)
    assert probe_scores(nn.Linear(4, 2), probes, torch.device("cpu")) == {}
    assert probe_scores(model, [], torch.device("cpu")) == {}

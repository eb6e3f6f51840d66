"""iCaRL: herding, class means, NME prediction, BCE distillation targets, memory, state."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.errors import ConfigError, IncompatibleError
from clbench.options import build_dataclass
from clbench.protocol import check_compatible
from clbench.runner import run
from clbench.streams import Batch, Experience, Split, StreamInfo
from clbench.testing import tiny_config, tiny_stream
from methods.icarl import ICaRL, ICaRLConfig, class_mean, herding_order, nme_scores


class Net(nn.Module):
    """``head(features(x))``: a ReLU layer (the NME feature) and a linear head."""

    def __init__(self, dim: int = 4, n_out: int = 6, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Linear(dim, 5), nn.ReLU())
        self.head = nn.Linear(5, n_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _info(n_classes: int = 6, scenario_type: str = "class_incremental") -> StreamInfo:
    return StreamInfo("t", scenario_type, 3, n_classes, (4,), ((0, 1), (2, 3), (4, 5)))


def _exp(index: int, classes: tuple[int, ...], n: int = 10, seed: int = 0) -> Experience:
    g = torch.Generator().manual_seed(seed + index)
    y = torch.tensor(classes).repeat_interleave(n)
    split = Split(torch.randn(len(y), 4, generator=g) + y.unsqueeze(1).float(), y)
    return Experience(index, 0, classes, split, split, split)


def _paper_herding(features: Tensor, m: int) -> list[int]:
    """Rebuffi et al., Algorithm 4, straight from the formula: over unit-norm features,
    ``p_k = argmin_x || mu - (phi(x) + sum_{j<k} phi(p_j)) / k ||``; returns every pick, repeats
    included, until ``m`` distinct samples are picked."""
    phi = features / features.norm(dim=1, keepdim=True)
    mu = phi.mean(0)
    picks: list[int] = []
    total = torch.zeros_like(mu)
    while len(set(picks)) < m:
        k = len(picks) + 1
        i = int((mu - (total + phi) / k).norm(dim=1).argmin())
        picks.append(i)
        total = total + phi[i]
    return picks


def test_herding_picks_the_exemplar_closest_to_the_running_class_mean() -> None:
    feats = torch.rand(40, 6, generator=torch.Generator().manual_seed(3))
    order = herding_order(feats, 8)
    picks = _paper_herding(feats, 8)
    assert len(picks) > 8  # a sample is picked again on this data (see the next test)
    stored = list(dict.fromkeys(picks))  # distinct picks in order of first pick
    assert {i: int(order[i]) for i in stored} == {i: k for k, i in enumerate(stored, 1)}
    assert int((order > 0).sum()) == 8


def test_herding_stores_a_repeated_pick_once_but_counts_it_in_the_running_sum() -> None:
    # unit vectors at 0, 60 and 90 degrees: the 60-degree one is nearest the mean direction and,
    # by the formula, also the second pick; it is stored once, and the third pick (0 degrees)
    # is made with the repeat counted in the running sum
    feats = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 2.0]])
    assert _paper_herding(feats, 2) == [1, 1, 0]
    assert herding_order(feats, 2).tolist() == [2.0, 1.0, 0.0]


def test_herding_and_nme_keep_an_all_zero_feature_finite() -> None:
    feats = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert sorted(herding_order(feats, 3).tolist()) == [1.0, 2.0, 3.0]
    scores = nme_scores(feats, torch.eye(2), torch.tensor([True, True]))
    assert torch.isfinite(scores).all() and torch.isfinite(class_mean(feats)).all()


def test_herding_keeps_every_sample_when_the_class_is_smaller_than_m() -> None:
    order = herding_order(torch.rand(5, 3, generator=torch.Generator().manual_seed(0)), 20)
    assert sorted(order.tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_class_mean_is_the_normalised_mean_of_normalised_features() -> None:
    feats = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    torch.testing.assert_close(class_mean(feats), torch.tensor([1.0, 1.0]) / math.sqrt(2))
    flipped = torch.tensor([[0.0, 1.0], [0.0, 4.0]])  # mean of normalised = (0, 1)
    expected = (torch.tensor([0.5, 0.5]) + torch.tensor([0.0, 1.0])) / 2
    torch.testing.assert_close(class_mean(feats, flipped), expected / expected.norm())


def test_nme_predicts_the_nearest_known_class_mean() -> None:
    means = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), dim=1)
    known = torch.tensor([True, True, False, True])
    feats = torch.tensor([[2.0, 0.1, 0.0], [0.0, 5.0, 0.2], [1.0, 1.1, 0.9], [-1.0, 0.0, 0.0]])
    scores = nme_scores(feats, means, known)
    x = F.normalize(feats, dim=1)
    dist = torch.cdist(x, means)
    torch.testing.assert_close(scores[:, known], -dist[:, known])
    assert scores.argmax(1).tolist() == [0, 1, 3, 1]
    # the last feature is at cosine < 1/2 from every known mean: a zero "mean" for the unknown
    # class 2 would be nearest (distance 1), but a class without exemplars is never predicted
    assert float(dist[3, 2]) == pytest.approx(1.0, abs=1e-6) and float(dist[3, known].min()) > 1.0


def test_predict_uses_the_head_before_any_class_mean_then_nme() -> None:
    icarl, model = ICaRL(ICaRLConfig(mem_size=6)), Net()
    icarl.setup(model, _info())
    x = torch.randn(7, 4)
    torch.testing.assert_close(icarl.predict(model, Batch(x, None)), model(x))
    exp = _exp(0, (0, 1))
    icarl.on_experience_start(exp, model)
    icarl.on_experience_end(exp, model)
    assert icarl.known is not None and icarl.means is not None
    assert icarl.known.tolist() == [True, True, False, False, False, False]
    scores = icarl.predict(model, Batch(x, None))
    feats = model.features(x)
    torch.testing.assert_close(scores, nme_scores(feats, icarl.means, icarl.known))
    nearest = torch.cdist(F.normalize(feats, dim=1), icarl.means[:2]).argmin(1)
    assert torch.equal(scores.argmax(1), nearest)
    head = ICaRL(ICaRLConfig(mem_size=6, classifier="head"))
    head.setup(model, _info())
    head.on_experience_start(exp, model)
    head.on_experience_end(exp, model)
    torch.testing.assert_close(head.predict(model, Batch(x, None)), model(x))


def test_class_means_are_computed_from_the_exemplars_features() -> None:
    icarl, model = ICaRL(ICaRLConfig(mem_size=4)), Net()
    icarl.setup(model, _info())
    exp = _exp(0, (0, 1))
    icarl.on_experience_start(exp, model)
    icarl.on_experience_end(exp, model)
    assert icarl.means is not None
    for c, e in icarl.exemplars.items():
        torch.testing.assert_close(icarl.means[c], class_mean(model.features(e["x"])))


def test_image_class_means_average_the_horizontally_flipped_exemplars() -> None:
    class ImageNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flat = nn.Flatten()
            self.head = nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.flat(x))

    x = torch.rand(4, 1, 2, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 0, 1, 1])
    exp = Experience(0, 0, (0, 1), Split(x, y), Split(x, y), Split(x, y))
    info = StreamInfo("t", "class_incremental", 1, 2, (1, 2, 3), ((0, 1),))
    for flip in (True, False):
        icarl, model = ICaRL(ICaRLConfig(mem_size=4, hflip_means=flip)), ImageNet()
        icarl.setup(model, info)
        icarl.on_experience_start(exp, model)
        icarl.on_experience_end(exp, model)
        assert icarl.means is not None
        flat = x[:2].flatten(1)
        expected = class_mean(flat, x[:2].flip(3).flatten(1) if flip else None)
        torch.testing.assert_close(icarl.means[0], expected)


def test_memory_is_split_over_seen_classes_and_older_classes_keep_their_first_picks() -> None:
    icarl, model = ICaRL(ICaRLConfig(mem_size=9)), Net()
    icarl.setup(model, _info())
    e0, e1 = _exp(0, (0, 1)), _exp(1, (2, 3))
    icarl.on_experience_start(e0, model)
    assert icarl.train_data(e0, [e0]) is e0.train  # nothing stored yet
    icarl.on_experience_end(e0, model)
    assert icarl.per_class() == 5  # ceil(9 / 2)
    assert {c: len(e["x"]) for c, e in icarl.exemplars.items()} == {0: 5, 1: 5}
    before = {c: (e["x"].clone(), e["order"].clone()) for c, e in icarl.exemplars.items()}
    icarl.on_experience_start(e1, model)
    data = icarl.train_data(e1, [e0, e1])
    assert torch.equal(data.x[: len(e1.train)], e1.train.x)
    assert data.y[len(e1.train):].tolist() == [0] * 5 + [1] * 5  # memory after the data, by class
    icarl.on_experience_end(e1, model)
    assert icarl.per_class() == 3  # ceil(9 / 4)
    assert {c: len(e["x"]) for c, e in icarl.exemplars.items()} == {0: 3, 1: 3, 2: 3, 3: 3}
    for c in (0, 1):
        x, order = before[c]
        assert torch.equal(icarl.exemplars[c]["x"], x[order <= 3])  # herding ranks 1..3, data order
    for c in (2, 3):  # the stored exemplars are the herding picks on the class's samples, in data order
        sel = e1.train.y == c
        order = herding_order(model.features(e1.train.x[sel]).detach(), 3)
        assert torch.equal(icarl.exemplars[c]["x"], e1.train.x[sel][order > 0])
    assert icarl.experience_report() == {"exemplars": 12, "exemplars_per_class": 3}


def test_fixed_memory_false_keeps_mem_size_exemplars_per_class() -> None:
    icarl, model = ICaRL(ICaRLConfig(mem_size=4, fixed_memory=False)), Net()
    icarl.setup(model, _info())
    for i, classes in enumerate([(0, 1), (2, 3)]):
        exp = _exp(i, classes)
        icarl.on_experience_start(exp, model)
        icarl.on_experience_end(exp, model)
    assert {c: len(e["x"]) for c, e in icarl.exemplars.items()} == {0: 4, 1: 4, 2: 4, 3: 4}


def test_loss_is_bce_on_one_hot_targets_with_old_classes_from_the_teacher() -> None:
    icarl, model = ICaRL(), Net()
    icarl.setup(model, _info())
    batch = Batch(torch.randn(5, 4), torch.tensor([2, 3, 0, 2, 1]))
    out = model(batch.x)
    loss = icarl.loss(model, batch, out, torch.tensor(9.0))  # first experience: no teacher
    one_hot = F.one_hot(batch.y, 6).float()
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(out, one_hot))
    exp = _exp(0, (0, 1))
    icarl.on_experience_start(exp, model)
    icarl.on_experience_end(exp, model)
    assert icarl.old_classes == [0, 1]
    teacher_out = model(batch.x).detach()
    with torch.no_grad():
        model.head.weight.add_(0.5)  # the student moves; the teacher must not
    out = model(batch.x)
    target = one_hot.clone()
    target[:, :2] = torch.sigmoid(teacher_out[:, :2])
    loss = icarl.loss(model, batch, out, torch.tensor(9.0))
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(out, target))
    manual = -(target * torch.log(torch.sigmoid(out)) + (1 - target) * torch.log(1 - torch.sigmoid(out))).mean()
    torch.testing.assert_close(loss, manual)
    loss.backward()
    assert model.head.weight.grad is not None
    assert icarl.teacher is not None and all(p.grad is None for p in icarl.teacher.parameters())


def test_end_of_experience_leaves_mode_weights_and_grads_alone() -> None:
    icarl, model = ICaRL(ICaRLConfig(mem_size=6)), Net().train()
    icarl.setup(model, _info())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exp = _exp(0, (0, 1))
    icarl.on_experience_start(exp, model)
    icarl.on_experience_end(exp, model)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_state_dict_round_trips_through_weights_only_load() -> None:
    icarl, model = ICaRL(ICaRLConfig(mem_size=6)), Net()
    icarl.setup(model, _info())
    e0, e1 = _exp(0, (0, 1)), _exp(1, (2, 3))
    icarl.on_experience_start(e0, model)
    icarl.on_experience_end(e0, model)
    icarl.on_experience_start(e1, model)
    buf = io.BytesIO()
    torch.save(icarl.state_dict(), buf)
    buf.seek(0)
    restored = ICaRL(ICaRLConfig(mem_size=6))
    restored.setup(model, _info())
    restored.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(6, 4)
    torch.testing.assert_close(restored.predict(model, Batch(x, None)), icarl.predict(model, Batch(x, None)))
    assert restored.observed == [0, 1, 2, 3] and restored.per_class() == 2
    torch.testing.assert_close(restored.train_data(e1, [e0, e1]).x, icarl.train_data(e1, [e0, e1]).x)
    with torch.no_grad():
        model.head.weight.mul_(1.5)  # the teacher is the saved one, not the live model
    batch = Batch(x, torch.tensor([2, 3, 2, 3, 2, 3]))
    out = model(x)
    torch.testing.assert_close(restored.loss(model, batch, out, torch.tensor(0.0)),
                               icarl.loss(model, batch, out, torch.tensor(0.0)))


def test_refuses_models_without_a_head_and_other_scenario_types() -> None:
    with pytest.raises(IncompatibleError, match="head"):
        ICaRL().setup(nn.Linear(4, 6), _info())
    stream = tiny_stream(scenario_type="task_incremental")
    with pytest.raises(IncompatibleError, match="task_incremental"):
        check_compatible(ICaRL, stream, "vision")


def test_run_reports_the_exemplar_count(tmp_path: Path) -> None:
    res = run(tiny_config(tmp_path, "icarl", **{"method.mem_size": 12, "eval.validation": False}))
    assert res.mechanism["exemplars"] == [12, 12, 12]  # 6, 3 and 2 per class
    assert all(0.0 <= v <= 1.0 for row in res.R for v in row)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="classifier"):
        build_dataclass(ICaRLConfig, {"classifier": "ncm"}, "method")
    with pytest.raises(ValueError, match="mem_size"):
        ICaRLConfig(mem_size=0)


def test_loss_is_computed_in_float32_outside_autocast() -> None:
    icarl, model = ICaRL(), Net()
    out = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)).bfloat16()
    batch = Batch(torch.randn(4, 4), torch.tensor([0, 1, 2, 3]))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CUDA autocast refuses binary_cross_entropy
        loss = icarl.loss(model, batch, out, torch.tensor(0.0))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(out.float(), F.one_hot(batch.y, 6).float()))

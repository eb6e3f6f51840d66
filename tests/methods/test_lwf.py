"""LwF: distillation arithmetic, active units, per-experience alpha, frozen teacher, state."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from clbench.errors import ConfigError
from clbench.options import build_dataclass
from clbench.streams import Batch, Experience, Split
from clbench.testing import tiny_stream
from clbench.trainer import mask_to_classes
from methods.lwf import LwF, LwFConfig, distillation_loss


def _model(seed: int = 0, n_out: int = 4) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(3, n_out)


def _exp(index: int, classes: tuple[int, ...], task: int = 0) -> Experience:
    y = torch.tensor(classes).repeat(4)
    split = Split(torch.randn(len(y), 3), y)
    return Experience(index, task, classes, split, split, split)


def _batch() -> Batch:
    return Batch(torch.randn(5, 3), torch.tensor([2, 3, 2, 3, 2]), torch.zeros(5, dtype=torch.long))


def test_loss_is_the_base_loss_on_the_first_experience() -> None:
    lwf, model = LwF(), _model()
    base = torch.tensor(0.7)
    assert lwf.loss(model, _batch(), model(_batch().x), base) is base


def test_distillation_equals_hand_computed_kl_on_known_logits() -> None:
    student = torch.tensor([[1.0, 2.0, 9.0], [0.0, 0.0, -9.0]])
    teacher = torch.tensor([[2.0, 0.0, 5.0], [1.0, 1.0, 5.0]])
    T = 2.0
    expected = 0.0
    for s, t in zip(student.tolist(), teacher.tolist(), strict=True):
        zs = [math.exp(v / T) for v in s[:2]]
        zt = [math.exp(v / T) for v in t[:2]]
        p = [z / sum(zs) for z in zs]
        q = [z / sum(zt) for z in zt]
        expected += sum(qi * math.log(qi / pi) for qi, pi in zip(q, p, strict=True))
    expected /= 2  # batchmean
    assert float(distillation_loss(student, teacher, [0, 1], T)) == pytest.approx(expected, rel=1e-6)


def test_loss_adds_alpha_times_kd_over_previously_seen_units_only() -> None:
    lwf, model = LwF(LwFConfig(alpha=(0.0, 0.5, 3.0), temperature=2.0)), _model()
    lwf.on_experience_end(_exp(0, (0, 1)), model)
    assert lwf.prev_classes == {0: [0, 1]} and lwf.current_alpha() == 0.5
    with torch.no_grad():
        model.weight.add_(torch.randn_like(model.weight))
    batch, base = _batch(), torch.tensor(0.3)
    out = model(batch.x)
    loss = lwf.loss(model, batch, out, base)
    teacher = lwf.teacher
    assert teacher is not None
    kd = distillation_loss(out, teacher(batch.x), [0, 1], 2.0)
    assert float(loss.detach()) == pytest.approx(0.3 + 0.5 * float(kd.detach()), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, out)
    assert (grad[:, 2:] == 0).all() and (grad[:, :2] != 0).any()  # units 2, 3 never seen before
    lwf.on_experience_end(_exp(1, (2, 3)), model)
    assert lwf.prev_classes == {0: [0, 1, 2, 3]} and lwf.current_alpha() == 3.0


def test_teacher_is_a_frozen_eval_mode_copy() -> None:
    linear = nn.Linear(3, 4)
    lwf, model = LwF(), nn.Sequential(linear, nn.Dropout(0.5))
    lwf.on_experience_end(_exp(0, (0, 1)), model)
    teacher = lwf.teacher
    assert teacher is not None and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        linear.weight.zero_()
    assert sum(float(p.abs().sum()) for p in teacher.parameters()) > 0  # a copy, not a view


def test_task_incremental_distils_each_past_task_on_unmasked_logits() -> None:
    stream = tiny_stream(n_experiences=3, scenario_type="task_incremental", dim=3)
    lwf, model = LwF(LwFConfig(alpha=2.0)), _model(n_out=6)
    lwf.setup(model, stream.info())
    for exp in stream.experiences[:2]:
        lwf.on_experience_end(exp, model)
    assert lwf.prev_classes == {0: [0, 1], 1: [2, 3]}
    with torch.no_grad():
        model.weight.add_(torch.randn_like(model.weight))
    batch, base = _batch(), torch.tensor(0.0)
    masked = mask_to_classes(model(batch.x), (4, 5))  # what the trainer hands to ``loss``
    teacher = lwf.teacher
    assert teacher is not None
    with torch.no_grad():
        full, prev = model(batch.x), teacher(batch.x)
    expected = sum(float(distillation_loss(full, prev, u, 2.0)) for u in ([0, 1], [2, 3]))
    loss = lwf.loss(model, batch, masked, base)
    assert float(loss.detach()) == pytest.approx(2.0 * expected, rel=1e-6) and expected > 0


def test_state_dict_round_trips_through_weights_only_load() -> None:
    lwf, model = LwF(LwFConfig(alpha=(1.0, 2.0, 2.0))), _model()
    lwf.on_experience_end(_exp(0, (0, 1)), model)
    buf = io.BytesIO()
    torch.save(lwf.state_dict(), buf)
    buf.seek(0)
    restored = LwF(LwFConfig(alpha=(1.0, 2.0, 2.0)))
    restored.load_state_dict(torch.load(buf, weights_only=True))
    live = _model(seed=1)  # the resumed model differs from the teacher
    batch, base = _batch(), torch.tensor(0.0)
    out = live(batch.x)
    a = restored.loss(live, batch, out, base).detach()
    b = lwf.loss(live, batch, out, base).detach()
    assert float(a) == float(b) > 0
    assert restored.expcount == 1 and restored.prev_classes == {0: [0, 1]}
    assert restored.state_dict()["teacher"].keys() == lwf.state_dict()["teacher"].keys()


def test_alpha_list_must_cover_the_stream_and_config_is_validated() -> None:
    with pytest.raises(ValueError, match="alpha lists 2 values"):
        LwF(LwFConfig(alpha=(1.0, 1.0))).setup(_model(), tiny_stream(n_experiences=3).info())
    assert build_dataclass(LwFConfig, {"alpha": [0, 1, 2]}, "method").alpha == (0.0, 1.0, 2.0)
    with pytest.raises(ConfigError, match="temperature"):
        build_dataclass(LwFConfig, {"temperature": 0}, "method")
    with pytest.raises(ConfigError, match="alpha"):
        build_dataclass(LwFConfig, {"alpha": -1.0}, "method")

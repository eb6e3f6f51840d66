"""CoTTA: EMA teacher formula, stochastic restore, anchor-gated augmentation, teacher output."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clbench.models import CNNBN, CNNConfig
from clbench.streams import Batch, StreamInfo
from clbench.tta import soft_cross_entropy, weight_bias_parameters
from methods.cotta import CoTTA, CoTTAConfig, cotta_augment

INFO = StreamInfo("t", "test_time", 1, 4, (1, 8, 8), ((0, 1, 2, 3),))


def _setup(**options: object) -> tuple[CoTTA, nn.Module]:
    torch.manual_seed(0)
    method = CoTTA(CoTTAConfig(**options))  # type: ignore[arg-type]
    return method, method.setup(CNNBN(INFO, CNNConfig(channels=4)), INFO)


def _batch(seed: int = 1) -> Batch:
    return Batch(torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(seed)), None)


def test_teacher_is_the_ema_of_the_student_and_is_the_prediction() -> None:
    method, model = _setup(restore_p=0.0, anchor_threshold=0.0, ema=0.9, lr=0.01)
    assert method.teacher is not None
    teacher_before = copy.deepcopy(method.teacher)
    out = method.adapt(model, _batch())
    assert torch.allclose(out, teacher_before(_batch().x))  # t, computed before the teacher update
    for t0, t1, s in zip(teacher_before.parameters(), method.teacher.parameters(), model.parameters(), strict=True):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * s, atol=1e-6)
    assert method.augmented_steps == 0


def test_student_loss_is_soft_cross_entropy_to_the_teacher() -> None:
    method, model = _setup(restore_p=0.0, anchor_threshold=0.0, optimizer="sgd", momentum=0.0, lr=0.1)
    student = copy.deepcopy(model)
    x = _batch().x
    loss = soft_cross_entropy(student(x), method.teacher(x).detach()).mean()  # type: ignore[misc]
    loss.backward()
    expected = {k: p - 0.1 * p.grad for k, p in weight_bias_parameters(student).items()}
    method.adapt(model, _batch())
    for k, p in weight_bias_parameters(model).items():
        assert torch.allclose(p, expected[k], atol=1e-6), k


def test_stochastic_restore_resets_about_p_of_the_elements_to_source() -> None:
    method, model = _setup(restore_p=0.3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    torch.manual_seed(0)
    method.stochastic_restore(model)
    restored = total = 0
    for k, p in weight_bias_parameters(model).items():
        src = method.source[k]
        back = torch.isclose(p, src)
        assert torch.allclose(p[~back], src[~back] + 1.0)  # the rest is untouched
        restored, total = restored + int(back.sum()), total + p.numel()
    assert 0.25 < restored / total < 0.35


def test_unconfident_anchor_switches_to_augmentation_averaging() -> None:
    method, model = _setup(anchor_threshold=1.01, n_augment=3)
    torch.manual_seed(0)
    out = method.adapt(model, _batch())
    assert method.augmented_steps == 1
    method2, model2 = _setup(anchor_threshold=1.01, n_augment=3)
    torch.manual_seed(0)
    assert torch.equal(out, method2.adapt(model2, _batch()))  # seeded: identical


def test_augmentation_is_seeded_and_in_range() -> None:
    x = torch.rand(4, 1, 8, 8)
    torch.manual_seed(3)
    a = cotta_augment(x)
    torch.manual_seed(3)
    assert torch.equal(a, cotta_augment(x))
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.equal(a, x)
    with pytest.raises(ValueError, match="images"):
        cotta_augment(torch.rand(4, 16))


def test_state_round_trip_restores_teacher_and_optimizer() -> None:
    method, model = _setup()
    method.adapt(model, _batch())
    other, _ = _setup()
    other.load_state_dict(method.state_dict())
    assert other.teacher is not None and method.teacher is not None
    assert all(torch.equal(a, b) for a, b in zip(other.teacher.state_dict().values(),
                                                  method.teacher.state_dict().values(), strict=True))
    assert other.steps_taken == 1
    assert CoTTA().state_dict() == {}

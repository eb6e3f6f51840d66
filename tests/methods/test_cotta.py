"""CoTTA: EMA teacher, stochastic restore, anchor gate and its calibration, flips, mechanism figures."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clbench.adapt import soft_cross_entropy, weight_bias_parameters
from clbench.models import CNNBN, CNNConfig
from clbench.streams import Batch, Experience, Split, StreamInfo
from methods.cotta import PAPER_THRESHOLD, CoTTA, CoTTAConfig, cotta_augment

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


def _source(n: int = 40) -> Split:
    return Split(torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(5)), torch.zeros(n, dtype=torch.long))


def test_default_threshold_is_calibrated_on_source_data_as_a_confidence_quantile() -> None:
    method, model = _setup(anchor_quantile=0.05, calibration_batch_size=10)
    assert method.needs_source_data and not CoTTA.needs_source_data  # per instance: no refusal without source
    source = _source()
    method.on_source_data(model, source)
    assert method.anchor is not None
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    x = source.x[order]
    with torch.no_grad():
        conf = torch.cat([method.anchor(x[i : i + 10]).softmax(1).max(1)[0] for i in range(0, 40, 10)])
    assert method.anchor_threshold() == pytest.approx(float(torch.quantile(conf.double(), 0.05)))
    assert method.experience_report()["anchor_threshold"] == pytest.approx(method.anchor_threshold())


def test_fixed_threshold_ignores_source_data_and_no_source_falls_back_to_the_paper_value() -> None:
    method, model = _setup(anchor_threshold=0.92)
    assert not method.needs_source_data
    method.on_source_data(model, _source())
    assert method.anchor_threshold() == 0.92
    fallback, _ = _setup()  # calibration requested, but the stream has no source split
    assert fallback.anchor_threshold() == PAPER_THRESHOLD == 0.92


def test_flips_follow_the_streams_label_preserving_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    flips: list[bool] = []

    def spy(x: torch.Tensor, hflip: bool = True, noise_std: float = 0.005) -> torch.Tensor:
        flips.append(hflip)
        return x

    monkeypatch.setattr("methods.cotta.cotta_augment", spy)
    method, model = _setup(anchor_threshold=1.01, n_augment=2)
    method.adapt(model, _batch())
    method.label_preserving = {"hflip": False}  # what the test-time loop sets for digit streams
    method.adapt(model, _batch())
    assert flips == [True, True, False, False]
    assert method.experience_report()["hflip"] is False


def test_experience_report_counts_augmented_steps_and_restores_per_domain() -> None:
    method, model = _setup(anchor_threshold=1.01, n_augment=2, restore_p=0.2)
    exp = Experience(0, 0, (0, 1, 2, 3), *(Split(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)),) * 3)
    method.on_experience_start(exp, model)
    for seed in (1, 2, 3):
        method.adapt(model, _batch(seed))
    method.on_experience_end(exp, model)
    r = method.experience_report()
    assert set(CoTTA.mechanism_figures) <= set(r)
    assert r["augmented_fraction"] == 1.0 and r["augmented_steps"] == 3 and r["adapt_steps"] == 3
    n = sum(p.numel() for p in weight_bias_parameters(model).values())
    assert r["restored_elements"] > 0 and 0.1 < r["restored_fraction"] < 0.3
    assert r["restored_fraction"] == pytest.approx(r["restored_elements"] / (3 * n))
    assert 0.0 < r["anchor_confidence"] <= 1.0 and r["param_drift"] > 0.0
    method.on_experience_start(exp, model)  # a new domain starts its own counts
    method.adapt(model, _batch(4))
    assert method.experience_report()["augmented_steps"] == 4
    assert method.domain["steps"] == 1


def test_threshold_survives_the_state_round_trip() -> None:
    method, model = _setup(calibration_batch_size=10)
    method.on_source_data(model, _source())
    other, _ = _setup()
    other.load_state_dict(method.state_dict())
    assert other.anchor_threshold() == method.anchor_threshold() != PAPER_THRESHOLD

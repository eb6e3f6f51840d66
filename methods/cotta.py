"""CoTTA: continual test-time adaptation with an EMA teacher, augmentation and stochastic restore."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torchvision.transforms.functional as TF
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode

from clbench.protocol import Method
from clbench.registry import register_method
from clbench.streams import Batch, Experience, StreamInfo
from clbench.tta import (
    ResetPoint,
    ema_update,
    follow,
    frozen_copy,
    make_optimizer,
    reset_due,
    soft_cross_entropy,
    use_batch_statistics,
    weight_bias_parameters,
)


@dataclass(frozen=True)
class CoTTAConfig:
    """Options of :class:`CoTTA` (defaults: the official CIFAR10-C configuration).

    Attributes:
        optimizer: ``adam`` (CIFAR, lr 1e-3) or ``sgd`` (ImageNet: lr 0.01, momentum 0.9, nesterov).
        lr, momentum, nesterov, weight_decay: the test-time optimizer.
        ema: teacher momentum α in ``θ' ← α θ' + (1 − α) θ``.
        restore_p: probability that an element is restored to its source value per step
            (0.01 CIFAR, 0.001 ImageNet).
        anchor_threshold: augmentation-averaged pseudo-labels are used when the anchor's mean
            max-probability on the batch is below it (0.92 CIFAR10, 0.72 CIFAR100, 0.1 ImageNet).
        n_augment: augmented teacher passes averaged.
        lazy_augment: compute the augmented passes only when they are used (the ImageNet code);
            ``False`` computes them every step like the CIFAR code (same result, another RNG
            stream, ~33x the teacher cost).
        hflip: random horizontal flip in the augmentation (official: on).
        noise_std: std of the Gaussian noise added by the augmentation.
        steps: adaptation steps per batch.
        reset: ``never`` (continual, official), ``domain`` or ``batch`` (official ``episodic``).
    """

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    ema: float = 0.999
    restore_p: float = 0.01
    anchor_threshold: float = 0.92
    n_augment: int = 32
    lazy_augment: bool = True
    hflip: bool = True
    noise_std: float = 0.005
    steps: int = 1
    reset: Literal["never", "domain", "batch"] = "never"

    def __post_init__(self) -> None:
        if not (0.0 <= self.ema <= 1.0 and 0.0 <= self.restore_p <= 1.0):
            raise ValueError(f"ema and restore_p must be in [0, 1], got {self.ema}, {self.restore_p}")
        if self.lr <= 0 or self.steps < 1 or self.n_augment < 1 or self.noise_std < 0:
            raise ValueError(f"need lr > 0, steps >= 1, n_augment >= 1, noise_std >= 0; got {self}")


def _uniform(lo: float, hi: float) -> float:
    return float(torch.empty(()).uniform_(lo, hi))


def color_jitter_pro(x: Tensor) -> Tensor:
    """CoTTA's ColorJitterPro: brightness, contrast, saturation, hue, gamma in random order.

    One set of factors per call (the whole batch shares them, as torchvision transforms applied
    to a batch tensor do); saturation and hue only act on 3-channel images.
    """
    ops = [lambda t: TF.adjust_brightness(t, _uniform(0.6, 1.4)),
           lambda t: TF.adjust_contrast(t, _uniform(0.7, 1.3)),
           lambda t: TF.adjust_saturation(t, _uniform(0.5, 1.5)) if t.shape[-3] == 3 else t,
           lambda t: TF.adjust_hue(t, _uniform(-0.06, 0.06)) if t.shape[-3] == 3 else t,
           lambda t: TF.adjust_gamma(t, _uniform(0.7, 1.3))]
    for i in torch.randperm(len(ops)).tolist():
        x = ops[i](x)
    return x


def cotta_augment(x: Tensor, hflip: bool = True, noise_std: float = 0.005) -> Tensor:
    """The official CIFAR augmentation, on a (N, C, H, W) batch in [0, 1] (one draw per batch).

    clip; ColorJitterPro; edge-pad H/2; RandomAffine(±15°, translate 1/16, scale 0.9–1.1,
    bilinear); GaussianBlur(k=5, σ∈[0.001, 0.5]); centre crop; hflip p=0.5; N(0, noise_std);
    clip.
    """
    if x.dim() != 4:
        raise ValueError(f"the augmentation needs (N, C, H, W) images, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    x = color_jitter_pro(x.clamp(0.0, 1.0))
    x = TF.pad(x, [h // 2], padding_mode="edge")
    tx = round(_uniform(-x.shape[-1] / 16, x.shape[-1] / 16))
    ty = round(_uniform(-x.shape[-2] / 16, x.shape[-2] / 16))
    x = TF.affine(x, angle=_uniform(-15.0, 15.0), translate=[tx, ty], scale=_uniform(0.9, 1.1),
                  shear=[0.0, 0.0], interpolation=InterpolationMode.BILINEAR)
    sigma = _uniform(0.001, 0.5)
    x = TF.center_crop(TF.gaussian_blur(x, [5, 5], [sigma, sigma]), [h, w])
    if hflip and float(torch.rand(())) < 0.5:
        x = TF.hflip(x)
    return (x + torch.randn_like(x) * noise_std).clamp(0.0, 1.0)


@register_method("cotta")
class CoTTA(Method):
    """CoTTA: continual test-time domain adaptation.

    Paper: Wang, Fink, Van Gool & Dai, "Continual Test-Time Domain Adaptation", CVPR 2022,
    arXiv:2203.13591. Official code: qinenergy/cotta (``cifar/cotta.py``, ``imagenet/cotta.py``).

    Mechanism: student θ (all weights/biases trainable, BatchNorm on batch statistics), EMA
    teacher θ', frozen anchor θ0 and the source weights. Per batch: student logits ``s``;
    anchor confidence ``conf = mean_b max_c softmax(f_θ0(x))``; teacher logits ``t = f_θ'(x)``,
    or the mean of ``n_augment`` teacher passes on augmented copies when ``conf <
    anchor_threshold``; loss ``mean_b −Σ softmax(t) log softmax(s)``; one optimizer step;
    ``θ' ← α θ' + (1−α) θ``; stochastic restore ``W ← M ⊙ W_source + (1−M) ⊙ W``, ``M ~
    Bernoulli(restore_p)`` for every trainable weight/bias. The prediction is ``t`` (teacher,
    computed before the teacher update).

    Hooks used: ``setup`` (configure, teacher, anchor, source copy, own optimizer),
    ``on_experience_start`` (per-domain reset), ``adapt``, ``predict`` (teacher forward),
    ``state_dict``/``load_state_dict``.

    Deviations from the paper/official code: augmented passes are computed only when used
    (``lazy_augment``, as the official ImageNet code; the CIFAR code always computes all 32).
    The augmentation is the official CIFAR pipeline re-implemented with torchvision tensor ops
    and the torch RNG (official ColorJitterPro draws factors with Python's ``random``); on
    1-channel images saturation/hue are identity. Only parameters that still require grad are
    restored (as official); the teacher and anchor are held by the method, not the model.
    """

    Config = CoTTAConfig
    scenario_types: ClassVar[frozenset[str]] = frozenset({"test_time"})
    adapts_at_test_time: ClassVar[bool] = True
    objectives: ClassVar[frozenset[str]] = frozenset({"classification"})

    def __init__(self, config: CoTTAConfig | None = None) -> None:
        super().__init__(config)
        self.teacher: nn.Module | None = None
        self.anchor: nn.Module | None = None
        self.source: dict[str, Tensor] = {}
        self.opt: Any = None
        self.start: ResetPoint | None = None
        self.augmented_steps = 0
        self.steps_taken = 0

    def setup(self, model: nn.Module, stream_info: StreamInfo) -> nn.Module:
        c = self.config
        model.train()
        use_batch_statistics(model)
        model.requires_grad_(True)
        params = list(weight_bias_parameters(model).values())
        self.opt = make_optimizer(params, c.optimizer, c.lr, c.momentum, c.weight_decay, c.nesterov)
        self._copies(model)
        self.start = ResetPoint(model, self.opt)
        return model

    def _copies(self, model: nn.Module) -> None:
        self.teacher, self.anchor = frozen_copy(model), frozen_copy(model)
        self.source = {k: p.detach().clone() for k, p in weight_bias_parameters(model).items()}

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        if reset_due(self.config.reset, exp):
            self._reset(model)

    def _reset(self, model: nn.Module) -> None:
        assert self.start is not None
        self.start.restore()
        self._copies(model)

    def teacher_logits(self, x: Tensor) -> Tensor:
        """``t``: the teacher's logits, augmentation-averaged when the anchor is unconfident."""
        c = self.config
        assert self.teacher is not None and self.anchor is not None
        teacher, anchor = follow(self.teacher, x), follow(self.anchor, x)
        with torch.no_grad():
            conf = anchor(x).softmax(1).max(1)[0].mean(0)
            standard = teacher(x)
            augmented = None
            if not c.lazy_augment or conf < c.anchor_threshold:
                augmented = torch.stack([teacher(cotta_augment(x, c.hflip, c.noise_std))
                                         for _ in range(c.n_augment)]).mean(0)
        if conf < c.anchor_threshold:
            self.augmented_steps += 1
            assert augmented is not None
            return augmented
        return standard

    def adapt(self, model: nn.Module, batch: Batch) -> Tensor:
        if reset_due(self.config.reset, None):
            self._reset(model)
        model.train()
        for _ in range(self.config.steps):
            student = model(batch.x)
            target = self.teacher_logits(batch.x)
            loss = soft_cross_entropy(student, target).mean(0)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            assert self.teacher is not None
            ema_update(self.teacher, model, self.config.ema)
            self.stochastic_restore(model)
            self.steps_taken += 1
        return target

    @torch.no_grad()
    def stochastic_restore(self, model: nn.Module) -> None:
        """``W ← M ⊙ W_source + (1 − M) ⊙ W`` with ``M ~ Bernoulli(p)`` per element."""
        p = self.config.restore_p
        for name, w in weight_bias_parameters(model).items():
            if w.requires_grad:
                mask = (torch.rand(w.shape, device=w.device) < p).to(w.dtype)
                src = self.source[name].to(w.device)
                w.copy_(src * mask + w * (1.0 - mask))

    def predict(self, model: nn.Module, batch: Batch) -> Tensor:
        assert self.teacher is not None
        return follow(self.teacher, batch.x)(batch.x)

    def experience_report(self) -> dict[str, Any]:
        return {"adapt_steps": self.steps_taken, "augmented_steps": self.augmented_steps}

    def state_dict(self) -> dict[str, Any]:
        if self.teacher is None or self.anchor is None:
            return {}
        return {"teacher": self.teacher.state_dict(), "anchor": self.anchor.state_dict(),
                "source": self.source, "optimizer": self.opt.state_dict(),
                "counters": [self.steps_taken, self.augmented_steps]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.teacher is None or self.anchor is None or not state:
            return
        self.teacher.load_state_dict(state["teacher"])
        self.anchor.load_state_dict(state["anchor"])
        self.source = dict(state["source"])
        self.opt.load_state_dict(state["optimizer"])
        self.steps_taken, self.augmented_steps = (int(v) for v in state["counters"])

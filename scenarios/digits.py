"""sklearn digits scenario: 1,797 real 8x8 handwritten digits (ships with scikit-learn).

``image_size`` > 8 resizes (bilinear) so the stream can share a backbone with MNIST streams
(the tuning protocol tunes on split digits at 28x28 and evaluates on split MNIST).
``foundation=true`` adds the upright MNIST source half as source data: the tuning scenario of
the vision protocol then shares the evaluation scenario's pretrained backbone, while its stream
data (sklearn digits) stay disjoint from MNIST.

VERSION history: 1 = initial (``permuted_digits`` added later; split_digits unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clbench.errors import ConfigError
from clbench.protocol import Scenario
from clbench.registry import register_scenario
from clbench.streams import Experience, Split, Stream
from scenarios._common import (
    DATA_SEED,
    class_order,
    split_by_classes,
    stratified_split,
    train_val_test,
)

VERSION = "1"


@dataclass(frozen=True)
class SplitDigitsConfig:
    n_experiences: int = 5  # the 10 classes in equal groups, one group per experience (must divide 10)
    task_incremental: bool = False  # True: task ids given at train and test (task-IL)
    class_order_seed: int | None = None  # None: classes 0..9 in order; else a seeded permutation
    image_size: int = 8  # side in pixels; other than 8 = bilinear resize (28 matches MNIST models)
    test_fraction: float = 0.2  # share of each class held out as the test split (fixed data seed)
    val_fraction: float = 0.1  # share of each class's remaining train data carved out as validation
    # True: carry MNIST 5k's upright source half (scenarios.mnist_ft) as source data, so the
    # stream shares the vit_tiny foundation of split_mnist(foundation=true); needs image_size=28
    foundation: bool = False
    rotate: float = 0.0  # degrees, applied to every stream image (not to the source)


@register_scenario("split_digits")
class SplitDigits(Scenario):
    """Split digits: sklearn's 8x8 digits, 5 experiences x 2 classes (class- or task-incremental)."""

    Config = SplitDigitsConfig
    VERSION = VERSION

    def build(self) -> Stream:
        from sklearn.datasets import load_digits

        c: SplitDigitsConfig = self.config
        d = load_digits()
        x = torch.as_tensor(np.asarray(d.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
        if c.image_size != 8:
            x = F.interpolate(x, size=(c.image_size, c.image_size), mode="bilinear", align_corners=False)
        if c.rotate:
            import torchvision.transforms.functional as TF

            x = TF.rotate(x, c.rotate)
        y = torch.as_tensor(np.asarray(d.target, dtype=np.int64))
        source = None
        if c.foundation:
            if c.image_size != 28:
                raise ConfigError("scenario.image_size", c.image_size, "28 when scenario.foundation=true")
            from scenarios.mnist import MNISTData
            from scenarios.mnist_ft import source_and_target

            source = source_and_target(MNISTData())[0]
        splits = train_val_test(x, y, c.test_fraction, c.val_fraction)
        exps = split_by_classes(splits, class_order(10, c.class_order_seed), c.n_experiences,
                                task_incremental=c.task_incremental)
        kind = "task_incremental" if c.task_incremental else "class_incremental"
        return Stream("split_digits", VERSION, kind, exps, 10, self.__doc__ or "", source=source)


@dataclass(frozen=True)
class PermutedDigitsConfig:
    n_experiences: int = 5  # one fixed random pixel permutation per experience, all 10 classes each
    permutation_seed: int = 0  # seed of the permutations
    image_size: int = 28  # resized like split_digits, so the stream shares a model with permuted_mnist
    test_fraction: float = 0.2  # share of each class held out as the test split (fixed data seed)
    val_fraction: float = 0.1  # share of each class's remaining train data carved out as validation


@register_scenario("permuted_digits")
class PermutedDigits(Scenario):
    """Permuted digits: sklearn's digits (resized), one fixed pixel permutation per experience (domain-incremental)."""

    Config = PermutedDigitsConfig
    VERSION = VERSION

    def build(self) -> Stream:
        from sklearn.datasets import load_digits

        c: PermutedDigitsConfig = self.config
        d = load_digits()
        x = torch.as_tensor(np.asarray(d.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
        if c.image_size != 8:
            x = F.interpolate(x, size=(c.image_size, c.image_size), mode="bilinear", align_corners=False)
        y = torch.as_tensor(np.asarray(d.target, dtype=np.int64))
        base = train_val_test(x, y, c.test_fraction, c.val_fraction)
        n = c.image_size * c.image_size
        g = torch.Generator().manual_seed(c.permutation_seed)
        exps = []
        for i in range(c.n_experiences):
            perm = torch.randperm(n, generator=g)
            parts = [Split(s.x.reshape(-1, n)[:, perm].reshape(s.x.shape), s.y) for s in base]
            exps.append(Experience(i, 0, tuple(range(10)), *parts))
        return Stream("permuted_digits", VERSION, "domain_incremental", tuple(exps), 10, self.__doc__ or "")


@dataclass(frozen=True)
class RotatedDigitsFTConfig:
    angles: tuple[float, ...] = (30.0, 60.0, 90.0, 120.0, 150.0)  # degrees; one experience per angle
    source_fraction: float = 0.5  # as rotated_mnist_ft's: the same source, so the same foundation
    test_fraction: float = 0.2  # share of each class held out as the test split (fixed data seed)
    val_fraction: float = 0.1  # share of each class's remaining train data carved out as validation
    # training digits kept per experience (a stratified fixed-seed subset; 0 = all 1,295): the
    # tuning twin then takes as many optimizer steps per experience as the stream it tunes for
    max_train: int = 0

    def __post_init__(self) -> None:
        if self.max_train < 0:
            raise ConfigError("scenario.max_train", self.max_train, "0 (all) or a positive number of digits")


@register_scenario("rotated_digits_ft")
class RotatedDigitsFT(Scenario):
    """Rotated digits on the upright-MNIST foundation: sklearn digits at 28x28, one experience per angle (domain-incremental).

    The tuning twin of ``rotated_mnist_ft``: the same source (MNIST 5k's upright half, which
    pretrains the foundation and measures general capability) and the same angles, with stream
    images from sklearn's digits, disjoint from MNIST.
    """

    Config = RotatedDigitsFTConfig
    VERSION = VERSION
    default_model = "vit_tiny"

    def build(self) -> Stream:
        import torchvision.transforms.functional as TF
        from sklearn.datasets import load_digits

        from scenarios.mnist import MNISTData
        from scenarios.mnist_ft import source_and_target

        c: RotatedDigitsFTConfig = self.config
        d = load_digits()
        x = torch.as_tensor(np.asarray(d.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
        x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
        y = torch.as_tensor(np.asarray(d.target, dtype=np.int64))
        base = train_val_test(x, y, c.test_fraction, c.val_fraction)
        if 0 < c.max_train < len(base[0]):
            keep = stratified_split(base[0].y.numpy(), [c.max_train / len(base[0])], seed=DATA_SEED + 2)[0]
            base = (base[0].subset(torch.as_tensor(keep)), *base[1:])
        exps = tuple(Experience(i, 0, tuple(range(10)), *(Split(TF.rotate(s.x, a), s.y) for s in base))
                     for i, a in enumerate(c.angles))
        source = source_and_target(MNISTData(), c.source_fraction)[0]
        return Stream("rotated_digits_ft", VERSION, "domain_incremental", exps, 10, self.__doc__ or "",
                      source=source)

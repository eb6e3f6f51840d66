"""Shared helpers for scenario builders: deterministic splits and class-incremental streams."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from clbench.streams import Experience, Split

DATA_SEED = 20261123  # fixes the train/val/test partition: identical across run seeds


def stratified_split(y: np.ndarray, fractions: Sequence[float], seed: int = DATA_SEED) -> list[np.ndarray]:
    """Partition indices per class into consecutive parts of the given fractions (last takes rest)."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = np.cumsum([int(round(f * len(idx))) for f in fractions])
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def train_val_test(x: Tensor, y: Tensor, test_fraction: float, val_fraction: float) -> tuple[Split, Split, Split]:
    """Stratified test split, then validation carved from the remaining train part."""
    test_idx, rest = stratified_split(y.numpy(), [test_fraction])
    val_rel, train_rel = stratified_split(y[rest].numpy(), [val_fraction], seed=DATA_SEED + 1)
    train_idx, val_idx = rest[train_rel], rest[val_rel]
    pick = lambda i: Split(x[torch.as_tensor(i)], y[torch.as_tensor(i)])  # noqa: E731
    return pick(train_idx), pick(val_idx), pick(test_idx)


def class_order(n_classes: int, seed: int | None) -> list[int]:
    """0..n-1, or a seeded permutation of it."""
    if seed is None:
        return list(range(n_classes))
    return [int(c) for c in np.random.default_rng(seed).permutation(n_classes)]


def split_by_classes(splits: tuple[Split, Split, Split], order: Sequence[int], n_experiences: int,
                     task_incremental: bool = False) -> tuple[Experience, ...]:
    """Class-incremental (or task-incremental) experiences of equal class groups in ``order``."""
    if len(order) % n_experiences:
        raise ValueError(f"{len(order)} classes do not divide into {n_experiences} experiences")
    per = len(order) // n_experiences
    out = []
    for i in range(n_experiences):
        classes = tuple(sorted(order[i * per : (i + 1) * per]))
        sel = [s.subset(torch.isin(s.y, torch.tensor(classes))) for s in splits]
        out.append(Experience(i, i if task_incremental else 0, classes, *sel))
    return tuple(out)

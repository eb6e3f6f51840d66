"""Shared helpers for scenario builders: deterministic splits and class-incremental streams; for the
text benchmarks (scenarios.text_data), their records, dataset folders, checksummed reads and
validation carve."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clbench.errors import ConfigError, DataUnavailableError
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


# --------------------------------------------------------------------------- text benchmarks

PathLike = str | os.PathLike[str]
REQUIRED_SPLITS = ("train", "test")  # O-LoRA, TRACE (O-LoRA's dev.json copies test.json: never read)


@dataclass(frozen=True)
class TextExample:
    """One example: input text (TRACE: the full prompt) and its target string (TRACE: answer)."""

    text: str
    label: str


@dataclass(frozen=True)
class TextTask:
    """One task of a text CL benchmark, with its three splits as plain data.

    Attributes:
        name: lower_snake task name used in the orders (``dbpedia``, ``sst2``, ``fomc``).
        family: the O-LoRA task family (``TC``, ``SC``, ``NLI``...), ``TRACE`` or ``hub``.
        labels: the label strings in the dataset's own order; ``()`` for open-ended answers.
        instruction: the family instruction that ``olora_prompt`` puts first (may be empty).
        train: training examples (validation examples removed when carved from train).
        val: validation examples; never a copy of test.
        test: test examples.
        provenance: source, upstream repository/commit, files read with their sha256,
            where validation came from, and data quirks (``off_label`` counts).
    """

    name: str
    family: str
    labels: tuple[str, ...]
    instruction: str
    train: tuple[TextExample, ...] = field(repr=False)
    val: tuple[TextExample, ...] = field(repr=False)
    test: tuple[TextExample, ...] = field(repr=False)
    provenance: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def label_counts(examples: Iterable[TextExample]) -> dict[str, int]:
    """Examples per label, most frequent first."""
    return dict(Counter(e.label for e in examples).most_common())


class Checksums:
    """The SHA256SUMS of one dataset folder; ``read`` verifies each file against it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.expected: dict[str, str] = {}
        sums = base / "SHA256SUMS"
        if sums.is_file():
            for line in sums.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    digest, name = line.split(None, 1)
                    self.expected[name.strip().lstrip("*").removeprefix("./")] = digest.lower()

    def read(self, path: Path, files: dict[str, str]) -> bytes:
        """The file's bytes, after checking its sha256; adds ``{relpath: sha256}`` to ``files``."""
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        rel = path.relative_to(self.base).as_posix()
        want = self.expected.get(rel)
        if want is not None and want != digest:
            raise DataUnavailableError(
                f"checksum mismatch for {path}: SHA256SUMS lists {want}, the file has {digest}; "
                "the copy is corrupt or a different version: copy it again from its source")
        files[rel] = digest
        return data

    def provenance(self, files: dict[str, str]) -> dict[str, Any]:
        """``files`` read and whether every one of them was listed (and matched) in SHA256SUMS."""
        return {"files": files, "sha256_verified": all(f in self.expected for f in files)}


def find_base(root: PathLike | None, folder: str, marker: str, expected: str) -> Path:
    """The dataset folder: ``root`` itself or ``root/folder``, whichever holds ``marker``."""
    from scenarios.mnist import shared_data_dir  # lazy: scenarios.mnist imports _common

    top = Path(root) if root is not None else shared_data_dir()
    for cand in (top, top / folder):
        if (cand / marker).is_dir():
            return cand
    raise DataUnavailableError(
        f"no {folder} data under {top} (looked for {top / marker} and {top / folder / marker}); "
        f"expected {expected}. Point scenario.data_dir=<dir> at a copy, or set CLBENCH_DATA_DIR")


def lookup(name: str, table: Mapping[str, Any], field_name: str) -> str:
    key = name.lower().replace("-", "")
    if key not in table:
        raise ConfigError(field_name, name, sorted(table))
    return key


def _n_val(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(fraction * n)))


def carve_validation(examples: Sequence[TextExample], fraction: float = 0.1,
                     seed: int = DATA_SEED) -> tuple[tuple[TextExample, ...], tuple[TextExample, ...]]:
    """Split ``examples`` into (train, val), stratified by label and deterministic.

    Per label, the distinct texts are ranked by ``sha256(seed, label, text)`` and the first
    ``round(fraction * n)`` (at least 1 and at most n-1 when n >= 2) go to validation, so the
    result depends neither on file order nor on Python's RNG. Every copy of a chosen text goes to
    validation: train and val never share a text. Both keep the input order.

    Args:
        examples: the training examples.
        fraction: share of each label's distinct texts moved to validation, in [0, 1).
        seed: the data seed (fixed by default, independent of the run seed).

    Returns:
        (train, val).
    """
    if not 0 <= fraction < 1:
        raise ConfigError("scenario.val_fraction", fraction, "a number in [0, 1)")
    by_label: dict[str, dict[str, None]] = {}
    for ex in examples:
        by_label.setdefault(ex.label, {})[ex.text] = None
    chosen: set[str] = set()
    for label, texts in by_label.items():
        ranked = sorted(texts, key=functools.partial(text_rank, seed, label))
        chosen.update(ranked[: _n_val(len(ranked), fraction)])
    train = tuple(e for e in examples if e.text not in chosen)
    return train, tuple(e for e in examples if e.text in chosen)


def text_rank(seed: int, label: str, text: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{label}\x00{text}".encode()).digest()


def off_label_counts(labels: Sequence[str], splits: Mapping[str, Sequence[TextExample]]) -> dict[str, int]:
    known = set(labels)
    counts = {s: sum(e.label not in known for e in ex) for s, ex in splits.items()}
    return {s: n for s, n in counts.items() if n}


def parse_records(sums: Checksums, path: Path, files: dict[str, str], text_key: str,
                  label_key: str) -> tuple[TextExample, ...]:
    rows = json.loads(sums.read(path, files))
    if not isinstance(rows, list) or not all(
            isinstance(r, dict) and isinstance(r.get(text_key), str)
            and isinstance(r.get(label_key), str) for r in rows):
        raise DataUnavailableError(
            f"{path}: expected a JSON array of {{{text_key!r}: str, {label_key!r}: str}} objects")
    return tuple(TextExample(r[text_key], r[label_key]) for r in rows)

"""Owns tiny streams, models and helpers for tests and for method authors (fast, CPU-only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clbench.config import RunConfig, TrackingConfig, TrainerConfig, build_run_config
from clbench.protocol import Scenario
from clbench.registry import SCENARIOS
from clbench.streams import Experience, Split, Stream


def tiny_stream(n_experiences: int = 3, classes_per_exp: int = 2, n_per_class: int = 24,
                dim: int = 16, scenario_type: str = "class_incremental", seed: int = 0) -> Stream:
    """A learnable synthetic stream: Gaussian blobs, one mean per class, (N, dim) float inputs."""
    g = torch.Generator().manual_seed(seed)
    n_classes = n_experiences * classes_per_exp
    means = torch.randn(n_classes, dim, generator=g) * 2.0

    def split(classes: tuple[int, ...], n: int) -> Split:
        y = torch.tensor(classes).repeat_interleave(n)
        return Split(means[y] + torch.randn(len(y), dim, generator=g), y)

    exps = []
    for i in range(n_experiences):
        classes = tuple(range(i * classes_per_exp, (i + 1) * classes_per_exp))
        task = i if scenario_type == "task_incremental" else 0
        exps.append(Experience(i, task, classes, split(classes, n_per_class),
                               split(classes, n_per_class // 4), split(classes, n_per_class // 2)))
    return Stream("tiny", "1", scenario_type, tuple(exps), n_classes, "synthetic test stream")


@dataclass(frozen=True)
class TinyConfig:
    n_experiences: int = 3
    scenario_type: str = "class_incremental"


class TinyScenario(Scenario):
    """Synthetic Gaussian-blob stream for tests (registered by :func:`register_tiny`)."""

    Config = TinyConfig

    def build(self) -> Stream:
        return tiny_stream(self.config.n_experiences, scenario_type=self.config.scenario_type)


def register_tiny() -> str:
    """Register :class:`TinyScenario` as ``tiny`` (idempotent); returns the name."""
    if "tiny" not in SCENARIOS.names():
        SCENARIOS.register("tiny")(TinyScenario)
    return "tiny"


def tiny_config(tmp: Path, method: str, **overrides: Any) -> RunConfig:
    """A fast RunConfig on the tiny stream writing under ``tmp`` (MLflow off unless asked)."""
    register_tiny()
    base = RunConfig(
        method=method, scenario="tiny", model="mlp", seed=0,
        trainer=TrainerConfig(epochs=2, batch_size=8, lr=0.05, progress=False),
        tracking=TrackingConfig(runs_dir=str(tmp / "runs"), mlflow=False),
        model_options={"hidden": 32, "layers": 1},
    )
    return build_run_config(overrides, base)


def params_equal(a: nn.Module | dict[str, Tensor], b: nn.Module | dict[str, Tensor]) -> bool:
    """Bitwise equality of two models' (or state dicts') tensors."""
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

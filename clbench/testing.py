"""Owns tiny streams, models and helpers for tests and for method authors (fast, CPU-only)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clbench.config import RunConfig, TrackingConfig, TrainerConfig, build_run_config
from clbench.protocol import Scenario
from clbench.records import (
    CostRecord,
    GeneralRecord,
    MlflowRecord,
    ModelRecord,
    RunRecord,
    ScenarioRecord,
    SeedRecord,
)
from clbench.registry import SCENARIOS
from clbench.streams import Experience, SourceData, Split, Stream


def tiny_stream(n_experiences: int = 3, classes_per_exp: int = 2, n_per_class: int = 24,
                dim: int = 16, scenario_type: str = "class_incremental", seed: int = 0,
                source: bool = False, image: bool = False) -> Stream:
    """A learnable synthetic stream: Gaussian blobs, one mean per class, (N, dim) float inputs.

    Args:
        source: also attach a :class:`SourceData` (blobs of every class, a foundation setting).
        image: shape inputs as (N, 1, s, s) images with s*s = dim (for the ViT).
    """
    g = torch.Generator().manual_seed(seed)
    n_classes = n_experiences * classes_per_exp
    means = torch.randn(n_classes, dim, generator=g) * 2.0

    side = int(dim**0.5)

    def split(classes: tuple[int, ...], n: int) -> Split:
        y = torch.tensor(classes).repeat_interleave(n)
        x = means[y] + torch.randn(len(y), dim, generator=g)
        return Split(x.reshape(-1, 1, side, side) if image else x, y)

    exps = []
    for i in range(n_experiences):
        classes = tuple(range(i * classes_per_exp, (i + 1) * classes_per_exp))
        task = i if scenario_type == "task_incremental" else 0
        exps.append(Experience(i, task, classes, split(classes, n_per_class),
                               split(classes, n_per_class // 4), split(classes, n_per_class // 2)))
    src = None
    if source:
        every = tuple(range(n_classes))
        src = SourceData("tiny_source", split(every, n_per_class), split(every, 4), split(every, 8))
    return Stream("tiny", "1", scenario_type, tuple(exps), n_classes, "synthetic test stream", source=src)


@dataclass(frozen=True)
class TinyConfig:
    n_experiences: int = 3  # experiences of the synthetic stream
    scenario_type: str = "class_incremental"  # the stream's declared type (class/domain/task_incremental)
    source: bool = False  # attach source data (foundation setting)
    image: bool = False  # (N, 1, 4, 4) inputs, e.g. for model=vit_tiny model.patch=2


class TinyScenario(Scenario):
    """Synthetic Gaussian-blob stream for tests (registered by :func:`register_tiny`)."""

    Config = TinyConfig
    VERSION = "1"  # as tiny_stream's

    def build(self) -> Stream:
        c = self.config
        return tiny_stream(c.n_experiences, scenario_type=c.scenario_type, source=c.source, image=c.image)


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
        model_options={} if overrides.get("model", "mlp") != "mlp" else {"hidden": 32, "layers": 1},
    )
    return build_run_config(overrides, base)


def tiny_vit_config(tmp: Path, method: str, **overrides: Any) -> RunConfig:
    """A fast foundation-setting RunConfig: tiny ViT on image blobs with source data.

    The foundation is pretrained (10 tiny epochs) into ``tmp/cache`` on first use.
    """
    values = {"scenario.source": True, "scenario.image": True, "model": "vit_tiny",
              "model.patch": 2, "model.dim": 16, "model.depth": 2, "model.heads": 2,
              "foundation.epochs": 10, "foundation.cache_dir": str(tmp / "cache")}
    return tiny_config(tmp, method, **{**values, **overrides})


def params_equal(a: nn.Module | dict[str, Tensor], b: nn.Module | dict[str, Tensor]) -> bool:
    """Bitwise equality of two models' (or state dicts') tensors."""
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def stub_record(method: str = "stub", seed: int = 0, *, scenario: str = "tiny",
                scenario_type: str = "class_incremental", scenario_hash: str = "0" * 64, num_classes: int = 0,
                metrics: Mapping[str, float] | None = None, cost: Mapping[str, Any] | None = None,
                config: Mapping[str, Any] | None = None, **fields: Any) -> RunRecord:
    """A complete :class:`RunRecord` with placeholder values, for testing what reads run records
    (tables, health checks, leaderboard entries) without training.

    Args:
        scenario: the registry name (``config.scenario``) and the stream's name.
        cost: :class:`CostRecord` fields (the rest are 0, ``peak_cuda_mb`` None).
        config: entries of the run config besides method, scenario and seed.
        fields: any other :class:`RunRecord` field (``R``, ``general``, ``env``, ``test_time``...).
    """
    R = fields.pop("R", [])
    zero: dict[str, Any] = {"wall_time_s": 0.0, "train_time_s": 0.0, "train_samples": 0,
                            "train_samples_per_s": 0.0, "optimizer_steps": 0, "peak_rss_mb": 0.0,
                            "peak_cuda_mb": None, "trainable_params": 0, "total_params": 0}
    record = RunRecord(
        status="finished", run_key="0" * 10,
        config={"method": method, "scenario": scenario, "seed": seed, **(config or {})},
        scenario=ScenarioRecord(name=scenario, version="1", type=scenario_type, content_hash=scenario_hash,
                                n_experiences=len(R), num_classes=num_classes, classes=[]),
        model=ModelRecord(name="mlp", family="mlp", init_hash="0" * 16, trainable_params=0, total_params=0),
        seeds=SeedRecord(seed=seed, experience_seeds=[]),
        R=R, R_pretrain=None, R_val=[], metrics=dict(metrics or {}), general=GeneralRecord(),
        foundation=None, per_experience=[], cost=CostRecord(**{**zero, **(cost or {})}), env={},
        mlflow=MlflowRecord(), run_dir="", started_at="", finished_at="")
    return replace(record, **fields)

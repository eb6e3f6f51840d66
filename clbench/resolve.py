"""Owns what a run is before it runs: the config resolved into plug-ins and validated options,
its run directory, seeding and the hash of a model's weights. Builds nothing heavy."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clbench.config import RunConfig, build_dataclass, to_plain
from clbench.protocol import Method, Scenario
from clbench.registry import METHODS, SCENARIOS


@dataclass(frozen=True)
class Resolved:
    """A validated run: the config plus the plug-ins' typed option objects."""

    cfg: RunConfig
    method_cls: type[Method]
    method_cfg: Any
    scenario: Scenario

    def config_dict(self) -> dict[str, Any]:
        d = self.cfg.to_dict()
        d["method_options"] = to_plain(self.method_cfg)
        d["scenario_options"] = to_plain(self.scenario.config)
        return d


def resolve(cfg: RunConfig) -> Resolved:
    """Look up plug-ins and validate their options (raises ConfigError; builds nothing)."""
    method_cls = METHODS.get(cfg.method)
    method_cfg = build_dataclass(method_cls.Config, cfg.method_options, "method")
    scenario_cls = SCENARIOS.get(cfg.scenario)
    scenario_cfg = build_dataclass(scenario_cls.Config, cfg.scenario_options, "scenario")
    return Resolved(cfg, method_cls, method_cfg, scenario_cls(scenario_cfg))


def run_dir_for(cfg: RunConfig) -> Path:
    return Path(cfg.tracking.runs_dir) / cfg.scenario / cfg.method / f"seed{cfg.seed}-{cfg.key()}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]

"""Owns the typed record of a tuning protocol run (``protocol.json``).

:func:`clbench.tuning.run_protocol` writes a :class:`ProtocolRecord`; ``clbench submit``
(:mod:`clbench.leaderboard.entry`) reads one back with :meth:`ProtocolRecord.from_json`, which
names the field of any value of the wrong type. Files written before ``trials_failed``,
``storage``, ``study``, per-trial ``slot``/``error``/``train_time_s`` and the evaluation's
``results``/``acc_mean``/``acc_std`` existed still load (those fields take their defaults).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clbench.errors import ClbenchError
from clbench.jsonrecords import as_json, decode, omitted_if_none

PROTOCOL_SCHEMA_VERSION = 1
PROTOCOL_KIND = "clbench-protocol"


@dataclass(frozen=True)
class ProtocolSpec:
    """The protocol's identity and budget (:meth:`clbench.study.Protocol.record`)."""

    name: str
    version: str | int
    n_trials: int
    sampler: str
    sampler_seed: int
    objective: str
    objective_split: str
    tuning_seeds: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class TrialRecord:
    """One tuning trial: its slot, hyperparameters, validation objective and run directory."""

    number: int
    params: dict[str, Any]
    value: float | None
    state: str
    run_dir: str | None = None
    slot: int | None = None
    error: str | None = None
    train_time_s: float | None = None


@dataclass(frozen=True)
class TuningRecord:
    """Phase 1: the tuning scenario and every trial started (failed ones included)."""

    scenario: str
    scenario_options: dict[str, Any]
    scenario_version: str | int | None
    scenario_hash: str | None
    trials: list[TrialRecord]
    trials_used: int
    trials_failed: int = 0
    storage: str | None = None
    study: str | None = None


@dataclass(frozen=True)
class EvaluationRecord:
    """Phase 2: H* evaluated once per seed on the evaluation scenario; ``results`` are the
    compact per-run records the study kept (R, metrics, cost...)."""

    scenario: str
    scenario_options: dict[str, Any]
    scenario_version: str | int | None
    scenario_hash: str | None
    seeds: list[int]
    run_dirs: list[str | None]
    results: list[dict[str, Any]] = field(default_factory=list)
    acc_mean: float | None = None
    acc_std: float | None = None


@dataclass(frozen=True)
class ProtocolMlflow:
    parent_run_id: str | None = None
    tracking_uri: str | None = None


@dataclass(frozen=True)
class ProtocolRecord:
    """A finished (or failed) protocol run, as written to ``protocol.json``."""

    status: str
    method: str
    track: str
    protocol: ProtocolSpec
    search_space: dict[str, Any]
    fixed: dict[str, Any]
    tuning: TuningRecord
    best_params: dict[str, Any]
    best_value: float | None
    evaluation: EvaluationRecord
    mlflow: ProtocolMlflow = field(default_factory=ProtocolMlflow)
    env: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    #: hyperparameters of H* at the smallest or largest value of their grid
    #: (:func:`clbench.search.grid_edges`): the optimum may lie outside the grid
    edge_params: list[str] | None = omitted_if_none()  # absent in files written before it existed

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": PROTOCOL_SCHEMA_VERSION, "kind": PROTOCOL_KIND, **as_json(self)}

    @classmethod
    def from_json(cls, data: Any, source: str = "protocol.json") -> ProtocolRecord:
        if not isinstance(data, Mapping) or data.get("kind") != PROTOCOL_KIND \
                or data.get("schema_version") != PROTOCOL_SCHEMA_VERSION:
            raise ClbenchError(f"{source} is not a clbench protocol record (kind/schema_version)")
        body = {k: v for k, v in data.items() if k not in ("schema_version", "kind")}
        return decode(cls, body, source)  # type: ignore[no-any-return]

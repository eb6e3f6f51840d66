"""Owns the typed leaderboard entry: dataclasses, (de)serialisation, canonical JSON, content hash
and the published JSON Schema (``docs/leaderboard-entry.schema.json``, written by
``python -m clbench.leaderboard > docs/leaderboard-entry.schema.json``).

An entry is ``leaderboards/<track>/<method>.json``: one method's score under a track's fixed
tuning protocol, written by ``clbench submit`` (:mod:`clbench.leaderboard.entry`). It is a
:class:`LeaderboardEntry`; ``to_json`` gives the file's dict (``schema_version`` and ``kind``
first), ``from_json`` reads one back and names the path of any missing, unknown or mistyped field.

Entry (``schema_version`` 2, ``kind`` ``clbench-leaderboard-entry``)::

    {"schema_version", "kind", "track", "method",
     "protocol": {"name", "version"},
     "hyperparameters": {param: value},                 # H*, chosen in phase 1 ({}: zero budget)
     "config": {dotted key: value},                     # protocol's fixed settings + H*
     "search_space": {param: {...}},
     "budget": {"n_trials", "trials_used", "sampler", "sampler_seed", "objective",
                "objective_split", "tuning_seeds", "trials_failed", "tuning_train_time_s"},
     "tuning": {"scenario", "version", "content_hash", "options", "best_value"} | null,
                                                        # null: zero-budget protocol (n_trials 0)
     "evaluation": {"scenario", "version", "content_hash", "options"},
     "seeds": [int],
     "runs": [{"seed", "R", "R_pretrain", "metrics", "general", "cost", "mechanism"}],  # one per seed
     "summary": {metric: {"mean", "std", "n", "ci95"}}, # over seeds; sample std, 95 % CI (t)
     "cost": {counter: {"mean", "std", "n", "ci95"}},   # train/wall time, samples, steps
     "env": {"git_commit", "packages", "hardware", "python"},   # a clean tree's commit
     "mlflow": {"parent_run_id", "tracking_uri"} | null, "created_at": ISO-8601,
     "health": {"git_commit", "declaration_sha256", "passed", "criteria": [...],
                "lower", "upper", "lower_acc", "upper_acc"},    # the track's health.json
     "chance_acc": ACC of uniform guessing over the labels the model chooses among,
     "content_hash": sha256 of the canonical JSON of everything else}

Schema 1 (the retired boards' entries) has population std, no ``ci95`` and no ``health``; it is
still read, and validated by its own rules.

Canonical JSON: sorted keys, ``(",", ":")`` separators, UTF-8, no NaN (non-finite numbers are
stored as ``null``). The hash covers the dict as read from the file; ``to_json(from_json(d))``
gives ``d`` back for every entry ``clbench submit`` writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clbench.errors import ClbenchError
from clbench.jsonrecords import as_json, dataclass_schema, decode, omitted_if_none

ENTRY_SCHEMA_VERSION = 2
#: versions ``from_json`` reads: 1 (population std, no CIs, no health figures) and 2
READ_VERSIONS = (1, 2)
ENTRY_KIND = "clbench-leaderboard-entry"


@dataclass(frozen=True)
class EntryProtocol:
    """The tuning protocol the entry was produced under: its name and version."""

    name: str
    version: str


@dataclass(frozen=True)
class EntryBudget:
    """What phase 1 spent: declared and used trials, sampler, objective and the split it used."""

    n_trials: int
    trials_used: int
    sampler: str
    sampler_seed: int
    objective: str
    objective_split: str
    tuning_seeds: list[int]
    trials_failed: int
    tuning_train_time_s: float


@dataclass(frozen=True)
class EntryScenario:
    """A phase's scenario: registry name, VERSION, content hash and options."""

    scenario: str
    version: str
    content_hash: str
    options: dict[str, Any]


@dataclass(frozen=True)
class EntryTuning(EntryScenario):
    """The tuning scenario (phase 1) and the best validation objective reached on it."""

    best_value: float | None


@dataclass(frozen=True)
class MeanStd:
    """Mean, std and count over seeds (mean and std null when no seed has a number); schema 2:
    sample std (ddof=1) and the 95 % confidence interval of the mean (Student's t), schema 1:
    population std and no interval."""

    mean: float | None
    std: float | None
    n: int
    ci95: list[float] | None = omitted_if_none()


@dataclass(frozen=True)
class HealthCriterion:
    """One criterion of the track's health check: its rule, the measured figure, the threshold."""

    name: str
    rule: str
    value: float | None
    threshold: float | None
    passed: bool


@dataclass(frozen=True)
class EntryHealth:
    """The track's health check as committed when the entry was made (``health.json``)."""

    git_commit: str | None
    declaration_sha256: str
    passed: bool
    criteria: list[HealthCriterion]
    lower: str  # the reference learners (registry names) and their mean ACC
    upper: str
    lower_acc: float | None
    upper_acc: float | None


@dataclass(frozen=True)
class EntryGeneral:
    """General-capability scores of one run: before the stream and after each experience."""

    before: dict[str, float | None]
    after: list[dict[str, float | None]]


@dataclass(frozen=True)
class EntryRunCost:
    """What one evaluation run cost (a subset of the run record's cost)."""

    train_time_s: float
    wall_time_s: float
    train_samples: int
    optimizer_steps: int
    train_samples_per_s: float
    peak_rss_mb: float
    peak_cuda_mb: float | None
    trainable_params: int
    total_params: int


@dataclass(frozen=True)
class EntryRun:
    """One evaluation seed: its accuracy matrix R, pre-training row, metrics, general scores, cost."""

    seed: int
    R: list[list[float]]
    R_pretrain: list[float] | None
    metrics: dict[str, float | None]
    general: EntryGeneral | None
    cost: EntryRunCost
    #: schema 2: each figure the method declares (``Method.mechanism_figures``) per experience
    mechanism: dict[str, list[float | None]] | None = omitted_if_none()


@dataclass(frozen=True)
class CostSummary:
    """Cost counters over seeds: training and wall time, samples, optimizer steps."""

    train_time_s: MeanStd
    wall_time_s: MeanStd
    train_samples: MeanStd
    optimizer_steps: MeanStd


@dataclass(frozen=True)
class EntryEnv:
    """Where the entry was produced: git commit, package versions, hardware, Python."""

    git_commit: str | None
    packages: dict[str, str | None]
    hardware: dict[str, Any]
    python: str | None


@dataclass(frozen=True)
class EntryMlflow:
    """The protocol's MLflow parent run, where it was tracked."""

    parent_run_id: str | None
    tracking_uri: str | None


@dataclass(frozen=True)
class LeaderboardEntry:
    """One method's score under a track's tuning protocol (``leaderboards/<track>/<method>.json``)."""

    track: str
    method: str
    protocol: EntryProtocol
    hyperparameters: dict[str, Any]
    config: dict[str, Any]
    search_space: dict[str, Any]
    budget: EntryBudget
    tuning: EntryTuning | None  # null: a zero-budget protocol (no tuning phase)
    evaluation: EntryScenario
    seeds: list[int]
    runs: list[EntryRun]
    summary: dict[str, MeanStd]
    cost: CostSummary
    env: EntryEnv
    mlflow: EntryMlflow | None
    created_at: str
    content_hash: str
    health: EntryHealth | None = omitted_if_none()  # schema 2
    chance_acc: float | None = omitted_if_none()  # schema 2: ACC of uniform guessing on the stream
    schema_version: int = ENTRY_SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """The entry file's dict: ``schema_version`` and ``kind`` first."""
        body = as_json(self)
        return {"schema_version": body.pop("schema_version"), "kind": ENTRY_KIND, **body}

    @classmethod
    def from_json(cls, data: Any, where: str = "entry") -> LeaderboardEntry:
        """Read an entry dict of a version in :data:`READ_VERSIONS`; anything else raises one
        ClbenchError naming the path."""
        if not isinstance(data, Mapping):
            raise ClbenchError(f"{where} must be a JSON object, got {type(data).__name__}")
        kind, version = data.get("kind"), data.get("schema_version")
        if kind != ENTRY_KIND or isinstance(version, bool) or version not in READ_VERSIONS:
            raise ClbenchError(f"{where}: kind/schema_version {kind!r}/{version!r}; expected "
                               f"{ENTRY_KIND!r}/one of {list(READ_VERSIONS)}")
        body = {k: v for k, v in data.items() if k != "kind"}
        return decode(cls, body, where)  # type: ignore[no-any-return]

    def with_hash(self) -> LeaderboardEntry:
        """This entry with ``content_hash`` set to the hash of the rest."""
        return dataclasses.replace(self, content_hash=content_hash(self.to_json()))


#: ``runs[].cost`` counters and the counters ``cost`` summarises over seeds
COST_KEYS = tuple(f.name for f in dataclasses.fields(EntryRunCost))
SUMMARY_COST = tuple(f.name for f in dataclasses.fields(CostSummary))


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def content_hash(entry: Mapping[str, Any]) -> str:
    """sha256 (hex) over the canonical JSON of ``entry`` without its ``content_hash`` field."""
    return hashlib.sha256(canonical_json({k: v for k, v in entry.items() if k != "content_hash"})).hexdigest()


def is_num(v: Any) -> bool:
    """A finite int or float (not a bool): what an entry may hold where a number is due."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of an entry file, derived from :class:`LeaderboardEntry`."""
    schema = dataclass_schema(LeaderboardEntry, "clbench leaderboard entry", ENTRY_SCHEMA_VERSION)
    props = dict(schema["properties"])
    props.pop("schema_version")
    schema["properties"] = {"schema_version": {"enum": list(READ_VERSIONS)}, "kind": {"const": ENTRY_KIND},
                            **props}
    schema["required"] = ["schema_version", "kind", *[r for r in schema["required"][1:] if r != "schema_version"]]
    return schema


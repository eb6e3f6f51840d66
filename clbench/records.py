"""Owns the typed record of a run (``results.json``): dataclasses, (de)serialisation, JSON Schema.

A finished run is a :class:`RunRecord`. ``to_json`` gives the dict written to ``results.json``
(``schema_version`` first); ``from_json`` reads one back, migrating older files and naming the
field of any value of the wrong type. :func:`json_schema` derives the published JSON Schema
(``docs/results.schema.json``) from the same dataclasses, so the schema cannot drift from the
code that writes the files.

Schema history (``RESULTS_SCHEMA_VERSION``):

- 1: the current layout. Files written before ``mechanism`` (per-experience mechanism figures)
  and ``test_time`` existed load with ``mechanism = {}`` and ``test_time = None``.

Fields that do not apply to every run (training counters on a test-time run, adaptation
counters on a training run) default to :func:`omitted_if_none`: ``None`` and left out of the JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clbench.errors import ClbenchError
from clbench.jsonrecords import as_json, dataclass_schema, decode, omitted_if_none

__all__ = ["RESULTS_SCHEMA_VERSION", "CostRecord", "ExperienceRecord", "GeneralRecord", "MlflowRecord",
           "ModelRecord", "RunProgress", "RunRecord", "ScenarioRecord", "SeedRecord", "TestTimeRecord",
           "as_json", "decode", "json_schema", "omitted_if_none"]

RESULTS_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ScenarioRecord:
    """The stream a run saw: registry name, scenario VERSION, type, content hash and classes."""

    name: str
    version: str
    type: str
    content_hash: str
    n_experiences: int
    num_classes: int
    classes: list[list[int]]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelRecord:
    """The model: registry name, family, hash of the initial weights, parameter counts."""

    name: str
    family: str
    init_hash: str
    trainable_params: int
    total_params: int


@dataclass(frozen=True)
class SeedRecord:
    """The run seed and the seed derived from it for each experience."""

    seed: int
    experience_seeds: list[int]


@dataclass(frozen=True)
class ExperienceRecord:
    """One experience: training counters (training loop) or adaptation counters (test-time
    loop), and the method's own report (``method``)."""

    optimizer_steps: int = 0
    train_samples: int = 0
    train_time_s: float = 0.0
    forward_samples: int | None = omitted_if_none()  # samples forwarded (after transform_batch: memory samples)
    mean_loss: float | None = omitted_if_none()
    trainable_params: int | None = omitted_if_none()
    test_perplexity: float | None = omitted_if_none()  # language-modelling streams
    domain: str | None = omitted_if_none()  # test-time loop: the domain's name
    error: float | None = omitted_if_none()
    adapt_batches: int | None = omitted_if_none()
    adapt_samples: int | None = omitted_if_none()
    adapt_time_s: float | None = omitted_if_none()
    peak_cuda_mb: float | None = omitted_if_none()  # CUDA: the experience's peak allocated memory
    method: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GeneralRecord:
    """General-capability scores before the stream and after each experience."""

    before: dict[str, float] | None = None
    after: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class CostRecord:
    """What the run cost (seconds, samples, steps, memory, parameters)."""

    wall_time_s: float
    train_time_s: float
    train_samples: int
    train_samples_per_s: float
    optimizer_steps: int
    peak_rss_mb: float
    peak_cuda_mb: float | None
    trainable_params: int
    total_params: int
    general_eval_time_s: float = 0.0
    adapt_batches: int | None = omitted_if_none()  # test-time runs
    adapt_samples: int | None = omitted_if_none()
    adapt_time_s: float | None = omitted_if_none()
    adapt_samples_per_s: float | None = omitted_if_none()


@dataclass(frozen=True)
class TestTimeRecord:
    """Test-time runs: the domains in order, the batch size and the online error per domain."""

    __test__ = False  # not a pytest class

    domains: list[str]
    batch_size: int
    errors: list[float]


@dataclass(frozen=True)
class MlflowRecord:
    run_id: str | None = None
    tracking_uri: str | None = None


@dataclass(frozen=True)
class RunRecord:
    """A finished run, as written to ``results.json``.

    ``R[i][j]``: accuracy on experience j's test split after training through experience i;
    ``R_pretrain``: before any training; ``R_val``: the same on validation splits (empty when
    ``eval.validation`` is off); ``metrics``: the summary metrics (:mod:`clbench.metrics`, plus
    ``general_retention`` and test-time metrics); ``mechanism``: each figure the method declares
    (``Method.mechanism_figures``) per experience.
    """

    status: str
    run_key: str
    config: dict[str, Any]
    scenario: ScenarioRecord
    model: ModelRecord
    seeds: SeedRecord
    R: list[list[float]]
    R_pretrain: list[float] | None
    R_val: list[list[float]]
    metrics: dict[str, float]
    general: GeneralRecord
    foundation: dict[str, Any] | None
    per_experience: list[ExperienceRecord]
    cost: CostRecord
    env: dict[str, Any]
    mlflow: MlflowRecord
    run_dir: str
    started_at: str
    finished_at: str
    mechanism: dict[str, list[float | None]] = field(default_factory=dict)
    test_time: TestTimeRecord | None = omitted_if_none()

    def to_json(self) -> dict[str, Any]:
        """The ``results.json`` dict: ``schema_version`` first, ``None`` optionals left out."""
        return {"schema_version": RESULTS_SCHEMA_VERSION, **as_json(self)}

    # ``config`` is the plain RunConfig dict the run resolved (its plug-in options included); the
    # parts that tables read are named here, so no reader indexes it by string
    @property
    def method(self) -> str:
        """The registered method the run used."""
        return str(self.config["method"])

    @property
    def scenario_name(self) -> str:
        """The registered scenario the run used (``scenario.name`` is the stream's own name)."""
        return str(self.config["scenario"])

    @property
    def trainer_settings(self) -> dict[str, Any]:
        """The run's ``trainer`` section (learning rate, epochs, batch size...)."""
        return dict(self.config.get("trainer") or {})

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "results.json") -> RunRecord:
        """Read a ``results.json`` dict (any supported schema version)."""
        if not isinstance(data, Mapping):
            raise ClbenchError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > RESULTS_SCHEMA_VERSION or version < 1:
            raise ClbenchError(f"{source}: schema_version {version!r} is not one this clbench reads "
                               f"(1..{RESULTS_SCHEMA_VERSION})")
        body = {k: v for k, v in data.items() if k != "schema_version"}
        return decode(cls, body, source)  # type: ignore[no-any-return]


@dataclass
class RunProgress:
    """A run in progress (the runner's state, saved in every checkpoint as a plain dict).

    ``done`` experiences are finished; ``R``/``R_val`` have one row per finished experience (a
    test-time run keeps one growing row); ``b`` is the pre-training row (None until taken).
    """

    done: int = 0
    R: list[list[float]] = field(default_factory=list)
    R_val: list[list[float]] = field(default_factory=list)
    b: list[float] | None = None
    per_exp: list[ExperienceRecord] = field(default_factory=list)
    general_before: dict[str, float] | None = None
    general: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    general_time_s: float = 0.0
    mlflow_run_id: str | None = None
    started_at: str = ""

    def to_checkpoint(self) -> dict[str, Any]:
        """Plain types only (checkpoints load with ``torch.load(weights_only=True)``)."""
        return {f.name: as_json(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_checkpoint(cls, data: Mapping[str, Any]) -> RunProgress:
        return decode(cls, data, "checkpoint progress")  # type: ignore[no-any-return]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``results.json``, derived from :class:`RunRecord`."""
    return dataclass_schema(RunRecord, "clbench results.json", RESULTS_SCHEMA_VERSION)


if __name__ == "__main__":  # python -m clbench.records > docs/results.schema.json
    import json

    print(json.dumps(json_schema(), indent=2))

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
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union, cast, get_args, get_origin, get_type_hints

from clbench.errors import ClbenchError

RESULTS_SCHEMA_VERSION = 1


def omitted_if_none() -> Any:
    """Default of a field that does not apply to every run: None, and left out of the JSON."""
    return field(default=None, metadata={"omit_if_none": True})


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
        return {"schema_version": RESULTS_SCHEMA_VERSION, **_to_json(self)}

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
        return _from_json(cls, body, source)  # type: ignore[no-any-return]


# ---- generic (de)serialisation of the record dataclasses -------------------------------------

def decode(tp: Any, value: Any, path: str) -> Any:
    """``value`` (JSON) read as record type ``tp``; a value of the wrong type or an unknown field
    raises :class:`ClbenchError` naming its path (for other record modules)."""
    return _from_json(tp, value, path)


def as_json(part: Any) -> Any:
    """The JSON value of any part of a record (``record.cost``, ``record.general``...): exactly
    what ``to_json`` writes for it (``None`` optionals left out)."""
    return _to_json(part)


def _to_json(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if v is None and _optional(f):
                continue
            out[f.name] = _to_json(v)
        return out
    if isinstance(obj, Mapping):
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_json(v) for v in obj]
    return obj


def _optional(f: dataclasses.Field[Any]) -> bool:
    """A field declared with :func:`omitted_if_none` (left out of the JSON when None)."""
    return bool(f.metadata.get("omit_if_none"))


def _from_json(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _from_json(a, value, path)
            except ClbenchError as exc:
                errors.append(str(exc))
        raise ClbenchError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ClbenchError(f"{path}: expected an object, got {type(value).__name__}")
        hints = get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ClbenchError(f"{path}: unknown field(s) {', '.join(unknown)} (valid: {', '.join(sorted(names))})")
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _from_json(hints[f.name], value[f.name], f"{path}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ClbenchError(f"{path}: missing field {f.name!r}")
        return cast(Any, tp)(**kwargs)
    if origin is list:
        if not isinstance(value, list):
            raise ClbenchError(f"{path}: expected a list, got {type(value).__name__}")
        (item,) = get_args(tp)
        return [_from_json(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ClbenchError(f"{path}: expected an object, got {type(value).__name__}")
        _, item = get_args(tp)
        return {str(k): _from_json(item, v, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ClbenchError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ClbenchError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ClbenchError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{path}: unsupported record type {tp!r}")  # a bug in this module


# ---- JSON Schema -------------------------------------------------------------------------------

def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``results.json``, derived from :class:`RunRecord`."""
    defs: dict[str, Any] = {}
    root = _schema(RunRecord, defs)
    body = defs.pop("RunRecord")
    body["properties"] = {"schema_version": {"const": RESULTS_SCHEMA_VERSION}, **body["properties"]}
    body["required"] = ["schema_version", *body["required"]]
    assert root == {"$ref": "#/$defs/RunRecord"}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **body, "$defs": dict(sorted(defs.items()))}


def _schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = get_origin(tp)
    if tp is Any:
        return {}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_schema(a, defs) for a in get_args(tp)]}
    if tp is type(None):
        return {"type": "null"}
    if dataclasses.is_dataclass(tp):
        name = cast(type, tp).__name__
        if name not in defs:
            defs[name] = {}  # placeholder against recursion
            hints = get_type_hints(tp)
            fields = dataclasses.fields(tp)
            defs[name] = {
                "type": "object", "description": (tp.__doc__ or "").strip().splitlines()[0],
                "properties": {f.name: _schema(hints[f.name], defs) for f in fields},
                "required": [f.name for f in fields
                             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING],
                "additionalProperties": False}
        return {"$ref": f"#/$defs/{name}"}
    if origin is list:
        return {"type": "array", "items": _schema(get_args(tp)[0], defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema(get_args(tp)[1], defs)}
    if tp is float:  # NaN is written as the bare token NaN (Python's json), read back as a float
        return {"type": "number"}
    return {int: {"type": "integer"}, str: {"type": "string"}}[tp]


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
        return {f.name: _to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_checkpoint(cls, data: Mapping[str, Any]) -> RunProgress:
        return _from_json(cls, data, "checkpoint progress")  # type: ignore[no-any-return]


if __name__ == "__main__":  # python -m clbench.records > docs/results.schema.json
    import json

    print(json.dumps(json_schema(), indent=2))

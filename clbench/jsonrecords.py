"""Owns the generic JSON form of frozen record dataclasses: (de)serialisation that names the
path of any bad value, and the JSON Schema derived from the same dataclasses. The records
themselves live in :mod:`clbench.records` (a run) and :mod:`clbench.protocol_records`."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import field
from typing import Any, Union, cast, get_args, get_origin, get_type_hints

from clbench.errors import ClbenchError


def omitted_if_none() -> Any:
    """Default of a field that does not apply to every record: None, and left out of the JSON."""
    return field(default=None, metadata={"omit_if_none": True})


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
    if tp is bool:
        if not isinstance(value, bool):
            raise ClbenchError(f"{path}: expected true or false, got {value!r}")
        return value
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


def dataclass_schema(cls: type, title: str, version: int) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the JSON form of record dataclass ``cls``, with its
    ``schema_version`` first."""
    defs: dict[str, Any] = {}
    _schema(cls, defs)
    body = defs.pop(cls.__name__)
    body["properties"] = {"schema_version": {"const": version}, **body["properties"]}
    body["required"] = ["schema_version", *body["required"]]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title,
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
    return {int: {"type": "integer"}, str: {"type": "string"}, bool: {"type": "boolean"}}[tp]

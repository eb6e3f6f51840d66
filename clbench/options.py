"""Owns turning untyped option values (YAML, ``key=value`` overrides, declared tracks) into
typed, frozen option dataclasses, and back into plain values.

Every check raises one :class:`~clbench.errors.ConfigError` naming the field, the value and what
is allowed; :mod:`clbench.config` (the run configuration) and every plug-in's ``Config`` are built
through :func:`build_dataclass`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import yaml

from clbench.errors import ConfigError


def to_plain(obj: Any) -> Any:
    """Recursively convert dataclasses/mappings/tuples to JSON-friendly Python values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    return obj


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values go through ``yaml.safe_load`` (``0.1`` -> float)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError("override", item, "key=value, e.g. trainer.lr=0.1")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = value
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> dotted keys (``{"trainer": {"lr": 1}}`` -> ``{"trainer.lr": 1}``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def replace_checked(obj: Any, changes: Mapping[str, Any], prefix: str) -> Any:
    """``dataclasses.replace`` with unknown-field and type checks on every change."""
    return build_dataclass(type(obj), {**to_shallow(obj), **changes}, prefix)


def to_shallow(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def build_dataclass(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``, checking names and types.

    Raises:
        ConfigError: unknown field (lists the valid ones) or a value of the wrong type/choice.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name not in fields:
            raise ConfigError(f"{prefix}.{name}", value, sorted(fields) or "(no options)")
        kwargs[name] = coerce(f"{prefix}.{name}", value, hints[name])
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(prefix, dict(values), str(exc)) from exc


def coerce(name: str, value: Any, tp: Any) -> Any:
    """Check/convert ``value`` to type ``tp`` (int, float, bool, str, Literal, Optional, tuple)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(name, value, args)
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(name, value, arg)
            except ConfigError as exc:
                errors.append(exc.allowed)
        raise ConfigError(name, value, " or ".join(errors))
    if origin in (tuple, Sequence) or tp is tuple:
        if isinstance(value, str | int | float):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(name, value, "a list")
        inner = args[0] if args else Any
        return tuple(coerce(name, v, inner) for v in value)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(name, value, "a mapping")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-6" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(name, value, "a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(name, value, "a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            return str(value)
        return value
    return value


def positive(obj: Any, prefix: str, names: Sequence[str]) -> None:
    for n in names:
        v = getattr(obj, n)
        if not math.isfinite(v) or v <= 0:
            raise ConfigError(f"{prefix}.{n}", v, "a finite value > 0")


def non_negative(obj: Any, prefix: str, names: Sequence[str]) -> None:
    for n in names:
        v = getattr(obj, n)
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"{prefix}.{n}", v, "a finite value >= 0")


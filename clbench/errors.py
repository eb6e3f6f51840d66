"""Owns clbench's user-facing error types: one clear message naming field, value and choices."""

from __future__ import annotations

from collections.abc import Iterable


class ClbenchError(Exception):
    """Base class for errors that the CLI reports as one line and a non-zero exit."""


class ConfigError(ClbenchError, ValueError):
    """A configuration value is invalid.

    Args:
        field: dotted name of the offending field (``trainer.lr``, ``method``).
        value: the value given.
        allowed: the valid choices, or a short description of what is allowed.
    """

    def __init__(self, field: str, value: object, allowed: Iterable[object] | str) -> None:
        self.field, self.value = field, value
        if isinstance(allowed, str):
            self.allowed = allowed
        else:
            self.allowed = ", ".join(str(a) for a in allowed) or "(none)"
        super().__init__(f"invalid {field}={value!r}; allowed: {self.allowed}")


class IncompatibleError(ClbenchError):
    """A method cannot run on a scenario or model (declared capabilities do not match)."""


class DataUnavailableError(ClbenchError):
    """Data or model assets are missing and cannot be fetched (offline, no local copy)."""


class NonFiniteLossError(ClbenchError):
    """Training produced a NaN/inf loss; the run stops and keeps its last good checkpoint."""

    def __init__(self, experience: int, step: int, value: float) -> None:
        self.experience, self.step, self.value = experience, step, value
        super().__init__(
            f"non-finite loss {value} at experience {experience}, by batch {step}; "
            "the run is marked FAILED and its last good checkpoint is kept"
        )

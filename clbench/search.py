"""Owns search spaces: what a method's hyperparameters may be under the tuning protocol.

A method declares ``search_space`` next to its ``Config``: a mapping from a dotted override key
(``trainer.lr``, ``method.ewc_lambda``) to a :class:`Grid` of values. As in the reference protocol
(random search over fixed discrete grids), the protocol draws configurations from the product of
the grids without replacement, with a seeded generator, up to the budget.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Grid:
    """A discrete set of values for one hyperparameter.

    ``closed_min``: the smallest value is the parameter's own limit (a strength of 0, which
    switches the mechanism off), so a winner there is not on an open edge: no smaller value
    exists to try. It is reported as such (``(min, closed)``), not as a budget failure.

    ``closed_max``: the largest value is a limit of the mechanism (for example a sample size that
    already takes the whole memory, so that any larger value is the same setting); the method's
    ``search_space`` comment says why. A winner there is no open edge either.

    ``inert_when``: ``(key, value)`` pairs of another dimension of the same space at which this
    parameter has no effect (a distillation temperature when the distillation weight is 0). A
    configuration that sets any of them leaves this parameter's value arbitrary, so it is not
    reported as an edge winner however it was drawn."""

    values: tuple[Any, ...]
    closed_min: bool = False
    closed_max: bool = False
    inert_when: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("a search grid needs at least one value")
        if self.closed_min and min(self.values) != 0:
            raise ValueError(f"a closed_min grid starts at its limit 0, got {min(self.values)}")

    def record(self) -> dict[str, Any]:
        closed = {(True, False): "min", (False, True): "max", (True, True): "both"}.get((self.closed_min, self.closed_max))
        return {"type": "grid", "values": list(self.values), **({"closed": closed} if closed else {}),
                **({"inert_when": dict(self.inert_when)} if self.inert_when else {})}


def grid(*values: Any, closed_min: bool = False, closed_max: bool = False,
         inert_when: Mapping[str, Any] | None = None) -> Grid:
    return Grid(tuple(values), closed_min, closed_max, tuple(sorted((inert_when or {}).items())))


# The learning-rate grid every method shares (AdamW on every track), in half-decade steps. Widened
# from 1e-4..3e-3 after 5 of 11 winners of the v1 vision board sat on that grid's edges, then from
# 3e-5..1e-2 after 3 of 10 vision_cil winners sat on those edges (one at the bottom, two at the
# top), to 1e-1 after a vision_dil winner sat on 3e-2, and to 3e-1 after one sat on 1e-1 (parameter-
# efficient modules of a method on vision_dil); a value chosen on an edge is still flagged on the boards
# (grid_edges).
LR = grid(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
BASE_SPACE: dict[str, Grid] = {"trainer.lr": LR}


def draw(space: Mapping[str, Grid], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` distinct configurations (all of them if the grid is smaller), in a seeded order."""
    keys = sorted(space)
    combos = list(itertools.product(*(space[k].values for k in keys)))
    random.Random(seed).shuffle(combos)
    return [dict(zip(keys, c, strict=True)) for c in combos[:n]]


def widen(space: Mapping[str, Grid], wider: Mapping[str, Sequence[Any]], where: str) -> dict[str, Grid]:
    """``space`` with the grids named in ``wider`` replaced by the given values: a track's
    ``search`` (clbench.tracks), which widens a method's grids on that track only, after a winner
    there sat on an open edge. Only widening: the new values must include every registered one
    (so a track can never narrow a method's search); the closed ends and ``inert_when`` of the
    registered grid carry over where that end is unchanged. ``where`` names the declaration in
    errors (``<track.yaml>: search.<method>``)."""
    from clbench.errors import ConfigError

    out = dict(space)
    for key, values in wider.items():
        if key not in space:
            raise ConfigError(f"{where}.{key}", key, sorted(space))
        reg, new = space[key], tuple(values)
        missing = [v for v in reg.values if v not in new]
        if missing or len(set(new)) != len(new):
            raise ConfigError(f"{where}.{key}", list(new),
                              f"distinct values including every registered one {list(reg.values)} "
                              f"(a track only widens a grid){f'; missing {missing}' if missing else ''}")
        closed_min = reg.closed_min and min(new) == min(reg.values)
        closed_max = reg.closed_max and max(new) == max(reg.values)
        out[key] = Grid(new, closed_min, closed_max, reg.inert_when)
    return out


def from_record(rec: Mapping[str, Any]) -> Grid:
    """The :class:`Grid` a :meth:`Grid.record` describes."""
    closed = rec.get("closed")
    return Grid(tuple(rec.get("values") or ()), closed in ("min", "both"), closed in ("max", "both"),
                tuple(sorted((rec.get("inert_when") or {}).items())))


def space_record(space: Mapping[str, Grid]) -> dict[str, Any]:
    return {k: space[k].record() for k in sorted(space)}


def size(space: Mapping[str, Grid]) -> int:
    out = 1
    for g in space.values():
        out *= len(g.values)
    return out


def with_base(extra: Mapping[str, Grid] | None = None, base: Sequence[str] = ("trainer.lr",)) -> dict[str, Grid]:
    """The shared grids (``base``) plus a method's own."""
    return {**{k: BASE_SPACE[k] for k in base}, **(extra or {})}


def grid_edges(chosen: Mapping[str, Any], space: Mapping[str, Any]) -> list[str]:
    """The chosen values that are the smallest or largest of a numeric grid of three or more
    values (the optimum may lie outside the grid), as ``key=value (min|max)``; the minimum of a
    grid closed there (:class:`Grid`), and the maximum of one closed there, are no open edge; nor is
    a parameter that ``chosen`` makes inert (``inert_when``). ``space`` is a search-space record
    (:func:`space_record`: ``{key: {"values": [...]}}``)."""
    out = []
    for key, value in sorted(chosen.items()):
        rec = space.get(key) or {}
        if any(k in chosen and chosen[k] == v for k, v in (rec.get("inert_when") or {}).items()):
            continue
        values = list(rec.get("values") or [])
        nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(nums) < 3 or len(nums) != len(values) or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        closed = rec.get("closed")
        if value == min(nums) and closed in ("min", "both") or value == max(nums) and closed in ("max", "both"):
            continue
        if value in (min(nums), max(nums)):
            out.append(f"{key}={value} ({'min' if value == min(nums) else 'max'})")
    return out

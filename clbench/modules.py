"""Owns generic model introspection: transformer blocks, linear layers by role, norm layers.

Methods that act on "every linear layer", "the attention projections of each block" or "the
norms of each block" use these helpers so that one method file works on the vision foundation,
on Hugging Face decoders (Llama q/k/v/o, gate/up/down) and on encoders (BERT query/key/value,
attention.output.dense, intermediate.dense, output.dense). Nothing here knows any method.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from torch import nn

NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d,
                                           nn.RMSNorm)

# role -> regex on the module path *relative to its block*; first match wins
ROLE_PATTERNS: dict[str, tuple[str, ...]] = {
    "q": (r"(^|\.)q_proj$", r"(^|\.)query$", r"(^|\.)q$"),
    "k": (r"(^|\.)k_proj$", r"(^|\.)key$", r"(^|\.)k$"),
    "v": (r"(^|\.)v_proj$", r"(^|\.)value$", r"(^|\.)v$"),
    "o": (r"(^|\.)o_proj$", r"(^|\.)out_proj$", r"attention\.output\.dense$", r"(^|\.)o$"),
    "gate": (r"(^|\.)gate_proj$", r"(^|\.)w1$"),
    "up": (r"(^|\.)up_proj$", r"intermediate\.dense$", r"(^|\.)fc1$", r"(^|\.)w3$"),
    "down": (r"(^|\.)down_proj$", r"^output\.dense$", r"(^|\.)fc2$", r"(^|\.)w2$"),
}
ATTENTION_ROLES = ("q", "k", "v", "o")
ROLES = tuple(ROLE_PATTERNS)
FFN_ROLES = ("gate", "up", "down")


def is_norm(module: nn.Module) -> bool:
    """LayerNorm/RMSNorm/BatchNorm/GroupNorm, or any class whose name ends in 'Norm'."""
    return isinstance(module, NORM_TYPES) or type(module).__name__.endswith("Norm")


def linear_layers(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """Every ``nn.Linear`` with its qualified name."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            yield name, m


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated blocks: the longest ``nn.ModuleList`` whose items contain linear layers.

    Returns (qualified name, block) pairs; empty when the model has no such list.
    """
    best: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > len(best):
            items = list(m)
            if all(any(isinstance(c, nn.Linear) for c in it.modules()) for it in items):
                best = [(f"{name}.{i}" if name else str(i), it) for i, it in enumerate(items)]
    return best


def role_patterns(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """The role patterns of ``model``: :data:`ROLE_PATTERNS`, with the model class's declared
    ``module_roles`` (role -> regexes on the path inside a block) taking precedence."""
    declared = getattr(type(model), "module_roles", None) or {}
    return {**ROLE_PATTERNS, **{r: tuple(p) for r, p in declared.items()}}


def module_roles_problem(declared: object) -> str | None:
    """Why a model class's ``module_roles`` declaration is unusable (None when it is fine)."""
    if not isinstance(declared, dict):
        return f"module_roles must be a dict of role -> regexes, got {type(declared).__name__}"
    for role, patterns in declared.items():
        if role not in ROLE_PATTERNS:
            return f"module_roles names role {role!r}; valid roles: {', '.join(ROLES)}"
        if not isinstance(patterns, tuple) or not patterns or not all(isinstance(p, str) for p in patterns):
            return f"module_roles[{role!r}] must be a non-empty tuple of regex strings, got {patterns!r}"
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                return f"module_roles[{role!r}] has an invalid regex {p!r}: {exc}"
    return None


def block_roles(block: nn.Module, patterns: dict[str, tuple[str, ...]] | None = None,
                ) -> dict[str, tuple[str, nn.Linear]]:
    """Map roles (q, k, v, o, gate, up, down) to the block's linear layers by name pattern
    (``patterns``: :func:`role_patterns` of the model; default :data:`ROLE_PATTERNS`)."""
    out: dict[str, tuple[str, nn.Linear]] = {}
    for name, m in linear_layers(block):
        for role, patterns_ in (patterns or ROLE_PATTERNS).items():
            if role not in out and any(re.search(p, name) for p in patterns_):
                out[role] = (name, m)
                break
    return out


def block_norms(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """Norm layers inside a block (found by type, not by name)."""
    return [(n, m) for n, m in block.named_modules() if n and is_norm(m)]

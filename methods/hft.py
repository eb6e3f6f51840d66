"""Half Fine-Tuning: freeze a fresh random half of every transformer block's matrices per experience."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from clbench.modules import (
    ATTENTION_ROLES,
    FFN_ROLES,
    block_norms,
    block_roles,
    linear_layers,
    role_patterns,
    transformer_blocks,
)
from clbench.protocol import Method
from clbench.registry import register_method
from clbench.streams import Experience

Named = list[tuple[str, nn.Module]]
GRANULARITIES = ("category", "layer", "model")
CATEGORIES = ("attention", "ffn", "other", "norm")
WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass(frozen=True)
class HFTConfig:
    """Options of :class:`HFT`.

    Attributes:
        granularity: ``category`` (the method: half of each kind of module in every block),
            ``layer`` (a random half of whole blocks) or ``model`` (a random half of all block
            modules, pooled) -- the paper's ablations.
        seed: base of the per-experience draw ``derive(seed, experience index)``. ``None`` = the
            global torch seed at experience start (the runner sets it from the run seed and the
            experience index), so every run seed draws its own masks and a resumed run redraws
            the same ones.
    """

    granularity: Literal["category", "layer", "model"] = "category"
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")


def draw_seed(base: int, index: int) -> int:
    """A 63-bit seed from (base, experience index), stable across processes."""
    digest = hashlib.sha256(f"hft:{base}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _half(n: int, rng: random.Random) -> int:
    """Half of ``n``; an odd ``n`` rounds up or down with probability 1/2 (expected n/2)."""
    return n // 2 + (n % 2 if rng.random() < 0.5 else 0)


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def block_groups(prefix: str, block: nn.Module, patterns: dict[str, tuple[str, ...]] | None = None
                 ) -> dict[str, Named]:
    """A block's modules by category: attention (q/k/v/o), ffn (gate/up/down), other linears, norms.
    ``patterns``: the model's role patterns (``clbench.modules.role_patterns``, its declared
    ``module_roles`` first); default: the built-in ones."""
    roles = block_roles(block, patterns)
    attn: Named = [roles[r] for r in ATTENTION_ROLES if r in roles]
    ffn: Named = [roles[r] for r in FFN_ROLES if r in roles]
    seen = {id(m) for _, m in attn + ffn}
    groups: dict[str, Named] = {
        "attention": attn, "ffn": ffn,
        "other": [(n, m) for n, m in linear_layers(block) if id(m) not in seen],
        "norm": [(n, m) for n, m in block_norms(block) if _has_params(m)],
    }
    return {c: [(f"{prefix}.{n}", m) for n, m in g] for c, g in groups.items()}


def select(model: nn.Module, granularity: str, rng: random.Random) -> tuple[Named, Named]:
    """Draw the modules to freeze; returns (chosen, pool the draw was made from)."""
    blocks = transformer_blocks(model)
    if not blocks:  # no transformer blocks: model-level over weight layers except the head
        layers: Named = [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]
        pool: Named = [(n, m) for n, m in layers[:-1] if _has_params(m)]
        return rng.sample(pool, _half(len(pool), rng)), pool
    if granularity == "layer":
        return rng.sample(blocks, _half(len(blocks), rng)), blocks
    patterns = role_patterns(model)
    groups = [block_groups(n, b, patterns) for n, b in blocks]
    if granularity == "model":
        pool = [nm for g in groups for c in CATEGORIES for nm in g[c]]
        return rng.sample(pool, _half(len(pool), rng)), pool
    # category: odd-sized categories freeze the larger half in a random half of the blocks
    extra = {c: set(rng.sample(range(len(groups)), len(groups) // 2)) for c in CATEGORIES}
    chosen: Named = []
    for i, g in enumerate(groups):
        for c in CATEGORIES:
            k = len(g[c]) // 2 + (len(g[c]) % 2 if i in extra[c] else 0)
            chosen += rng.sample(g[c], k)
    return chosen, [nm for g in groups for c in CATEGORIES for nm in g[c]]


def _numel(modules: Named) -> int:
    unique = {id(p): p for _, m in modules for p in m.parameters()}
    return sum(p.numel() for p in unique.values())


def _matrices(modules: Named) -> int:
    return sum(isinstance(m, WEIGHT_LAYERS) for _, mod in modules for m in mod.modules())


@register_method("hft")
class HFT(Method):
    """Half Fine-Tuning (HFT).

    Paper: Hui et al., "HFT: Half Fine-Tuning for Large Language Models", arXiv:2404.18466
    (ACL 2025). No official code exists; the SSU repository's re-implementation
    (``gucci-j/ssu``) is the reference for the details the paper leaves open.

    Mechanism: at the start of every experience a fresh random draw, seeded from
    ``(seed, experience index)``, freezes half of each transformer block's modules by category:
    2 of q/k/v/o, half of the FFN matrices (Llama gate/up/down: 2 in a random half of the blocks,
    1 in the others), 1 of the block's 2 norms. Frozen = ``requires_grad=False`` on weight and
    bias, so the trainer's optimizer holds no state for them and applies no weight decay.
    Embeddings, the head and the final norm stay trainable. At experience end exactly the
    parameters HFT froze are trainable again (parameters frozen by someone else stay frozen).

    Hooks used: ``on_experience_start`` (draw, freeze), ``on_experience_end`` (unfreeze),
    ``experience_report`` (frozen modules and fractions; the mechanism figure is
    ``frozen_param_fraction``, the share of the model's parameters frozen in that experience),
    ``state_dict``/``load_state_dict``.

    Deviations from the paper/official code:
        - One rule for every category of ``n`` modules: freeze ``n // 2``; an odd category freezes
          one more in a random half (``floor(L/2)``) of the blocks -- the paper's FFN rule for
          gate/up/down. The ViT's FFN has only up/down, so it freezes 1 of 2 in every block.
          Linear layers of a block with no q/k/v/o/gate/up/down role (fused projections such
          as GPT-2 ``c_attn``) form an extra category under the same rule. Modules are counted,
          not parameters (as the paper; with GQA the parameter fraction differs from 1/2 and
          is logged). Norms are found by type, so any number per block works.
        - ``layer``/``model`` granularity (ablations) and odd totals: ``floor(n/2)`` or
          ``ceil(n/2)`` with probability 1/2 each.
        - Models without transformer blocks (the MLP, CNN) fall back to model-level: a random
          half of the Linear/Conv layers except the head (the last such layer in module order);
          an odd count rounds randomly as above (the 1-hidden-layer MLP freezes it or not).
        - The trainable ratio is fixed at 1/2 (the paper's default).
        - The paper gives no seeding: the draw's seed is derived from (``seed`` or the global
          torch seed, experience index) and logged as ``draw_seed``. The trainer builds a new
          optimizer every experience, so unfrozen parameters never carry stale moments.
    """

    Config = HFTConfig
    mechanism_figures = ("frozen_param_fraction",)

    def __init__(self, config: HFTConfig | None = None) -> None:
        super().__init__(config)
        self.history: list[dict[str, Any]] = []  # the draw of experience i at position i
        self.frozen_params: list[str] = []  # parameters HFT set requires_grad=False on, now

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        base = torch.initial_seed() if self.config.seed is None else self.config.seed
        seed = draw_seed(base, exp.index)
        chosen, pool = select(model, self.config.granularity, random.Random(seed))
        ids = {id(p) for _, m in chosen for p in m.parameters()}
        self.frozen_params = []
        for name, p in model.named_parameters():
            if id(p) in ids and p.requires_grad:
                p.requires_grad_(False)
                self.frozen_params.append(name)
        total = _numel([("", model)])
        self.history.append({
            "draw_seed": str(seed), "granularity": self.config.granularity,
            "frozen_modules": sorted(n for n, _ in chosen),
            "frozen_param_fraction": _numel(chosen) / max(total, 1),
            "frozen_pool_param_fraction": _numel(chosen) / max(_numel(pool), 1),
            "frozen_matrix_fraction": _matrices(chosen) / max(_matrices(pool), 1),
        })

    def on_experience_end(self, exp: Experience, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name in self.frozen_params:
            params[name].requires_grad_(True)
        self.frozen_params = []

    def experience_report(self) -> dict[str, Any]:
        """The last draw: frozen module names, frozen fractions (elements; matrices), the seed."""
        return dict(self.history[-1]) if self.history else {}

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history], "frozen_params": list(self.frozen_params)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state["history"]]
        self.frozen_params = list(state["frozen_params"])

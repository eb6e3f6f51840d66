"""CoDyRA: gated LoRA with an ℓ1 proximal step on the per-rank gates, merged after every experience."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from clbench.config import TrainerConfig
from clbench.protocol import Method
from clbench.registry import register_method
from clbench.search import grid, with_base
from clbench.streams import Batch, Experience, StreamInfo
from methods._pet import GatedLoRA, classifier_head, key, targets
from methods.lae import current_class_loss

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
CONTAINER = "codyra"  # attribute name of the LoRA modules on the model


@dataclass(frozen=True)
class CoDyRAConfig:
    """Options of :class:`CoDyRA` (defaults: the paper's runner script).

    Attributes:
        rank: LoRA rank r of every target (16).
        roles: Linear roles adapted in every transformer block (``qkvoinout``: q, k, v, o and the
            FFN's gate/up/down). Models without blocks adapt every Linear but the head.
        kappa_max: final soft threshold κ_max (0.005; the argparse default is 7e-4).
        kappa_steps: number of values of the κ ramp linspace(0, κ_max, kappa_steps) (50). As in
            the code, an experience with fewer post-dense steps than this keeps κ = 0.
        dense_fraction: share of an experience's optimizer steps trained without the proximal
            step (0.5); κ ramps over the rest.
        prox: ``code``: shrink by κ, then zero every gate below κ (effective: zero |g| < 2κ,
            else shrink by κ; the released code); ``paper``: soft threshold T_κ.
        train_head: also train the classifier head (needed: the harness classifies with a
            linear head, CLIP with frozen text embeddings); False = LoRA only.
        loss_classes: ``current``: cross-entropy over the current experience's classes only
            (the code: previous classes' logits are -inf during training, later classes are not
            in the label set yet); ``all``: the trainer's cross-entropy over every output.
    """

    rank: int = 16
    roles: tuple[str, ...] = ROLES
    kappa_max: float = 0.005
    kappa_steps: int = 50
    dense_fraction: float = 0.5
    prox: Literal["code", "paper"] = "code"
    train_head: bool = True
    loss_classes: Literal["current", "all"] = "current"

    def __post_init__(self) -> None:
        if self.rank < 1 or self.kappa_steps < 1:
            raise ValueError("rank and kappa_steps must be >= 1")
        if self.kappa_max < 0 or not 0.0 <= self.dense_fraction <= 1.0:
            raise ValueError("kappa_max must be >= 0 and dense_fraction in [0, 1]")
        if self.prox not in ("code", "paper"):
            raise ValueError(f"prox must be 'code' or 'paper', got {self.prox!r}")
        if self.loss_classes not in ("current", "all"):
            raise ValueError(f"loss_classes must be 'current' or 'all', got {self.loss_classes!r}")
        bad = set(self.roles) - set(ROLES)
        if bad or not self.roles:
            raise ValueError(f"roles must be a non-empty subset of {ROLES}, got {self.roles}")


def soft_threshold_(g: Tensor, kappa: float, rule: str = "code") -> None:
    """Proximal step of ``kappa * ||g||_1`` in place (see :class:`CoDyRAConfig`.prox)."""
    shrunk = g.sign() * (g.abs() - kappa).clamp_min(0)
    if rule == "code":
        shrunk = shrunk.masked_fill(shrunk.abs() < kappa, 0.0)
    g.copy_(shrunk)


class KappaRamp:
    """The official code's κ schedule over an experience's T optimizer steps.

    ``grid = linspace(0, κ_max, n)``, ``dense = dense_fraction * T``, ``every = (T - dense) // n``.
    κ starts at ``grid[0] = 0``; at every step ``it >= dense`` with ``it % every == 0`` it moves to
    the next grid value (the first move gives ``grid[1]``) and stays at κ_max once there. The
    proximal step runs after every step ``it > dense``. If ``every == 0`` (fewer than ``n`` steps
    after the dense part) κ never moves from 0 and nothing is pruned, as in the code.
    """

    def __init__(self, total: int, kappa_max: float, n: int, dense_fraction: float) -> None:
        self.grid = torch.linspace(0, kappa_max, n, dtype=torch.float64).tolist()
        self.dense = dense_fraction * total
        self.every = int((total - self.dense) // n)
        self.index, self.kappa = 0, self.grid[0]

    def after(self, it: int) -> float | None:
        """κ for the proximal step after step ``it`` (0-based), or None during the dense part."""
        if self.every > 0 and it >= self.dense and it % self.every == 0:
            self.index += 1
            self.kappa = self.grid[min(len(self.grid) - 1, self.index)]
        return self.kappa if it > self.dense else None


@register_method("dynamic_rank_lora")
class CoDyRA(Method):
    """Continual Dynamic Rank-Selective LoRA (CoDyRA).

    Paper: Lu, Zhao, Xie, Xu, Ding, "Adaptive Rank, Reduced Forgetting: Knowledge Retention in
    Continual Learning Vision-Language Models with Dynamic Rank-Selective LoRA" (later "Take Only
    What You Need"), arXiv:2412.01004. Official code: github.com/Artificer-AI-Lab/CoDyRA.

    Mechanism: every target Linear (q, k, v, o and FFN layers of each block) gets a rank-r LoRA
    with a learnable gate per rank, ``ΔW = B diag(g) A`` (A kaiming, B zero, g randn, scaling 1);
    the base model is frozen. The first ``dense_fraction`` of an experience's steps train
    normally; after each later step the gates take a proximal ℓ1 step with a threshold κ ramped
    from 0 to κ_max, which sets unneeded rank components to exactly zero. At the end of the
    experience the surviving components are merged into the base weights and the LoRA is
    switched off (no inference cost); the next experience re-initialises it at full rank.

    The gated LoRA is a small hook module (:class:`methods._pet.GatedLoRA`), not ``peft``: a
    per-rank gate with its own init and an ℓ1 prox is not a ``peft`` LoRA feature (AdaLoRA's
    ``lora_E`` is tied to its budget allocator and ``1/r`` scaling); hooks keep every base
    module's name and type. A test checks it against ``peft``'s LoRA.

    Training loss (default ``loss_classes="current"``, as the code): cross-entropy over the
    current experience's classes only, i.e. the logits of earlier classes are masked to -inf
    (:func:`methods.lae.current_class_loss`, LAE's rule); no old-class negatives, no replay.

    κ ramp (:class:`KappaRamp`, as the code): over the experience's T optimizer steps, κ is 0
    for the dense part and then steps through ``linspace(0, κ_max, kappa_steps)`` every
    ``(T - dense) // kappa_steps`` steps. A gate is pruned once the summed shrinkage Σκ over
    the post-dense steps outgrows it; the gates start randn (median |g| 0.67), and the runner
    script's 500 iterations sum to Σκ ≈ 0.62. So the number of steps decides: with the defaults
    (κ_max 0.005, 50 κ values, dense 0.5) an experience of fewer than 100 steps has fewer than
    50 post-dense steps, κ stays 0 (the code's ``lambda_step_iters > 0`` guard) and nothing is
    pruned -- e.g. 2 epochs × 12 batches = 24 steps. Kept fraction measured with AdamW lr 1e-3
    (seed 0): vision track (vit_tiny, split MNIST, 12 batches per epoch) 1.0 at 24 steps,
    0.88-0.92 at 108, 0.55-0.61 at 504; testing.py's tiny ViT 1.0 at 96 steps, ≈ 0.93 at 102,
    ≈ 0.74 at 198, 0.47-0.48 at 498 (the paper: effective rank ≈ 8.3 of 16). Short experiences
    prune only with ``kappa_steps`` ≤ the post-dense steps and a larger κ_max (tiny ViT, 24
    steps, kappa_steps 12: κ_max 0.05 keeps ≈ 0.70, 0.1 ≈ 0.44). ``kept_fraction`` in the
    report shows which case a run is.

    Hooks used: ``setup`` (freeze, inject), ``on_experience_start`` (re-init, enable, current
    classes), ``optimizer`` (reads the step count for the κ ramp; returns None), ``loss``
    (current-class cross-entropy), ``on_after_step`` (proximal step), ``on_experience_end``
    (count kept ranks, merge, disable), ``experience_report`` (kept ranks per module, kept
    fraction, final κ; per experience), ``artifacts`` (rank plot),
    ``state_dict``/``load_state_dict``.

    Deviations from the paper/official code:
        - The classifier head trains too (``train_head``): CLIP classifies with frozen text
          embeddings of class prompts, the harness with a linear head; there is no text tower,
          so the text→image loss term does not apply. Head rows of earlier classes get no
          gradient from the current-class loss, but the trainer's weight decay (AdamW) still
          shrinks them (the code's earlier-class text embeddings are fixed during a task).
          ``loss_classes="all"`` (not in the code) uses the trainer's cross-entropy over all
          outputs instead.
        - Merging happens at the end of each experience, not at the start of the next one
          (same weights; evaluation then runs on the merged model, as the paper describes).
        - The optimizer, LR, weight decay and schedule are the trainer's, not AdamW(β2=0.9999,
          wd 0) with cosine decay over the iterations; T is the experience's optimizer steps
          (epochs × batches / grad_accum) instead of a fixed iteration count. κ is not scaled
          by the LR in either; the LR barely changes the kept fraction (tiny ViT, 498 steps,
          two experiences: 0.47-0.50 / 0.47-0.48 / 0.43-0.47 at lr 5e-4 / 1e-3 / 1e-2), the
          number of steps does.
        - On Llama the FFN gate projection counts as ``fc_in`` with ``up`` (all FFN Linears are
          adapted); the MLP (no blocks) adapts every Linear but the head.
    """

    Config = CoDyRAConfig
    # adapts a frozen pretrained model: the protocol does not rank it on one that starts untrained
    needs_pretrained = True
    mechanism_figures = ("kept_fraction",)
    # widened to 0.1 after vision_cil's winner sat on 0.02 (grid round 2)
    search_space = with_base({"method.kappa_max": grid(0.0, 0.0002, 0.001, 0.005, 0.02, 0.1, closed_min=True)})

    def __init__(self, config: CoDyRAConfig | None = None) -> None:
        super().__init__(config)
        self.history: list[dict[str, int]] = []  # kept ranks per module, one dict per experience
        self._mods: list[tuple[str, nn.Linear, GatedLoRA]] = []  # hooked only while an experience trains
        self.roles: dict[str, str] = {}  # module path -> role (q, k, ..., or linear)
        self._ramp: KappaRamp | None = None
        self._step = 0
        self._n_train = 0
        self.num_classes = 0
        self.current: list[int] = []  # classes of the experience being trained

    def setup(self, model: nn.Module, stream_info: StreamInfo) -> nn.Module:
        self.num_classes = stream_info.num_classes
        model.requires_grad_(False)
        head = classifier_head(model, stream_info.num_classes)
        exclude = () if head is None else (head[1],)
        loras = nn.ModuleDict()
        for name, role, lin in targets(model, self.config.roles, exclude=exclude):
            self.roles[name] = role
            lora = GatedLoRA(lin.in_features, lin.out_features, self.config.rank)
            lora.requires_grad_(False)
            loras[key(name)] = lora
            self._mods.append((name, lin, lora))
        if not self._mods:
            raise ValueError("CoDyRA found no Linear layers to adapt")
        model.add_module(CONTAINER, loras)
        if head is not None and self.config.train_head:
            head[1].requires_grad_(True)
        return model

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        for _, lin, lora in self._mods:
            lora.reset()
            if not lora.attached:
                lora.attach(lin)
            lora.requires_grad_(True)
        self._n_train, self._step = len(exp.train), 0
        self.current = sorted(set(exp.classes))

    def optimizer(self, params: list[nn.Parameter], cfg: TrainerConfig) -> torch.optim.Optimizer | None:
        """Lay the κ ramp over this experience's optimizer steps."""
        total = cfg.epochs * math.ceil(math.ceil(self._n_train / cfg.batch_size) / cfg.grad_accum)
        c = self.config
        self._ramp = KappaRamp(total, c.kappa_max, c.kappa_steps, c.dense_fraction)
        return None

    def loss(self, model: nn.Module, batch: Batch, outputs: Tensor, base_loss: Tensor) -> Tensor:
        if self.config.loss_classes == "all":
            return base_loss
        return current_class_loss(outputs, batch.y, self.current, self.num_classes, base_loss)

    def on_after_step(self, model: nn.Module) -> None:
        kappa = self._ramp.after(self._step) if self._ramp is not None else None
        self._step += 1
        if kappa is not None:
            with torch.no_grad():
                for _, _, lora in self._mods:
                    soft_threshold_(lora.g, kappa, self.config.prox)

    def on_experience_end(self, exp: Experience, model: nn.Module) -> None:
        kept = {}
        for name, lin, lora in self._mods:
            kept[name] = lora.kept()
            lora.merge_into(lin)
            lora.detach()
            lora.requires_grad_(False)
        self.history.append(kept)

    def experience_report(self) -> dict[str, Any]:
        """Kept ranks of the experience just merged: per module, mean, total, per role."""
        if not self.history:
            return {}
        kept = self.history[-1]
        out: dict[str, Any] = {"ranks": dict(kept), "mean_rank": sum(kept.values()) / len(kept),
                               "kept_fraction": sum(kept.values()) / (len(kept) * self.config.rank),
                               "zero_rank_modules": sum(v == 0 for v in kept.values()),
                               "kappa_final": self._ramp.kappa if self._ramp is not None else 0.0}
        for role in sorted(set(self.roles.values())):
            vals = [v for n, v in kept.items() if self.roles.get(n) == role]
            if vals:
                out[f"mean_rank_{role}"] = sum(vals) / len(vals)
        return out

    def artifacts(self, out_dir: Path) -> list[Path]:
        """A PNG heatmap of kept ranks (modules × experiences)."""
        if not self.history:
            return []
        return [rank_plot(self.history, self.config.rank, out_dir / "codyra_ranks.png")]

    def state_dict(self) -> dict[str, Any]:
        # "step": the κ ramp's position within the experience (resuming mid-experience)
        return {"history": [dict(h) for h in self.history], "step": self._step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [{k: int(v) for k, v in h.items()} for h in state["history"]]
        self._step = int(state.get("step", 0))  # on_experience_start resets it at a boundary


def rank_plot(history: list[dict[str, int]], rank: int, path: Path) -> Path:
    """Heatmap of kept ranks: one row per module, one column per experience."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(history[0])
    data = [[h.get(n, 0) for h in history] for n in names]
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * len(history), 1.0 + 0.22 * len(names)))
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=rank)
    ax.set_xticks(range(len(history)), [str(i) for i in range(len(history))])
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_xlabel("experience")
    ax.set_title("CoDyRA kept rank per module")
    fig.colorbar(im, ax=ax, label="kept rank")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""LAE: an online PET trained per experience, an EMA offline PET, a max-softmax two-expert ensemble."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from clbench.config import TrainerConfig
from clbench.errors import IncompatibleError
from clbench.modules import block_roles, role_patterns, transformer_blocks
from clbench.protocol import Method
from clbench.registry import register_method
from clbench.search import grid, with_base
from clbench.streams import Batch, Experience, StreamInfo
from methods._pet import (
    Adapter,
    LoRA,
    Prefix,
    attention_of,
    classifier_head,
    heads_of,
    key,
    targets,
)

PETS = ("adapter", "lora", "prefix")
ONLINE, OFFLINE = "lae_pet", "lae_offline"  # attribute names on the model


@dataclass(frozen=True)
class LAEConfig:
    """Options of :class:`LAE` (defaults: the official code's configs).

    Attributes:
        pet: ``adapter`` (parallel to each adapted block's attention), ``lora`` (on k and v) or
            ``prefix`` (key/value prefixes; the clbench ViT only).
        size: adapter hidden units / LoRA rank (an integer, 5 in the code).
        prefix_length: prefix key/value vectors per adapted block (10).
        blocks: the first ``blocks`` transformer blocks are adapted (the code's 5, of ViT-B's
            12); 0 = all. A count, not a fraction: a model with ``blocks`` or fewer blocks is
            adapted in every block (the default 5 adapts all 4 blocks of ``vit_tiny``, 2 of the
            tests' tiny ViT). Ignored by models without blocks (the MLP: every Linear but the
            head).
        ema_decay: offline PET ← decay·offline + (1−decay)·online after every optimizer step
            from the second experience on (0.9999).
        freeze_fraction: share of an experience's optimizer steps (every experience but the
            first) in which only the head trains (code: 3 of 5 epochs, 30 of 50).
        compensatory: divide the prefix attention weights by their mass λ (the code's
            calibration); False = plain prefix tuning.
        learnable_scale: a learnable scalar per PET module, init 1 (code); False = fixed 1.
        new_task_loss: cross-entropy over the current experience's classes only (code);
            False = over all outputs (the trainer's base loss).
        head_init: ``new``: head rows of classes seen for the first time are re-initialised
            N(0, 0.001²), bias 0 (the code appends a fresh head per task); ``keep``: keep them.
        ensemble: ``max_softmax`` (code: class-wise max of the experts' softmaxes) or
            ``offline`` (the code's ``eval_only_emas``: the offline expert alone once it exists).
    """

    pet: Literal["adapter", "lora", "prefix"] = "adapter"
    size: int = 5
    prefix_length: int = 10
    blocks: int = 5
    ema_decay: float = 0.9999
    freeze_fraction: float = 0.6
    compensatory: bool = True
    learnable_scale: bool = True
    new_task_loss: bool = True
    head_init: Literal["new", "keep"] = "new"
    ensemble: Literal["max_softmax", "offline"] = "max_softmax"

    def __post_init__(self) -> None:
        if self.pet not in PETS:
            raise ValueError(f"pet must be one of {PETS}, got {self.pet!r}")
        if self.size < 1 or self.prefix_length < 1 or self.blocks < 0:
            raise ValueError("size and prefix_length must be >= 1 and blocks >= 0")
        if not 0.0 <= self.ema_decay <= 1.0 or not 0.0 <= self.freeze_fraction <= 1.0:
            raise ValueError("ema_decay and freeze_fraction must be in [0, 1]")
        if self.head_init not in ("new", "keep") or self.ensemble not in ("max_softmax", "offline"):
            raise ValueError("head_init must be 'new'/'keep' and ensemble 'max_softmax'/'offline'")


def build_pets(model: nn.Module, c: LAEConfig, head: tuple[nn.Module, ...] = ()) -> nn.ModuleDict:
    """Create and hook the online PET modules on ``model`` (keys: module paths), never on ``head``."""
    pets = nn.ModuleDict()
    if c.pet == "lora":
        for name, _, lin in targets(model, ("k", "v"), c.blocks, exclude=head):
            lora = LoRA(lin.in_features, lin.out_features, c.size, c.learnable_scale)
            lora.attach(lin)
            pets[key(name)] = lora
        return pets
    blocks = transformer_blocks(model)
    if not blocks:  # an MLP: adapters parallel to every Linear but the head
        if c.pet == "prefix":
            raise ValueError("LAE pet=prefix needs attention blocks; this model has none (use adapter/lora)")
        for name, _, lin in targets(model, (), exclude=head):
            adapter = Adapter(lin.in_features, lin.out_features, c.size, c.learnable_scale)
            adapter.attach(lin)
            pets[key(name)] = adapter
        return pets
    for bname, block in blocks[: c.blocks or len(blocks)]:
        _attach_block(pets, bname, block, c, role_patterns(model))
    return pets


def _attach_block(pets: nn.ModuleDict, bname: str, block: nn.Module, c: LAEConfig,
                  patterns: dict[str, tuple[str, ...]] | None = None) -> None:
    found = attention_of(block, patterns)
    if found is None:
        raise ValueError(f"LAE could not find q/k/v/o projections in block {bname!r}")
    aname, attn = found
    q, k, o = (block.get_submodule(n) for n in _role_names(block, patterns))
    assert isinstance(q, nn.Linear) and isinstance(k, nn.Linear) and isinstance(o, nn.Linear)
    name = f"{bname}.{aname}" if aname else bname
    if c.pet == "adapter":
        adapter = Adapter(q.in_features, o.out_features, c.size, c.learnable_scale)
        adapter.attach(attn)
        pets[key(name)] = adapter
        return
    heads = heads_of(attn)
    if heads is None or hasattr(attn, "config"):
        raise ValueError(f"LAE pet=prefix supports the clbench ViT attention only, not {type(attn).__name__} "
                         "(Hugging Face attention: use pet=adapter or pet=lora)")
    prefix = Prefix(q.out_features, k.out_features, heads, c.prefix_length, c.compensatory, c.learnable_scale)
    prefix.attach_attention(q, k, o)
    pets[key(name)] = prefix


def _role_names(block: nn.Module, patterns: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    roles = block_roles(block, patterns)
    return [roles[r][0] for r in ("q", "k", "o")]


@register_method("lae")
class LAE(Method):
    """Learning-Accumulation-Ensemble (LAE).

    Paper: Gao, Cen, Wang, Lu, Hu, "A Unified Continual Learning Framework with General
    Parameter-Efficient Tuning", ICCV 2023, arXiv:2303.10070. Official code: github.com/gqk/LAE
    (the default behaviour here).

    Mechanism: the backbone is frozen; a PET (adapter, LoRA or prefix) is injected into the first
    ``blocks`` transformer blocks. The online PET and the classifier head train on every
    experience with cross-entropy over that experience's classes only. From the second
    experience on, the first ``freeze_fraction`` of the steps train the head alone (the PET's
    ``requires_grad`` is off), and after every step an offline copy of the PET (created from the
    online PET at the start of the second experience) moves by EMA toward it. Adaptation-speed
    calibration = that head-only warm-up + learnable per-PET scalars + the compensatory prefix
    (prefix attention weights divided by their mass λ, so it acts like a parallel adapter).
    ``predict`` runs the model twice (online PET; offline PET through ``functional_call``) and
    returns the log of the class-wise max of the two softmaxes over the classes seen so far.

    The PETs are small modules applied by forward hooks (:mod:`methods._pet`), not ``peft``:
    learnable PET scalars, the parallel adapter and the compensatory prefix on the clbench ViT
    are not ``peft`` features. The offline PET is a set of buffers on the model, so checkpoints
    hold it. The MLP (no attention blocks) gets adapters/LoRA on every Linear but the head.

    Hooks used: ``setup`` (freeze, inject), ``on_experience_start`` (head rows, offline copy),
    ``optimizer`` (reads the step count for the warm-up; returns None), ``loss`` (current-class
    cross-entropy), ``on_after_step`` (end of warm-up, EMA), ``on_experience_end``,
    ``predict`` (ensemble), ``experience_report`` (mechanism figures: head-only warm-up steps
    and ``ema_moved_fraction``, how far the offline PET moved toward the online one),
    ``state_dict``/``load_state_dict``.

    Deviations from the paper/official code:
        - One head of ``num_classes`` outputs instead of a list of per-task heads: rows of new
          classes are re-initialised at their first experience and logits of unseen classes are
          masked at prediction. Old rows get no gradient from the current-class loss.
        - Weight decay: the trainer's ``weight_decay`` (0.01 with AdamW in the vit_tiny and
          language-model settings) acts on every trainable parameter that has a gradient: the
          PET weights, the learnable PET scalars (init 1, pulled toward 0 by lr·wd per step)
          and the whole head, old-class rows included (zero gradient, but decoupled decay still
          shrinks them). The code's Adam has wd 0, so there the scalars move only by their
          gradient and old rows never move. During the head-only warm-up the PET has no
          gradient and is not decayed.
        - The optimizer, LR and schedule are the trainer's (the fixed tuning protocol), not
          the code's Adam with constant LR 0.03·bs/256; the warm-up is a fraction of the
          experience's optimizer steps instead of whole epochs (3/5 = 30/50 = 0.6 by default).
        - Domain-incremental streams (same classes every experience) keep LAE's rules: the loss
          covers the experience's classes, the head is re-initialised only at the first one.
        - Causal-LM objectives: the loss is the trainer's (answer-token LM loss) and the ensemble
          is the token-wise max of the two vocabulary softmaxes. General-capability scores by
          lm-eval use the online expert only (the runner scores the Hugging Face model directly).
        - Adapter placement on post-norm encoders (BERT/MiniLM): parallel to the whole attention
          sub-layer including its residual and LayerNorm (pre-norm ViT/Llama: as the code).
        - No classification head (a causal LM, whose vocabulary head, tied to the input embedding
          in the tiny Llama, belongs to the frozen backbone; an encoder with
          ``model.head=label_embeddings``, which has no parameters): only the PET trains, and
          ``freeze_fraction`` > 0 is refused at ``setup`` as incompatible (a board lists the
          method as not applicable on such a track; ``method.freeze_fraction=0`` runs it without
          the warm-up). The code always has a fresh head for
          its warm-up; here the warm-up would leave nothing to train (the loss would have no
          gradient), and its purpose, keeping a random new head from dragging the PET, does not
          arise without one.
        - ``pet=prefix`` is refused on Hugging Face attention (no hook point for the
          compensation); the prefix position in the key sequence is irrelevant without
          positional bias, so it is not inserted after the CLS position.
        - The EMA decay stays 0.9999 whatever the steps per experience (the spec suggests
          re-tuning it; with few steps the offline PET barely leaves its experience-1 state:
          ``ema_moved_fraction`` = 1 - decay^steps, about 0.002 for 24 steps).
    """

    Config = LAEConfig
    # adapts a frozen pretrained model: the protocol does not rank it on one that starts untrained
    needs_pretrained = True
    mechanism_figures = ("warmup_steps", "ema_moved_fraction")
    # decay 0 makes the offline PET a copy of the online one (the limit); widened after vision_cil's
    # winner sat on 0.9.
    search_space = with_base({"method.ema_decay": grid(0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, closed_min=True)})

    def __init__(self, config: LAEConfig | None = None) -> None:
        super().__init__(config)
        self.seen: list[int] = []  # classes seen so far, in order of appearance
        self.current: list[int] = []
        self.done = 0  # experiences trained
        self.num_classes = 0
        self._pairs: list[tuple[str, nn.Parameter, Tensor]] = []  # (param path, online, offline)
        self._trainable: list[nn.Parameter] = []
        self._warmup = 0
        self._steps = 0
        self._n_train = 0
        self._report: dict[str, Any] = {}
        self._fixed: set[str] = set()  # PET parameters that never train (learnable_scale=False)

    def setup(self, model: nn.Module, stream_info: StreamInfo) -> nn.Module:
        """Freeze the model, inject the PETs, train the head; refuse a warm-up with no head to train.

        Raises:
            IncompatibleError: ``freeze_fraction`` > 0 on a model without a classification head
                (no ``nn.Linear`` with ``num_classes`` outputs).
        """
        self.num_classes = stream_info.num_classes
        head = classifier_head(model, stream_info.num_classes)
        if head is None and self.config.freeze_fraction > 0:
            # the warm-up trains the head alone: without one nothing would require a gradient
            raise IncompatibleError(
                f"method 'lae' with method.freeze_fraction={self.config.freeze_fraction}: "
                f"{type(model).__name__} has no classification head (an nn.Linear with "
                f"{stream_info.num_classes} outputs) for LAE's head-only warm-up to train (a causal "
                "LM's vocabulary head is part of the frozen backbone); method.freeze_fraction=0 "
                "runs it without the warm-up")
        model.requires_grad_(False)
        pets = build_pets(model, self.config, () if head is None else (head[1],))
        self._fixed = {n for n, p in pets.named_parameters() if not p.requires_grad}
        model.add_module(ONLINE, pets)
        offline = nn.Module()
        for pname, p in pets.named_parameters():
            offline.register_buffer(key(pname), p.detach().clone())
        offline.register_buffer("exists", torch.zeros((), dtype=torch.bool))
        model.add_module(OFFLINE, offline)
        if head is not None:
            head[1].requires_grad_(True)
        return model

    def _bind(self, model: nn.Module) -> nn.Module:
        pets, offline = model.get_submodule(ONLINE), model.get_submodule(OFFLINE)
        self._pairs = [(f"{ONLINE}.{n}", p, getattr(offline, key(n))) for n, p in pets.named_parameters()]
        self._trainable = [p for n, p in pets.named_parameters() if n not in self._fixed]
        return offline

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        offline = self._bind(model)
        new = [c for c in exp.classes if c not in self.seen]
        head = classifier_head(model, self.num_classes)
        if head is not None and new and self.config.head_init == "new":
            with torch.no_grad():
                head[1].weight[new] = torch.randn_like(head[1].weight[new]) * 1e-3
                if head[1].bias is not None:
                    head[1].bias[new] = 0.0
        exists = offline.get_buffer("exists")
        if self.done >= 1 and not bool(exists):
            with torch.no_grad():
                for _, on, off in self._pairs:
                    off.copy_(on)
                exists.fill_(True)
        self.seen += new
        self.current = sorted(set(exp.classes))
        self._n_train, self._steps, self._warmup = len(exp.train), 0, 0
        self._set_pet_grad(True)

    def optimizer(self, params: list[nn.Parameter], cfg: TrainerConfig) -> torch.optim.Optimizer | None:
        """Start the head-only warm-up (after the trainer collected the PET into its optimizer)."""
        if self.done >= 1 and self.config.freeze_fraction > 0:
            per_epoch = math.ceil(math.ceil(self._n_train / cfg.batch_size) / cfg.grad_accum)
            self._warmup = math.floor(self.config.freeze_fraction * per_epoch * cfg.epochs)
            self._set_pet_grad(self._warmup == 0)
        return None

    def _set_pet_grad(self, on: bool) -> None:
        for p in self._trainable:
            p.requires_grad_(on)

    def loss(self, model: nn.Module, batch: Batch, outputs: Tensor, base_loss: Tensor) -> Tensor:
        if not self.config.new_task_loss:
            return base_loss
        return current_class_loss(outputs, batch.y, self.current, self.num_classes, base_loss)

    def on_after_step(self, model: nn.Module) -> None:
        self._steps += 1
        if self._warmup and self._steps == self._warmup:
            self._set_pet_grad(True)
        if self.done >= 1 and self._pairs:
            ema_(self._pairs, self.config.ema_decay)

    def on_experience_end(self, exp: Experience, model: nn.Module) -> None:
        self._set_pet_grad(True)
        self.done += 1
        on = torch.cat([p.detach().flatten().float() for _, p, _ in self._pairs])
        off = torch.cat([o.flatten().float() for _, _, o in self._pairs])
        exists = self.done >= 2
        self._report = {
            "pet_params": int(on.numel()), "warmup_steps": self._warmup, "ema_steps": self._steps if exists else 0,
            "offline_online_rel_dist": float((on - off).norm() / on.norm().clamp_min(1e-12)) if exists else 0.0,
            # weight of this experience's online PETs in the offline PET: 1 - decay^steps
            "ema_moved_fraction": 1.0 - self.config.ema_decay ** self._steps if exists else 0.0,
            "seen_classes": len(self.seen),
        }

    def experience_report(self) -> dict[str, Any]:
        return dict(self._report)

    def predict(self, model: nn.Module, batch: Batch) -> Tensor:
        if not self._pairs:
            self._bind(model)
        online = self._mask(model(batch.x))
        offline_exists = bool(model.get_submodule(OFFLINE).get_buffer("exists"))
        if not offline_exists:
            return online
        swapped = {name: off for name, _, off in self._pairs}
        offline = self._mask(functional_call(model, swapped, (batch.x,), strict=False))
        if self.config.ensemble == "offline":
            return offline
        return ensemble(online, offline)

    def _mask(self, logits: Tensor) -> Tensor:
        """Classification logits of classes not seen yet set very low (the code's growing head)."""
        if not self.seen or logits.dim() != 2 or logits.shape[-1] != self.num_classes:
            return logits
        keep = torch.zeros(self.num_classes, dtype=torch.bool, device=logits.device)
        keep[self.seen] = True
        return logits.masked_fill(~keep, torch.finfo(logits.dtype).min)

    def state_dict(self) -> dict[str, Any]:
        # "steps": the position within the experience (warm-up, EMA count) when resuming mid-experience
        return {"seen": list(self.seen), "done": self.done, "report": dict(self._report), "steps": self._steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = [int(c) for c in state["seen"]]
        self.done = int(state["done"])
        self._report = dict(state["report"])
        self._steps = int(state.get("steps", 0))  # on_experience_start resets it at a boundary
        if self._warmup and self._steps >= self._warmup:  # within an experience, past the warm-up
            self._set_pet_grad(True)


def current_class_loss(outputs: Tensor, y: Tensor | None, classes: Sequence[int], num_classes: int,
                       base_loss: Tensor) -> Tensor:
    """Cross-entropy over ``classes`` only: the other logits are left out (= masked to -inf).

    Applies to classification logits ``(N, num_classes)`` whose labels all lie in ``classes``;
    anything else (token logits, replayed samples of other classes) gets ``base_loss`` back.
    """
    if y is None or outputs.dim() != 2 or outputs.shape[-1] != num_classes:
        return base_loss
    cls = torch.tensor(list(classes), device=outputs.device)
    lut = torch.full((num_classes,), -1, dtype=torch.long, device=outputs.device)
    lut[cls] = torch.arange(len(cls), device=outputs.device)
    target = lut[y]
    if bool((target < 0).any()):
        return base_loss
    return F.cross_entropy(outputs[:, cls].float(), target)


def ema_(pairs: list[tuple[str, nn.Parameter, Tensor]], decay: float) -> None:
    """``offline <- decay * offline + (1 - decay) * online`` for every pair, in place."""
    with torch.no_grad():
        torch._foreach_lerp_([off for _, _, off in pairs], [p.detach() for _, p, _ in pairs], 1.0 - decay)


def ensemble(online: Tensor, offline: Tensor) -> Tensor:
    """Log of the class-wise max of the two experts' softmaxes (argmax = LAE's prediction)."""
    p = torch.maximum(online.float().softmax(-1), offline.float().softmax(-1))
    return p.clamp_min(torch.finfo(torch.float32).tiny).log()

"""O-LoRA: a new LoRA per experience, earlier ones frozen and summed in, kept orthogonal by a penalty."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from clbench.protocol import Method
from clbench.registry import register_method
from clbench.search import grid, with_base
from clbench.streams import Batch, Experience, StreamInfo
from methods.seq_lora import (
    SeqLoRAConfig,
    delta_norm,
    frozen_with_head,
    inject_lora,
    lora_layers,
    target_paths,
)


@dataclass(frozen=True)
class OLoRAConfig(SeqLoRAConfig):
    """Options of :class:`OLoRA` (defaults: the official scripts ``scripts/order_*.sh`` and
    ``scripts_llama/order_*.sh``; LoRA options and their defaults as
    :class:`methods.seq_lora.SeqLoRAConfig`).

    Attributes:
        lambda_1: weight of the orthogonality loss ``sum_i |A_i A_t^T|`` (0.5 in every order
            script for T5 and LLaMA; the 15-task script uses 0 for its first task, then 0.5 or 5).
        lambda_2: weight of the L2 term ``sum ||p||_2`` over the current adapter's A and B
            matrices (0 in the order scripts; 0, 0.1 or 0.3 per task in the 15-task script).
    """

    lambda_1: float = 0.5
    lambda_2: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lambda_1 < 0 or self.lambda_2 < 0:
            raise ValueError(f"lambda_1 and lambda_2 must be >= 0, got {self.lambda_1}, {self.lambda_2}")


def adapter(t: int) -> str:
    """The ``peft`` adapter name of experience ``t``."""
    return f"task_{t}"


def orthogonality_loss(previous: Sequence[Tensor], current: Tensor) -> Tensor:
    """``sum_i sum_jk |(A_i A_t^T)_jk|`` for A_i in ``previous`` (r_i x d) and A_t = ``current`` (r x d).

    The code's form: the entrywise L1 norm of the earlier tasks' stacked A times the new A^T,
    in float32. Zero when every row of A_t is orthogonal to every row of every A_i.
    """
    if not previous:
        return current.new_zeros((), dtype=torch.float32)
    stacked = torch.cat([a.detach().float().flatten(1) for a in previous])  # a conv's A: (r, c_in k k)
    return (stacked @ current.float().flatten(1).T).abs().sum()


def l2_loss(params: Sequence[Tensor]) -> Tensor:
    """``sum_p ||p||_2`` (Frobenius norms, not squared) over ``params``, as the code's ``torch.norm``."""
    return torch.stack([torch.linalg.vector_norm(p.float()) for p in params]).sum()


@register_method("olora")
class OLoRA(Method):
    """Orthogonal Low-Rank Adaptation (O-LoRA).

    Paper: Wang, Chen, Ge, Xia, Bao, Zheng, Zhang, Gui, Huang, "Orthogonal Subspace Learning
    for Language Model Continual Learning", EMNLP 2023 Findings, arXiv:2310.14152. Official
    code: github.com/cmnfriend/O-LoRA (``src/uie_trainer_lora.py``, ``src/peft/tuners/lora.py``,
    ``scripts/order_*.sh``; read at commit 07117e1).

    Mechanism: the model is frozen. Experience t trains a fresh LoRA ``(A_t, B_t)`` on every
    target module (A kaiming-uniform, B zero, scaling alpha/r), while the LoRAs of experiences
    0..t-1 stay in the forward pass, frozen: ``h = W x + (alpha/r) sum_{i<=t} B_i A_i x``. The
    loss is ``L_task + lambda_1 * sum_modules sum_{i<t} sum_jk |(A_i A_t^T)_jk| + lambda_2 *
    sum ||p||_2`` over the current A_t and B_t (code: ``orthogonal_loss``, ``l2_loss``), which
    pushes the rows of A_t, the subspace the new update reads its input from, to be orthogonal
    to those of every earlier A_i, so the new task's update leaves the inputs the earlier
    updates respond to alone. No data is stored. Evaluation uses all adapters trained so far.

    The adapters are ``peft`` LoRA adapters, one per experience (``task_<t>``), injected in
    place with ``inject_adapter_in_model``; ``peft`` runs several adapters at once
    (``set_adapter([...])`` on each LoRA layer adds every active adapter's update), so no own
    LoRA module is needed. All ``n_experiences`` adapters are created in ``setup`` (the model's
    structure, hence its checkpoints, stays fixed); adapter t is inactive and untouched (no
    gradient, not in the optimizer) until experience t.

    Hooks used: ``setup`` (freeze, inject the adapters, head trainable),
    ``on_experience_start`` (activate adapters 0..t, train only adapter t), ``loss``
    (orthogonality and L2 terms), ``on_experience_end`` and ``experience_report`` (mechanism
    figures: the unweighted orthogonality loss at the experience's first and last step, its
    mean, the L2 term, ``delta_norm`` of the adapter just trained), ``state_dict``/
    ``load_state_dict`` (the experience reached; the adapters live in the model's state).

    Deviations from the paper/official code:
        - ``alpha`` defaults to 8 (scaling 1 at r 8), not the code's 32 (scaling 4), as for
          :class:`methods.seq_lora.SeqLoRA` (the reason is given there): the two share their
          LoRA settings, as the paper's SeqLoRA baseline and O-LoRA do.
        - The orthogonality loss is the code's entrywise L1 norm ``|A_i A_t^T|``; the paper's
          L_orth sums the squared entries (as recalled; the paper text was not at hand to
          re-check, the code was).
          The L2 term is the code's sum of (unsquared) Frobenius norms.
        - The code stores the earlier LoRAs concatenated into one rank-(r·t) pair and rebuilds
          the model per task from saved adapters; here they are separate ``peft`` adapters of
          the same model (the same sum). Each adapter applies its own dropout mask to the
          input; the code drops the input once for the earlier and the new LoRA together.
        - The optimizer, LR, schedule and weight decay are the trainer's (the fixed tuning
          protocol), not AdamW at constant LR 1e-3 (T5; 1e-4 after the first task on LLaMA)
          without weight decay; with the trainer's AdamW weight decay the current LoRA is
          decayed too (the code's ``lambda_2`` term is its only shrinkage).
        - Like the code under DeepSpeed, the regularizers are part of the loss the trainer
          divides by ``grad_accum``.
        - Classification models also train their classifier head (``train_head``, shared by
          all experiences; the code generates label words with a frozen vocabulary head).
        - Targets are chosen by role (q, v by default) through clbench's module patterns; on
          Llama and T5 that is ``peft``'s default the code uses. Models without transformer
          blocks (the MLP) adapt every Linear but the head.
    """

    Config = OLoRAConfig
    # adapts a frozen pretrained model: the protocol does not rank it on one that starts untrained
    needs_pretrained = True
    # vision: ViT q/v, MLP every Linear but the head; a CNN has no Linear to adapt but its head and is
    # refused by setup (ConfigError) unless method.target_modules names its conv layers
    model_families = frozenset({"vision", "hf_encoder", "hf_causal_lm"})
    mechanism_figures = ("orth_loss_first", "orth_loss_last")
    # widened to 50 after vision_cil's winner sat on 5.0 (grid round 2)
    search_space = with_base({"method.lambda_1": grid(0.0, 0.05, 0.5, 5.0, 50.0, closed_min=True)})

    def __init__(self, config: OLoRAConfig | None = None) -> None:
        super().__init__(config)
        self.n_tasks = 0
        self.current = -1  # index of the experience being trained (or last trained)
        self._layers: list[tuple[str, Any]] = []
        self._stats: dict[str, Tensor] = {}
        self._steps = 0
        self._report: dict[str, Any] = {}

    def setup(self, model: nn.Module, stream_info: StreamInfo) -> nn.Module:
        c = self.config
        head = frozen_with_head(model, stream_info)
        paths = target_paths(model, c.target_modules, () if head is None else (head,))
        self.n_tasks = stream_info.n_experiences
        for t in range(self.n_tasks):
            inject_lora(model, paths, c, adapter(t))  # peft freezes every non-LoRA parameter
        self._layers = lora_layers(model)
        self._activate(max(self.current, 0))
        if head is not None and c.train_head:
            head.requires_grad_(True)
        return model

    def _activate(self, t: int) -> None:
        """Adapters 0..t in the forward pass; adapter t trainable, the earlier ones frozen."""
        names = [adapter(i) for i in range(t + 1)]
        for _, layer in self._layers:
            layer.set_adapter(names)  # peft: every active adapter trainable
            for i in range(t):
                layer.lora_A[adapter(i)].requires_grad_(False)
                layer.lora_B[adapter(i)].requires_grad_(False)

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        if exp.index >= self.n_tasks:
            raise ValueError(f"O-LoRA created {self.n_tasks} adapters (StreamInfo.n_experiences) but got "
                             f"experience {exp.index}")
        self.current = exp.index
        self._activate(exp.index)
        self._stats, self._steps = {}, 0

    def penalties(self, t: int) -> tuple[Tensor, Tensor]:
        """(orthogonality loss, L2 loss) of adapter ``t`` against adapters 0..t-1, summed over modules."""
        orth, l2 = [], []
        for _, layer in self._layers:
            a_t = layer.lora_A[adapter(t)].weight
            orth.append(orthogonality_loss([layer.lora_A[adapter(i)].weight for i in range(t)], a_t))
            l2.append(l2_loss([a_t, layer.lora_B[adapter(t)].weight]))
        return torch.stack(orth).sum(), torch.stack(l2).sum()

    def loss(self, model: nn.Module, batch: Batch, outputs: Tensor, base_loss: Tensor) -> Tensor:
        c, t = self.config, self.current
        grad = c.lambda_1 > 0 or c.lambda_2 > 0
        with torch.autocast(base_loss.device.type, enabled=False), torch.set_grad_enabled(grad):
            orth, l2 = self.penalties(t)
        self._record(orth.detach(), l2.detach())
        loss = base_loss
        if c.lambda_1 > 0 and t > 0:
            loss = loss + c.lambda_1 * orth.to(base_loss.dtype)
        if c.lambda_2 > 0:
            loss = loss + c.lambda_2 * l2.to(base_loss.dtype)
        return loss

    def _record(self, orth: Tensor, l2: Tensor) -> None:
        """Keep the first and last values and the sum (tensors: no device sync per step)."""
        if not self._stats:
            self._stats = {"orth_first": orth, "orth_sum": torch.zeros_like(orth)}
        self._stats.update(orth_last=orth, l2_last=l2, orth_sum=self._stats["orth_sum"] + orth)
        self._steps += 1

    def on_experience_end(self, exp: Experience, model: nn.Module) -> None:
        s = {k: float(v) for k, v in self._stats.items()}
        self._report = {
            "previous_adapters": self.current, "lora_modules": len(self._layers),
            "orth_loss_first": s.get("orth_first", 0.0), "orth_loss_last": s.get("orth_last", 0.0),
            "orth_loss_mean": s.get("orth_sum", 0.0) / max(self._steps, 1), "l2_loss_last": s.get("l2_last", 0.0),
            "delta_norm": delta_norm(self._layers, adapter(self.current)),
        }

    def experience_report(self) -> dict[str, Any]:
        return dict(self._report)

    def state_dict(self) -> dict[str, Any]:
        # "stats"/"steps": the running figures within an experience (resuming mid-experience)
        return {"current": self.current, "report": dict(self._report), "steps": self._steps,
                "stats": {k: float(v) for k, v in self._stats.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = int(state["current"])
        self._report = dict(state["report"])
        self._steps = int(state.get("steps", 0))
        self._stats = {k: torch.tensor(v) for k, v in state.get("stats", {}).items()}
        if self._layers and self.current >= 0:
            self._activate(self.current)  # the adapters of the experiences trained so far

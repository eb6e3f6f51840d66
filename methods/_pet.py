"""Shared parameter-efficient tuning (PET) modules attached to a frozen model by forward hooks.

Every module here is both the holder of its parameters and the hook that applies them, so the
base model's structure and parameter names stay as they are (``model.blocks[0].attn.k_proj`` is
still the plain ``nn.Linear``) and a ``copy.deepcopy`` of the model copies hooks and parameters
together. The modules live in one ``nn.ModuleDict`` that the method attaches to the model root,
so checkpoints, ``.to(device)`` and ``torch.func.functional_call`` see them like any parameter.

- :class:`Adapter`: parallel bottleneck ``s * Up(GELU(Down(x)))`` added to a module's output.
- :class:`LoRA`: ``s * B A x`` added to a Linear's output (``s`` learnable or fixed 1).
- :class:`GatedLoRA`: ``B diag(g) A x`` with a per-rank gate ``g``; mergeable into the Linear.
- :class:`Prefix`: learnable key/value prefixes for an attention whose inputs to the output
  projection are the concatenated heads (the clbench ViT), with optional λ-compensation.

Why not ``peft``: its LoRA has a fixed float scaling (LAE learns a scalar per PET), no per-rank
gate (CoDyRA; AdaLoRA's ``lora_E`` comes with its own rank allocator, ``1/r`` scaling and init),
no parallel bottleneck adapter, and its prefix tuning goes through Hugging Face
``past_key_values`` (no hook into our own ViT, no compensation). ``peft`` replaces modules;
hooks leave them in place. The tests check :class:`GatedLoRA` against ``peft``'s LoRA.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.modules import block_roles, linear_layers, role_patterns, transformer_blocks


def classifier_head(model: nn.Module, num_classes: int) -> tuple[str, nn.Linear] | None:
    """The model's declared ``head`` (the submodule every clbench classifier has) when it is an
    ``nn.Linear`` with ``num_classes`` outputs; otherwise the last ``nn.Linear`` with that many
    outputs (a language model's vocabulary head is not one)."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear) and head.out_features == num_classes:
        return "head", head
    found = [(n, m) for n, m in linear_layers(model) if m.out_features == num_classes]
    return found[-1] if found else None


def attention_of(block: nn.Module, patterns: dict[str, tuple[str, ...]] | None = None
                 ) -> tuple[str, nn.Module] | None:
    """The innermost submodule of ``block`` holding its q, k, v and o projections (roles found
    with ``patterns``, the model's role patterns; default: the built-in ones)."""
    roles = block_roles(block, patterns)
    if not all(r in roles for r in ("q", "k", "v", "o")):
        return None
    parts = [roles[r][0].split(".") for r in ("q", "k", "v", "o")]
    common = os.path.commonprefix(parts)
    name = ".".join(common)
    return name, block.get_submodule(name) if name else block


def first_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """The hidden states a module was called with (positional, or Hugging Face's keyword)."""
    return args[0] if args else kwargs["hidden_states"]  # type: ignore[no-any-return]


def add_to_output(output: Any, delta: Tensor) -> Any:
    """``output + delta`` for a tensor output, or on the first item of a tuple output."""
    if isinstance(output, tuple):
        return (output[0] + delta.to(output[0].dtype), *output[1:])
    return output + delta.to(output.dtype)


def kaiming_(t: Tensor) -> Tensor:
    """``nn.Linear``'s default weight init (kaiming-uniform, a=√5), in place."""
    return nn.init.kaiming_uniform_(t, a=math.sqrt(5))


class _Hooked(nn.Module):
    """A PET module that is also the forward hook applying it; ``active=False`` makes it a no-op."""

    def __init__(self) -> None:
        super().__init__()
        self.active = True
        self._targets: list[nn.Module] = []  # plain list: not submodules; deepcopy remaps them

    def attach(self, target: nn.Module) -> None:
        target.register_forward_hook(self, with_kwargs=True)
        self._targets.append(target)

    def detach(self) -> None:
        """Remove this hook from every target (found by identity, so it works on copies too)."""
        for t in self._targets:
            for hid in [k for k, h in t._forward_hooks.items() if h is self]:
                del t._forward_hooks[hid]
                t._forward_hooks_with_kwargs.pop(hid, None)
        self._targets = []

    @property
    def attached(self) -> bool:
        return bool(self._targets)

    def delta(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        if not self.active:
            return None
        return add_to_output(output, self.delta(first_input(args, kwargs)))


class Adapter(_Hooked):
    """Parallel bottleneck adapter: ``out + s * Up(GELU(Down(x)))`` (Down kaiming, Up zero, s=1)."""

    def __init__(self, d_in: int, d_out: int, hidden: int, learnable_scale: bool = True) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(d_in, hidden), nn.Linear(hidden, d_out)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = nn.Parameter(torch.ones(()), requires_grad=learnable_scale)

    def delta(self, x: Tensor) -> Tensor:
        return self.scale * self.up(F.gelu(self.down(x)))


class LoRA(_Hooked):
    """Low-rank update of a Linear's output: ``out + s * (x A^T) B^T`` (A kaiming, B zero, s=1)."""

    def __init__(self, d_in: int, d_out: int, rank: int, learnable_scale: bool = True) -> None:
        super().__init__()
        self.A = nn.Parameter(kaiming_(torch.empty(rank, d_in)))
        self.B = nn.Parameter(torch.zeros(d_out, rank))
        self.scale = nn.Parameter(torch.ones(()), requires_grad=learnable_scale)

    def delta(self, x: Tensor) -> Tensor:
        return self.scale * (x @ self.A.t() @ self.B.t())


class GatedLoRA(_Hooked):
    """LoRA with a per-rank importance gate: ``out + ((x A^T) * g) B^T``; scaling 1.

    Init as CoDyRA's code: A kaiming-uniform (a=√5), B zero, g standard normal.
    """

    def __init__(self, d_in: int, d_out: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, d_in))
        self.B = nn.Parameter(torch.empty(d_out, rank))
        self.g = nn.Parameter(torch.empty(rank))
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        kaiming_(self.A)
        self.B.zero_()
        self.g.normal_()

    def delta(self, x: Tensor) -> Tensor:
        return ((x @ self.A.t()) * self.g) @ self.B.t()

    def delta_weight(self) -> Tensor:
        """``B diag(g) A`` (d_out, d_in): the update merged into the Linear's weight."""
        return self.B @ (self.g.unsqueeze(1) * self.A)

    def kept(self) -> int:
        """Rank components whose gate is not exactly zero."""
        return int((self.g != 0).sum())

    @torch.no_grad()
    def merge_into(self, linear: nn.Linear) -> None:
        """``W <- W + B diag(g) A`` in the weight's dtype (pruned components add exactly 0)."""
        linear.weight.add_(self.delta_weight().to(linear.weight.dtype))


class Prefix(nn.Module):
    """Key/value prefixes for the clbench ViT attention, applied by hooks (no attention rewrite).

    Hooks capture the q and k projections' outputs; a pre-hook on the output projection turns its
    input, the per-head ``Attn(tokens)``, into ``(1 - λ) Attn(tokens) + λ' Attn(prefix)`` where
    λ is the softmax mass the prefix would take in the joint softmax over [prefix; tokens].
    ``compensatory`` (LAE's code): λ' = 1, i.e. the prefix weights divided by λ; otherwise λ' = λ
    (plain prefix tuning). λ is computed in fp32 from log-sum-exps.
    """

    def __init__(self, dim_q: int, dim_kv: int, heads: int, length: int, compensatory: bool = True,
                 learnable_scale: bool = True) -> None:
        super().__init__()
        self.heads, self.compensatory, self.active = heads, compensatory, True
        self.key = nn.Parameter(torch.rand(length, dim_kv) * 0.01)
        self.value = nn.Parameter(torch.rand(length, dim_kv) * 0.01)
        self.key_scale = nn.Parameter(torch.ones(()), requires_grad=learnable_scale)
        self.value_scale = nn.Parameter(torch.ones(()), requires_grad=learnable_scale)
        self._q: Tensor | None = None
        self._k: Tensor | None = None

    def attach_attention(self, q: nn.Module, k: nn.Module, o: nn.Module) -> None:
        q.register_forward_hook(_Keep(self, "_q"))
        k.register_forward_hook(_Keep(self, "_k"))
        o.register_forward_pre_hook(_Mix(self))

    def mixed(self, ctx: Tensor, q: Tensor, k: Tensor) -> Tensor:
        """The prefixed attention output (b, n, d) from the token-only one and q, k (b, n, d)."""
        b, n, d = ctx.shape
        h = self.heads

        def heads(t: Tensor) -> Tensor:
            return t.reshape(t.shape[0], -1, h, t.shape[-1] // h).transpose(1, 2).float()

        qh, kh = heads(q), heads(k)
        scale = qh.shape[-1] ** -0.5
        pk = heads((self.key * self.key_scale).unsqueeze(0))[0]  # (h, L, hd)
        pv = heads((self.value * self.value_scale).unsqueeze(0))[0]
        lse_tokens = torch.logsumexp(qh @ kh.transpose(-1, -2) * scale, dim=-1)  # (b, h, n)
        p = qh @ pk.transpose(-1, -2) * scale  # (b, h, n, L)
        lam = torch.sigmoid(torch.logsumexp(p, dim=-1) - lse_tokens).unsqueeze(-1)
        prefix = p.softmax(-1) @ pv
        mixed = (1 - lam) * heads(ctx) + (prefix if self.compensatory else lam * prefix)
        return mixed.transpose(1, 2).reshape(b, n, d).to(ctx.dtype)


class _Mix:
    """Forward pre-hook of the output projection: replaces its input by the prefixed attention."""

    def __init__(self, owner: Prefix) -> None:
        self.owner = owner

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> Any:
        o = self.owner
        if not o.active or o._q is None or o._k is None:
            return None
        ctx, q, k = args[0], o._q, o._k
        o._q = o._k = None
        return (o.mixed(ctx, q, k), *args[1:])


class _Keep:
    """Forward hook storing a module's output on its prefix (a class, so deepcopy remaps it)."""

    def __init__(self, owner: Prefix, attr: str) -> None:
        self.owner, self.attr = owner, attr

    def __call__(self, module: nn.Module, args: Any, output: Tensor) -> None:
        if self.owner.active:
            setattr(self.owner, self.attr, output)


def heads_of(attention: nn.Module) -> int | None:
    """Number of query heads of an attention module (clbench ViT ``heads``; HF names)."""
    for attr in ("heads", "num_heads", "num_attention_heads"):
        value = getattr(attention, attr, None)
        if isinstance(value, int):
            return value
    return None


def targets(model: nn.Module, roles: tuple[str, ...], blocks: int = 0,
            exclude: tuple[nn.Module, ...] = ()) -> list[tuple[str, str, nn.Linear]]:
    """(path, role, Linear) with the given roles in the first ``blocks`` transformer blocks (0 = all).

    A model without transformer blocks (an MLP) gives every Linear except ``exclude`` (the head),
    with role ``linear``.
    """
    found = transformer_blocks(model)
    if not found:
        return [(n, "linear", m) for n, m in linear_layers(model) if not any(m is e for e in exclude)]
    out, patterns = [], role_patterns(model)
    for name, block in found[: blocks or len(found)]:
        r = block_roles(block, patterns)
        out += [(f"{name}.{r[role][0]}", role, r[role][1]) for role in roles if role in r]
    return out


def key(name: str) -> str:
    """A module path as a ``ModuleDict`` key (dots are not allowed there)."""
    return name.replace(".", "__")

"""Owns sharded data parallel: PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``) under
``trainer.distributed=fsdp`` in a multi-process launch (``torchrun`` / ``accelerate launch``).

Every parameter is split row-wise (dim 0) across the processes as a ``DTensor``; a forward pass
all-gathers a module's parameters and frees them after use, and the backward pass
reduce-scatters the gradients (their average over processes, as DDP's all-reduce), so each
process holds and steps only its shard of the weights, gradients and optimizer state. The
trainer weights each process's loss by its share of the global batch exactly as under DDP, so
the step equals the one-process step up to float sums.

Sharding units: every submodule whose class a Hugging Face model names in its
``_no_split_modules`` (its transformer blocks), then the whole model (everything else: embeddings,
heads, norms). A model without such a list is one unit.

Methods opt in with ``Method.shardable = True``: those that act only through the loss and the
data (they never read or edit a whole weight or gradient tensor, never copy the model). Every
other method is refused under ``fsdp`` with an error that names the method and suggests ``ddp``.
Checkpoints hold the full (gathered) weights, so a run directory is the same whatever the mode;
mid-experience checkpoints (``trainer.checkpoint_every``) are refused under ``fsdp`` (the
sharded optimizer state is not saved).

Any multi-process launch (``ddp`` or ``fsdp``) refuses ``test_time`` streams at config time
(:func:`check_launch`): their online loop is not sharded.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from clbench.errors import ConfigError, IncompatibleError


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return None
    return DTensor


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    if "torch.distributed.fsdp" not in sys.modules:  # never imported: nothing can be sharded
        return []  # (and importing it to find out costs half a second per run)
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by :func:`shard_model` (its parameters may be gathered at
    the moment, between a forward pass and the next reshard)."""
    return bool(_fsdp_modules(model))


@contextlib.contextmanager
def grad_free(model: nn.Module) -> Iterator[None]:
    """``torch.inference_mode`` for evaluation. For a sharded model ``torch.no_grad`` (FSDP keeps
    the root's gathered weights for the next pass, which inference tensors could not serve),
    and the weights are resharded afterwards."""
    if not is_sharded(model):
        with torch.inference_mode():
            yield
        return
    try:
        with torch.no_grad():
            yield
    finally:
        for m in _fsdp_modules(model):
            m.reshard()  # type: ignore[operator]


def sharding_units(model: nn.Module) -> list[nn.Module]:
    """The submodules sharded as their own unit (transformer blocks), outermost first."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return [m for m in model.modules() if m is not model and type(m).__name__ in names]


def check_launch(scenario_type: str, distributed: str, world: int) -> None:
    """Refuse what a multi-process launch (``world`` > 1) cannot run, before anything is built.

    Raises:
        ConfigError: ``trainer.distributed=none`` (every process would train alone).
        IncompatibleError: a ``test_time`` stream: the online loop adapts on each whole test
            batch in turn and is never split across processes, so every process would repeat
            the same stream (and a shard's batch statistics would not be the batch's).
    """
    if world <= 1:
        return
    if distributed not in ("ddp", "fsdp"):
        raise ConfigError("trainer.distributed", distributed,
                          "ddp or fsdp under a multi-process launch (torchrun / accelerate launch)")
    if scenario_type == "test_time":
        raise IncompatibleError(
            f"test_time streams are not data parallel (trainer.distributed={distributed}, {world} processes): "
            "test-time adaptation runs online on whole test batches in one process; launch it without "
            "torchrun / accelerate launch")


def check_shardable(method_cls: type, distributed: str, checkpoint_every: int, world: int) -> None:
    """Refuse what ``fsdp`` cannot run before anything is built.

    Raises:
        IncompatibleError: a method that reads or edits whole weight/gradient tensors.
        ConfigError: ``trainer.checkpoint_every`` > 0 under ``fsdp``.
    """
    if distributed != "fsdp" or world <= 1:
        return
    name = getattr(method_cls, "registry_name", "") or method_cls.__name__
    if not getattr(method_cls, "shardable", False):
        raise IncompatibleError(
            f"method {name!r} does not run on sharded parameters (trainer.distributed=fsdp): it reads "
            "or edits whole weight or gradient tensors, or copies the model; use trainer.distributed=ddp")
    if checkpoint_every:
        raise ConfigError("trainer.checkpoint_every", checkpoint_every,
                          "0 under trainer.distributed=fsdp (mid-experience checkpoints need ddp or one process)")


def shard_model(model: nn.Module) -> nn.Module:
    """``model`` sharded in place with FSDP2 (its blocks first, then the whole); returned."""
    from torch.distributed.fsdp import fully_shard

    for unit in reversed(sharding_units(model)):  # innermost first
        fully_shard(unit)
    fully_shard(model)
    return model


def model_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict with full tensors (gathered on every process when sharded: every
    process must call it, in the same order)."""
    dt = _dtensor_type()
    if dt is None or not is_sharded(model):
        return model.state_dict()
    for m in _fsdp_modules(model):
        m.reshard()  # type: ignore[operator]
    return {k: (v.full_tensor() if isinstance(v, dt) else v).detach().cpu()  # type: ignore[attr-defined]
            for k, v in model.state_dict().items()}


def load_model_state(model: nn.Module, state: Mapping[str, Any]) -> None:
    """Load a full state dict (from :func:`model_state`) into ``model``, sharded or not."""
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True))

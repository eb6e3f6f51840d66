"""Owns the one training loop: optimizer, steps, clipping, accumulation, device, counters.

The loop is identical for every method; methods act only through their hooks
(:mod:`clbench.protocol`). It counts optimizer steps, samples and wall time the same way for all.

Data parallel (``torchrun --nproc_per_node N -m clbench.cli run ... trainer.distributed=ddp`` or
``accelerate launch``): PyTorch DDP. Every process takes an interleaved shard of each global
batch (``trainer.batch_size`` stays the global batch size) and weights its loss by its share
``n_rank / n_batch`` of the batch times the world size, so DDP's average over processes is the
one-process batch gradient; DDP reduces the gradients in backward, *before*
``on_after_backward``, so gradient-editing methods see the same gradients as in one process and
every replica takes the same step. A process whose shard is empty (a last batch smaller than the
world) joins the reduction with zero gradients. Methods whose gradient hook uses forward-pass
batch statistics sum them with ``sum_across_processes``. ``transform_batch`` applies per shard,
so a method that appends stored samples there adds them to every process's shard (a larger share
than in one process). One process with no group is the CPU/single-GPU path.

Sharded data parallel (``trainer.distributed=fsdp``): the same shards and loss weights; the model
is sharded once for the run by :mod:`clbench.sharding` (FSDP2), which reduce-scatters the
gradients in backward, so there is no wrapper here. Only methods that declare ``shardable`` run.

Training data whose images are stored on disk (:class:`clbench.lazy_images.LazyImages`, a scenario
built with ``scenario.storage=disk``) is fed through a ``torch.utils.data.DataLoader`` with the
workers, pinned memory and persistent workers the split declares (``LazyImages.loading``), one per
experience. Its batches are the in-memory path's: the same permutation and augmentation seed drawn
from the same generator, the same rows, shards and shares, handed to the DataLoader as a list of
index batches; so the two paths train identically. Every other split keeps the in-memory path
(tensors indexed in the training loop, no DataLoader).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from clbench.augment import ImageInputs
from clbench.config import TrainerConfig
from clbench.errors import ConfigError
from clbench.lazy_images import BatchLoader, lazy_images
from clbench.objectives import Objective
from clbench.param_groups import param_groups
from clbench.protocol import Method, trainable
from clbench.schedules import enable_gradient_checkpointing, lr_scheduler, steps_per_experience
from clbench.step_state import ExperienceStats, LossMonitor, restore_step, step_state
from clbench.streams import Batch, Experience, Split


def resolve_device(choice: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA when precision is auto/bf16; a no-op context on CPU/fp32."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_optimizer(params: list[nn.Parameter] | list[dict[str, Any]],
                    cfg: TrainerConfig) -> torch.optim.Optimizer:
    """The default optimizer over ``params`` (trainable parameters, or groups of them)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def task_class_mask(experiences: Sequence[Experience], num_classes: int) -> Tensor:
    """Boolean (n_tasks, num_classes) table: which classes belong to each task id."""
    n_tasks = max(e.task_id for e in experiences) + 1
    table = torch.zeros(n_tasks, num_classes, dtype=torch.bool)
    for e in experiences:
        table[e.task_id, list(e.classes)] = True
    return table


def mask_to_classes(logits: Tensor, classes: Sequence[int]) -> Tensor:
    """Logits outside ``classes`` set to the dtype's lowest value (one task's head)."""
    keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    keep[list(classes)] = True
    return logits.masked_fill(~keep, torch.finfo(logits.dtype).min)


def mask_by_task(logits: Tensor, table: Tensor, task: Tensor) -> Tensor:
    """Task-incremental heads: each sample's logits outside its task's classes set very low."""
    keep = table.to(logits.device)[task]
    return logits.masked_fill(~keep, torch.finfo(logits.dtype).min)


class Trainer:
    """Runs one experience of training for any method through its hooks."""

    def __init__(self, cfg: TrainerConfig, device: torch.device, task_mask: Tensor | None = None,
                 objective: Objective | None = None, inputs: ImageInputs | None = None) -> None:
        self.cfg = cfg
        self.device = device
        self.objective = objective or Objective()
        # task-incremental streams: (n_tasks, n_classes) table; each sample's loss is computed
        # over its own task's classes only (replayed samples keep their task ids)
        self.task_mask = None if task_mask is None else task_mask.to(device)
        self._on_cpu = device.type == "cpu"
        self._share = 1.0  # this process's share of the current global batch (data parallel)
        self._ddp: nn.Module | None = None  # the experience's DDP wrapper (data parallel)
        self._stand_in: Tensor | None = None  # one input of the batch, for a process with an empty shard
        # uint8 image streams: training augmentation + normalisation of each batch (clbench.augment);
        # per batch: the draw's seed, the global batch size and this process's rows of it
        self.inputs = inputs
        self._draw: tuple[int, int, slice | None] = (0, 0, None)
        # a split stored on disk: the running experience's training data and its DataLoader
        self._loader: tuple[Split, BatchLoader] | None = None

    def train_experience(
        self,
        model: nn.Module,
        method: Method,
        exp: Experience,
        seen: Sequence[Experience],
        generator: torch.Generator,
        resume: Mapping[str, Any] | None = None,
        save_step: Callable[[dict[str, Any]], None] | None = None,
        on_step: Callable[[int, Tensor], None] | None = None,
    ) -> ExperienceStats:
        """Train ``model`` on ``exp`` with ``method``; ``generator`` drives shuffling.

        With ``trainer.checkpoint_every`` > 0, ``save_step`` receives the state after every that
        many optimizer steps (:func:`clbench.step_state.step_state`); ``resume`` is such a state: the experience
        then continues from it (after ``on_experience_start`` ran on the same starting model)
        exactly as it would have without the interruption.

        ``on_step`` (optional) is called after every optimizer step with the experience's step
        count so far and the step's loss (mean over its micro-batches, detached, on the device:
        the callback decides whether to read it, a host sync on accelerators). It changes nothing
        in training.
        """
        method.on_experience_start(exp, model)
        data = method.train_data(exp, seen)
        params = trainable(model.parameters())
        opt = (method.optimizer(params, self.cfg)  # a method that is an optimizer: its own groups
               or build_optimizer(param_groups(model, params, self.cfg), self.cfg))
        sched = lr_scheduler(opt, self.cfg, steps_per_experience(len(data), self.cfg))
        if self.cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        opt.zero_grad(set_to_none=True)
        model.train()
        self._ddp = data_parallel(model, params, self.cfg, self.device)
        stats = ExperienceStats()
        losses = LossMonitor(exp.index, self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        first_epoch, first_batch, spent = 0, 0, 0.0
        if resume is not None:
            first_epoch, first_batch, spent = restore_step(resume, model, method, opt, sched, generator, stats, losses)
        start = time.perf_counter() - spent
        total = math.ceil(len(data) / self.cfg.batch_size)
        for epoch in range(first_epoch, self.cfg.epochs):
            epoch_gen = generator.get_state()  # the epoch's order is drawn from it
            skip = first_batch if epoch == first_epoch else 0
            batches: Iterable[Batch] = self._batches(data, exp, generator, skip)
            if self.cfg.progress:
                batches = tqdm(batches, total=total, initial=skip, leave=False, unit="batch", disable=None,
                               desc=f"exp {exp.index} epoch {epoch + 1}/{self.cfg.epochs}")  # off without a TTY
            step_loss: list[Tensor] = []  # the micro-batch losses of the current step (on_step)
            for k, batch in enumerate(batches, skip):
                stats.train_samples += len(batch.y)  # type: ignore[arg-type]
                loss = self._forward_backward(model, method, batch, stats)
                losses.add(loss, k)
                if on_step is not None:
                    step_loss.append(loss)
                if (k + 1) % self.cfg.grad_accum == 0 or k + 1 == total:
                    self._step(model, method, opt, params)
                    if sched is not None:
                        sched.step()
                    stats.optimizer_steps += 1
                    if on_step is not None:
                        on_step(stats.optimizer_steps, torch.stack(step_loss).float().mean())
                        step_loss = []
                    every = self.cfg.checkpoint_every
                    if save_step is not None and every and stats.optimizer_steps % every == 0:
                        at_end = k + 1 == total  # the next epoch's order is not drawn yet
                        save_step(step_state(epoch + 1 if at_end else epoch, 0 if at_end else k + 1,
                                              generator.get_state() if at_end else epoch_gen,
                                              model, method, opt, sched, stats, losses,
                                              time.perf_counter() - start))
            losses.check(total - 1)
        self._ddp = None
        self._loader = None  # its worker processes end with it
        method.on_experience_end(exp, model)
        stats.train_time_s = time.perf_counter() - start
        stats.mean_loss = losses.mean()
        if self.device.type == "cuda":
            stats.peak_cuda_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        return stats

    def _batches(self, data: Split, exp: Experience, gen: torch.Generator, skip: int = 0) -> Iterator[Batch]:
        """The epoch's batches (its order drawn from ``gen``), from batch ``skip`` on."""
        n, bs = len(data), self.cfg.batch_size
        order = torch.randperm(n, generator=gen) if self.cfg.shuffle else torch.arange(n)
        tasks = torch.full((bs,), exp.task_id, dtype=torch.long)
        rank, world = world_info()
        # augmentation draws: one seed per epoch from the same generator (redrawn with the order on
        # resume), then seed + batch index per batch
        seed = int(torch.randint(0, 2**62, (1,), generator=gen)) if self.inputs is not None and self.inputs.augments else 0
        if lazy_images(data.x) is not None:  # images read from disk: the same batches through a DataLoader
            yield from self._loaded_batches(data, exp.task_id, order, seed, skip)
            return
        for i in range(skip * bs, n, bs):
            idx = order[i : i + bs]
            self._draw = (seed + i // bs, len(idx), slice(rank, None, world) if world > 1 else None)
            self._share = 1.0
            if world > 1:  # this process's interleaved shard and its share of the batch mean
                self._share = len(idx[rank::world]) / len(idx)
                self._stand_in = data.x[idx[:1]]
                idx = idx[rank::world]
            batch = Batch(data.x[idx], data.y[idx], tasks[: len(idx)] if data.task is None else data.task[idx])
            yield batch if self._on_cpu else batch.to(self.device, non_blocking=True)

    def _loaded_batches(self, data: Split, task_id: int, order: Tensor, seed: int, skip: int) -> Iterator[Batch]:
        """The batches ``_batches`` makes from ``order`` (the same rows, shards, draws and shares),
        decoded by the experience's DataLoader (:class:`clbench.lazy_images.BatchLoader`, its
        workers and pinned memory as the split declares): a split stored on disk."""
        n, bs = len(data), self.cfg.batch_size
        rank, world = world_info()
        keys, draws = [], []
        for i in range(skip * bs, n, bs):
            idx = order[i : i + bs]
            rows = idx[rank::world] if world > 1 else idx
            keys.append((rows, idx[:1] if world > 1 and len(rows) == 0 else None))  # a stand-in when empty
            share = len(rows) / len(idx) if world > 1 else 1.0
            draws.append(((seed + i // bs, len(idx), slice(rank, None, world) if world > 1 else None), share))
        if self._loader is None or self._loader[0] is not data:
            lazy = lazy_images(data.x)
            assert lazy is not None
            pin = lazy.loading.pin_memory and self.device.type == "cuda"
            self._loader = (data, BatchLoader(_SplitBatches(data, task_id), lazy.loading, pin))
        for (draw, share), (x, y, task, stand_in) in zip(draws, self._loader[1](keys), strict=True):
            self._draw, self._share = draw, share
            if stand_in is not None:
                self._stand_in = stand_in
            batch = Batch(x, y, task)
            yield batch if self._on_cpu else batch.to(self.device, non_blocking=True)

    def _forward_backward(self, model: nn.Module, method: Method, batch: Batch,
                          stats: ExperienceStats) -> Tensor:
        if len(batch) == 0:  # an empty shard (last batch smaller than the world): no gradient
            if world_info()[1] > 1 and self.cfg.distributed in ("ddp", "fsdp"):
                self._join_reduction(model)
            return torch.zeros((), device=self.device)
        batch = self.objective.compact(method.transform_batch(batch))
        if self.inputs is not None and batch.x.dtype == torch.uint8:  # augmented, normalised
            batch = Batch(self.inputs.train(batch.x, self._draw[0], self._draw[1], self._draw[2]), batch.y, batch.task)
        assert batch.y is not None, "training batches carry labels"
        stats.forward_samples += len(batch.y)
        with autocast_for(self.device, self.cfg.precision):
            outputs = (self._ddp or model)(batch.x)
            if self.task_mask is not None and self.objective.class_logits:
                outputs = mask_by_task(outputs, self.task_mask, batch.task)  # type: ignore[arg-type]
            base = self.objective.loss(outputs, batch)
            loss = method.loss(model, batch, outputs, base)
        # DDP and FSDP average gradients over processes: a share-weighted sum is the average times world
        reduced = self.cfg.distributed in ("ddp", "fsdp")
        scale = self._share * (world_info()[1] if reduced else 1) / self.cfg.grad_accum
        (loss if scale == 1.0 else loss * scale).backward()
        return loss.detach()

    def _join_reduction(self, model: nn.Module) -> None:
        """Take part in the DDP/FSDP gradient reduction with zero gradients: a forward pass on one input
        of the global batch in eval mode (no batch-norm update, no dropout, no training-mode
        hooks), its output times 0."""
        assert self._stand_in is not None
        model.eval()
        try:
            x = self._stand_in if self._on_cpu else self._stand_in.to(self.device)
            out = (self._ddp or model)(x)
            (out.float().sum() * 0.0).backward()
        finally:
            model.train()

    def _step(self, model: nn.Module, method: Method, opt: torch.optim.Optimizer,
              params: list[nn.Parameter]) -> None:
        method.on_after_backward(model)  # under DDP the gradients are already reduced
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.on_after_step(model)


class _SplitBatches(torch.utils.data.Dataset[tuple[Tensor, Tensor, Tensor, Tensor | None]]):
    """A training split whose items are whole batches: (rows, stand-in rows or None) -> (inputs,
    labels, task ids, the stand-in's input or None), as the in-memory path of ``Trainer._batches``
    makes them."""

    def __init__(self, data: Split, task_id: int) -> None:
        self.data, self.task_id = data, task_id

    def __getitem__(self, key: tuple[Tensor, Tensor | None]) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        rows, stand_in = key
        d = self.data
        task = torch.full((len(rows),), self.task_id, dtype=torch.long) if d.task is None else d.task[rows]
        return d.x[rows], d.y[rows], task, None if stand_in is None else d.x[stand_in]


def world_info() -> tuple[int, int]:
    """(rank, world size) of the running process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_across_processes(t: Tensor) -> Tensor:
    """In-place sum of ``t`` over data-parallel processes (no-op in one process).

    For methods whose gradient hook depends on batch statistics gathered in the forward pass:
    summing them makes every replica decide from the whole global batch, as one process would.
    """
    if world_info()[1] > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def data_parallel(model: nn.Module, params: list[nn.Parameter], cfg: TrainerConfig,
                  device: torch.device) -> nn.Module | None:
    """The experience's PyTorch DDP wrapper of ``model`` in a multi-process launch (None in one
    process). Every parameter trainable at the experience's start takes part in the reduction,
    also those a method freezes for a while (``find_unused_parameters``); buffers follow rank 0.

    Raises:
        ConfigError: several processes but ``trainer.distributed=none``.
    """
    if world_info()[1] == 1 or cfg.distributed == "fsdp":  # FSDP: the sharded model reduces itself
        return None
    if cfg.distributed != "ddp":
        raise ConfigError("trainer.distributed", cfg.distributed,
                          "ddp or fsdp under a multi-process launch (torchrun / accelerate launch)")
    from torch.nn.parallel import DistributedDataParallel

    frozen = [p for p in params if not p.requires_grad]
    for p in frozen:  # registered with the reducer although frozen right now
        p.requires_grad_(True)
    try:
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=True)
    finally:
        for p in frozen:
            p.requires_grad_(False)

"""Language-model training throughput (``make perf``): clbench's trainer vs a plain loop.

Measured side by side in one process on the same packed batches: the first task of the Standard
CL benchmark (order 1) in generation mode, tokenised for SmolLM2 (``max_length`` tokens per
example, answer-token loss), the same causal LM from identical initial weights, AdamW at the
same learning rate, the same batch size, one epoch:

- ``plain``: the loop anyone would write (randperm from a generator seeded 0, slice the packed
  inputs, forward, the same answer-token loss, backward, AdamW step);
- ``clbench``: ``Trainer.train_experience`` with the ``naive`` method (progress bar off), which
  also trims padding columns no row uses before the forward pass.

tokens/s counts every position of the packed inputs handed to the model, padding included, in
both runners (the same count for both, so the ratio is a ratio of times). Each runner is warmed up
once, then timed for several rounds interleaved (plain, clbench, plain, ...); the median is
reported. A report: the exit status is 0 whatever the numbers; a missed target prints
``BELOW TARGET``. GPU (CUDA): the same comparison in bf16 autocast when run there; model FLOPs
utilisation is printed only on CUDA (6 x parameters x tokens/s over the device's peak, given with
``--peak-tflops``).

Usage: ``python tests/perf/perf_lm.py [--tiny] [--steps N] [--rounds N] [--threads N]``.
``--tiny``: a random-config tiny Llama instead of SmolLM2-135M (seconds; the code path only).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from clbench.config import TrainerConfig, build_run_config
from clbench.hf import SMOLLM2_ID
from clbench.models import build_model
from clbench.resolve import resolve
from clbench.streams import Batch, Experience
from clbench.trainer import Trainer, autocast_for
from methods.naive import Naive

LR = 1e-4
TARGET = 0.95  # minimum clbench / plain tokens/s
Runner = Callable[[nn.Module], None]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="random tiny Llama (code path only)")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per timed round")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per runner (median)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (pinned)")
    p.add_argument("--peak-tflops", type=float, default=None, help="CUDA: the device's bf16 peak, for MFU")
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[Any, Experience, nn.Module]:
    """The run config, the first experience cut to ``steps`` batches, and the initial model."""
    cfg = build_run_config({
        "method": "naive", "scenario": "text_cl", "scenario.benchmark": "standard", "scenario.order": 1,
        "scenario.mode": "generation", "scenario.tokenizer": SMOLLM2_ID,
        "scenario.max_length": args.max_length, "scenario.max_train_per_task": args.steps * args.batch_size,
        "scenario.max_test_per_task": 8, "model": "hf_causal_lm", "model.tiny": args.tiny,
        "trainer.batch_size": args.batch_size, "trainer.lr": LR, "trainer.optimizer": "adamw",
        "trainer.weight_decay": 0.0, "trainer.progress": False, "eval.lm_eval_tasks": [],
        "tracking.mlflow": False})
    stream = resolve(cfg).scenario.build()
    exp = stream.experiences[0]
    torch.manual_seed(0)
    model, _ = build_model(cfg.model, stream.info(), dict(cfg.model_options))
    return cfg, exp, model


def plain_runner(cfg: Any, exp: Experience, objective: Any, device: torch.device) -> Runner:
    x, y = exp.train.x, exp.train.y
    bs = cfg.trainer.batch_size

    def run(model: nn.Module) -> None:
        gen = torch.Generator().manual_seed(0)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), bs):
            idx = perm[i:i + bs]
            xb = x[idx].to(device)
            with autocast_for(device, cfg.trainer.precision):
                loss = objective.loss(model(xb), Batch(xb, y[idx].to(device)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def clbench_runner(cfg: Any, exp: Experience, objective: Any, device: torch.device) -> Runner:
    tcfg = TrainerConfig(**{**vars(cfg.trainer), "epochs": 1, "progress": False})

    def run(model: nn.Module) -> None:
        trainer, method = Trainer(tcfg, device, None, objective), Naive()
        method.objective = objective
        trainer.train_experience(model, method, exp, [exp], torch.Generator().manual_seed(0))

    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    cfg, exp, init = build(args)
    objective = resolve(cfg).scenario.build().objective
    init = init.to(device)
    runners = {"plain": plain_runner(cfg, exp, objective, device),
               "clbench": clbench_runner(cfg, exp, objective, device)}
    n = len(exp.train)
    tokens = n * exp.train.x.shape[-1]
    params = sum(p.numel() for p in init.parameters())
    print("# clbench language-model training throughput\n")
    print(f"device: {device}; torch threads: {args.threads}; torch {torch.__version__}; model: "
          f"{'tiny random Llama' if args.tiny else SMOLLM2_ID} ({params / 1e6:.1f} M parameters); "
          f"stream: text_cl standard order 1, first task, generation mode; {n} examples x "
          f"{exp.train.x.shape[-1]} tokens, batch {args.batch_size}, {-(-n // args.batch_size)} AdamW "
          f"steps per round; precision {cfg.trainer.precision}; timed rounds (median): {args.rounds}\n")
    times: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, run in runners.items():
            model = copy.deepcopy(init)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run(model)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r:
                times[name].append(time.perf_counter() - start)
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    print("| runner | tokens/s (median) | seconds per round (all rounds) |")
    print("|---|---:|---|")
    for k in runners:
        print(f"| {k} | {rate[k]:,.0f} | {', '.join(f'{t:.2f}' for t in times[k])} |")
    ratio = rate["clbench"] / rate["plain"]
    print(f"\nclbench naive / plain loop: {ratio:.2f}x (target >= {TARGET:.2f})"
          f"{'' if ratio >= TARGET else '  BELOW TARGET'}")
    if device.type == "cuda" and args.peak_tflops:
        print(f"model FLOPs utilisation (6 N tokens/s / peak): clbench "
              f"{6 * params * rate['clbench'] / (args.peak_tflops * 1e12):.1%}, plain "
              f"{6 * params * rate['plain'] / (args.peak_tflops * 1e12):.1%}")
    print(f"\ntotal benchmark time: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

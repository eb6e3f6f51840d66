"""Owns ``make gpu-check``: a short end-to-end check of the language-model path on an accelerator.

For each method named on the command line it trains SmolLM2-135M-Instruct in generation mode on a
few tasks of the Standard CL benchmark (bf16 autocast on CUDA) for a few hundred optimizer steps,
then checks that the trained model's loss on the last task's training data is below the untrained
model's and that R is filled with finite numbers, and prints tokens/s, peak CUDA memory and the ratio of
clbench's tokens/s to a plain Hugging Face training loop (AdamW, the same batches, the same
precision); tokens/s counts every position of the packed inputs (padding included) in both.
``--tiny`` swaps in a random-config tiny Llama and a handful of steps, so the same
code runs on a CPU (tested); the real check needs a GPU and the offline SmolLM2 asset.

    python -m clbench.gpu_check --methods <m1> <m2> ... [--steps 300] [--tiny]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from clbench.hf import SMOLLM2_ID


@dataclass(frozen=True)
class CheckRow:
    """One method's figures."""

    method: str
    loss_before: float
    loss_after: float
    r_filled: bool
    tokens_per_s: float
    peak_cuda_mb: float | None

    @property
    def passed(self) -> bool:
        return self.r_filled and self.loss_after < self.loss_before


def run_values(method: str, steps: int, tiny: bool, runs_dir: str) -> dict[str, Any]:
    """The run settings of one method's check: about ``steps`` optimizer steps over the 4 tasks."""
    per_task = max(8, steps * 8 // 4)  # batch 8, one epoch, 4 tasks (order 1)
    return {"method": method, "scenario": "text_cl", "scenario.benchmark": "standard", "scenario.order": 1,
            "scenario.mode": "generation", "scenario.tokenizer": SMOLLM2_ID, "scenario.max_length": 128,
            "scenario.max_train_per_task": per_task,
            "scenario.max_test_per_task": 16, "model": "hf_causal_lm", "model.tiny": tiny,
            "trainer.epochs": 1, "trainer.batch_size": 8, "trainer.lr": 1e-4, "trainer.optimizer": "adamw",
            "trainer.precision": "auto", "eval.lm_eval_tasks": [], "eval.validation": False,
            "tracking.mlflow": False, "tracking.runs_dir": runs_dir, "trainer.progress": False}


def check_method(method: str, steps: int, tiny: bool, runs_dir: str) -> CheckRow:
    from clbench.checkpoint import load_checkpoint
    from clbench.config import build_run_config
    from clbench.resolve import run_dir_for
    from clbench.runner import run

    cfg = build_run_config(run_values(method, steps, tiny, runs_dir))
    before = last_task_loss(cfg, None)
    rec = run(cfg, force=True)
    ckpt = load_checkpoint(run_dir_for(cfg))
    after = last_task_loss(cfg, ckpt["model"] if ckpt else None)
    per = rec.per_experience
    tokens = sum(p.train_samples for p in per) * int(cfg.scenario_options["max_length"])
    peaks = [p.peak_cuda_mb for p in per if p.peak_cuda_mb is not None]
    filled = bool(rec.R) and all(math.isfinite(v) for row in rec.R for v in row)
    return CheckRow(method, before, after, filled,
                    tokens / max(sum(p.train_time_s for p in per), 1e-9), max(peaks) if peaks else None)


def last_task_loss(cfg: Any, state: dict[str, Any] | None) -> float:
    """The answer-token loss on the last experience's training data (up to 32 examples) of the
    untrained model, or of the model holding ``state`` (the trained weights)."""
    from clbench.models import build_model
    from clbench.resolve import resolve, seed_everything
    from clbench.streams import Batch

    res = resolve(cfg)
    stream = res.scenario.build()
    seed_everything(cfg.seed)
    model, _ = build_model(cfg.model, stream.info(), dict(cfg.model_options))
    if state is not None:
        model.load_state_dict(state, strict=False)  # a method may have added modules (adapters)
    split = stream.experiences[-1].train
    with torch.inference_mode():
        batch = Batch(split.x[:32], split.y[:32])
        return float(stream.objective.loss(model(batch.x), batch))


def plain_loop_tokens_per_s(cfg: Any, steps: int) -> float:
    """tokens/s of a plain loop (forward, answer-token loss, backward, AdamW step) over the same
    packed batches, on the same device and precision, without clbench's trainer."""
    from clbench.models import build_model
    from clbench.resolve import resolve
    from clbench.trainer import autocast_for, resolve_device

    res = resolve(cfg)
    stream = res.scenario.build()
    device = resolve_device(cfg.trainer.device)
    model = build_model(cfg.model, stream.info(), dict(cfg.model_options))[0].to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.trainer.lr)
    x = stream.experiences[0].train.x
    bs, n = cfg.trainer.batch_size, 0
    from clbench.streams import Batch

    start = time.perf_counter()
    for i in range(min(steps, math.ceil(len(x) / bs))):
        xb = x[i * bs:(i + 1) * bs].to(device)
        with autocast_for(device, cfg.trainer.precision):
            loss = stream.objective.loss(model(xb), Batch(xb, torch.zeros(len(xb), dtype=torch.long)))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n += xb.shape[0] * xb.shape[-1]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / max(time.perf_counter() - start, 1e-9)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clbench.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--tiny", action="store_true", help="random tiny Llama, a few steps: runs on a CPU")
    ap.add_argument("--runs-dir", default="runs/gpu_check")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        print("gpu-check: no CUDA device here; the GPU path stays untested (use --tiny for the CPU smoke run)")
        return 2
    from clbench.config import build_run_config

    rows = [check_method(m, args.steps, args.tiny, args.runs_dir) for m in args.methods]
    plain = plain_loop_tokens_per_s(build_run_config(run_values(args.methods[0], args.steps, args.tiny,
                                                                args.runs_dir)), args.steps)
    print(f"device {device}; plain Hugging Face loop {plain:.0f} tokens/s")
    print("| method | loss before -> after | R filled | tokens/s | vs plain loop | peak CUDA MB | result |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        peak = "-" if r.peak_cuda_mb is None else f"{r.peak_cuda_mb:.0f}"
        print(f"| {r.method} | {r.loss_before:.3f} -> {r.loss_after:.3f} | {r.r_filled} | {r.tokens_per_s:.0f} | "
              f"{r.tokens_per_s / plain:.2f}x | {peak} | {'pass' if r.passed else 'FAIL'} |")
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-training-step cost of every registered method relative to ``naive`` (part of ``make perf``).

Same model (the ``vit_tiny`` foundation architecture, same initial weights), same stream
(``rotated_mnist_ft``), same batches, same optimizer (AdamW). Each method first trains on a slice
of experience 0 (so penalties, masks and memories are active), then the timed part trains on a
fixed slice of experience 1. Rounds are interleaved (naive, a, b, ..., naive, a, b, ...) and the
median per-step time is reported, so machine noise hits every method alike.

    .venv/bin/python tests/perf/perf_methods.py [--rounds 5] [--samples 640] [--methods hft ssu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import replace

import torch

from clbench.config import TrainerConfig
from clbench.protocol import Method
from clbench.registry import METHODS, SCENARIOS
from clbench.streams import Experience, Split, Stream
from clbench.trainer import Trainer
from clbench.vit import ViT

# issue targets: per-step time relative to naive (upper bounds)
# (lae's and dynamic_rank_lora's targets are against a single PET / plain LoRA: perf_pet.py)
TARGETS = {"hft": 0.8, "ssu": 1.15, "migu": 1.15, "classp": 1.15}


def _slice(exp: Experience, n: int) -> Experience:
    return replace(exp, train=Split(exp.train.x[:n], exp.train.y[:n]))


def _prepared(name: str, stream: Stream, base: torch.nn.Module, cfg: TrainerConfig,
              warm: Experience) -> tuple[Method, torch.nn.Module]:
    """A method and model that have been through experience 0 (untimed)."""
    method = METHODS.get(name)()
    model = method.setup(copy.deepcopy(base), stream.info())
    if method.needs_source_data and stream.source is not None:
        method.on_source_data(model, Split(stream.source.train.x[:256], stream.source.train.y[:256]))
    Trainer(cfg, torch.device("cpu")).train_experience(model, method, warm, [warm], torch.Generator().manual_seed(0))
    return method, model


def _timed(method: Method, model: torch.nn.Module, exp: Experience, seen: list[Experience],
           cfg: TrainerConfig) -> float:
    """Seconds per optimizer step on ``exp`` (train_experience includes the hooks' own work)."""
    trainer = Trainer(cfg, torch.device("cpu"))
    start = time.perf_counter()
    stats = trainer.train_experience(model, method, exp, seen, torch.Generator().manual_seed(1))
    return (time.perf_counter() - start) / stats.optimizer_steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--samples", type=int, default=640, help="timed training samples per round")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--methods", nargs="*", default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    stream = SCENARIOS.get("rotated_mnist_ft")().build()
    torch.manual_seed(0)
    base = ViT(stream.info())
    cfg = TrainerConfig(epochs=1, batch_size=args.batch_size, lr=1e-3, optimizer="adamw",
                        weight_decay=0.01, progress=False)
    warm, timed = _slice(stream.experiences[0], 256), _slice(stream.experiences[1], args.samples)
    names = args.methods or METHODS.names()
    names = ["naive"] + [n for n in names if n != "naive"]
    times: dict[str, list[float]] = {n: [] for n in names}
    skipped: dict[str, str] = {}
    for _ in range(args.rounds):
        for name in names:
            if name in skipped:
                continue
            try:
                method, model = _prepared(name, stream, base, cfg, warm)
                times[name].append(_timed(method, model, timed, [warm, timed], cfg))
            except Exception as exc:  # noqa: BLE001 - a report, not a test
                skipped[name] = f"{type(exc).__name__}: {exc}"
    _report(times, skipped, args, torch.get_num_threads())


def _report(times: dict[str, list[float]], skipped: dict[str, str], args: argparse.Namespace,
            threads: int) -> None:
    print(f"per-step cost vs naive: vit_tiny on rotated_mnist_ft, AdamW, batch {args.batch_size}, "
          f"{args.samples} timed samples, median of {args.rounds} interleaved rounds, "
          f"{threads} torch threads\n")
    naive = statistics.median(times["naive"])
    print("| method | ms / step | × naive | target |")
    print("|---|---:|---:|---|")
    for name, ts in times.items():
        if name in skipped or not ts:
            continue
        ratio = statistics.median(ts) / naive
        target = TARGETS.get(name)
        verdict = "" if target is None else (f"≤ {target} ok" if ratio <= target else f"≤ {target} OVER BUDGET")
        print(f"| {name} | {1000 * statistics.median(ts):.2f} | {ratio:.2f} | {verdict} |")
    for name, why in skipped.items():
        print(f"\nskipped {name}: {why}")


if __name__ == "__main__":
    main()

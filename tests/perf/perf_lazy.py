"""Images read from disk (``make perf``): clbench's trainer through its DataLoader vs a plain loop.

A synthetic CORe50 folder (``core50_128x128/s<session>/o<object>/*.png``, random 128 px images,
written to a temporary folder) is built as the ``core50`` NI stream (8 training sessions = 8
experiences) with ``scenario.storage=disk`` at ``--size`` px; the MLP, SGD lr 0.01 momentum 0.9,
batch 32, 1 epoch per experience, a padded random crop and flip on each batch. Timed:

- ``plain loop``: a hand-written loop over the same batches (the trainer's permutation and
  augmentation seeds from the same generator), each decoded in the training process by indexing
  the split (``x[idx]``, :class:`clbench.lazy_images.LazyImages`), then ``ImageInputs.train``;
- ``clbench w=0`` / ``clbench w=N``: ``Trainer.train_experience`` with the ``naive`` method on the
  same stream, through its DataLoader with 0 and ``--workers`` decoding processes;
- ``clbench memory``: the same stream with ``storage=memory`` (decoded once at build, not timed):
  what decoding on every epoch costs.

Every runner computes the same thing: the weights after training are compared first (``parity``,
0 expected). Interleaved rounds after one warm-up, median reported; a report, exit status 0
whatever the numbers (``BELOW TARGET`` flags a clbench w=0 / plain ratio under 0.95).

Usage: ``python tests/perf/perf_lazy.py [--rounds N] [--threads N] [--workers N] [--objects N]
[--frames N] [--size PX]`` (``--objects 2 --frames 2 --rounds 1``: a quick check that it runs).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clbench.augment import attach
from clbench.config import TrainerConfig
from clbench.models import MLP
from clbench.options import build_dataclass
from clbench.streams import Stream
from clbench.trainer import Trainer
from methods.naive import Naive
from scenarios.core50 import CORe50

LR, MOMENTUM, BS = 0.01, 0.9, 32
TARGET = 0.95


def write_folder(root: Path, objects: int, frames: int) -> None:
    """11 sessions x ``objects`` objects x ``frames`` random 128 px PNG frames."""
    rng = np.random.default_rng(0)
    for s in range(1, 12):
        for o in range(1, objects + 1):
            folder = root / "core50_128x128" / f"s{s}" / f"o{o}"
            folder.mkdir(parents=True)
            for f in range(frames):
                img = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
                Image.fromarray(img).save(folder / f"C_{s:02d}_{o:02d}_{f:03d}.png")


def build(root: Path, objects: int, size: int, **options: Any) -> Stream:
    opts = {"root": str(root), "n_classes": objects, "image_size": size, "crop_padding": 4, **options}
    return CORe50(build_dataclass(CORe50.Config, opts, "scenario")).build()


def plain(stream: Stream) -> Callable[[nn.Module], None]:
    inputs = stream.inputs
    assert inputs is not None

    def run(model: nn.Module) -> None:
        gen = torch.Generator().manual_seed(0)
        model.train()
        for exp in stream.experiences:
            x, y = exp.train.x, exp.train.y
            opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
            perm = torch.randperm(len(y), generator=gen)
            seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            for k, i in enumerate(range(0, len(y), BS)):
                idx = perm[i:i + BS]
                loss = F.cross_entropy(model(inputs.train(x[idx], seed + k, len(idx))), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    return run


def clbench(stream: Stream) -> Callable[[nn.Module], None]:
    def run(model: nn.Module) -> None:
        cfg = TrainerConfig(epochs=1, batch_size=BS, lr=LR, optimizer="sgd", momentum=MOMENTUM,
                            device="cpu", precision="fp32", progress=False)
        trainer, gen = Trainer(cfg, torch.device("cpu"), inputs=stream.inputs), torch.Generator().manual_seed(0)
        exps = stream.experiences
        for i, exp in enumerate(exps):
            trainer.train_experience(model, Naive(), exp, exps[: i + 1], gen)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the second clbench row")
    ap.add_argument("--objects", type=int, default=10, help="objects (classes) of the synthetic folder")
    ap.add_argument("--frames", type=int, default=20, help="frames per session and object")
    ap.add_argument("--size", type=int, default=64, help="image side the stream decodes to")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root, args.objects, args.frames)
        disk = build(root, args.objects, args.size, storage="disk")
        pooled = build(root, args.objects, args.size, storage="disk", workers=args.workers)
        memory = build(root, args.objects, args.size)
        torch.manual_seed(0)
        init = attach(MLP(disk.info()), disk.inputs)
        samples = sum(len(e.train) for e in disk.experiences)
        w_name = f"clbench w={args.workers}"
        runners = {"plain loop": plain(disk), "clbench w=0": clbench(disk), w_name: clbench(pooled),
                   "clbench memory": clbench(memory)}
        weights = {}
        for name, run in runners.items():  # also the warm-up
            m = copy.deepcopy(init)
            run(m)
            weights[name] = m
        for name in list(runners)[1:]:
            with torch.no_grad():
                diff = max(float((p - q).abs().max()) for p, q in zip(weights["plain loop"].parameters(),
                                                                      weights[name].parameters(), strict=True))
            print(f"parity ({name}): max |w - w_plain| = {diff:.2e}")
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                m = copy.deepcopy(init)
                t0 = time.perf_counter()
                run(m)
                times[name].append(time.perf_counter() - t0)
    rate = {k: samples / statistics.median(v) for k, v in times.items()}
    print(f"\n# core50 NI from a synthetic folder ({args.objects} objects x {args.frames} frames per session, "
          f"128 px PNG decoded to {args.size} px), MLP, batch {BS}, 1 epoch x 8 experiences, torch threads "
          f"{args.threads}, {args.rounds} interleaved rounds (median)\n")
    print("| path | samples/s | / plain loop |")
    print("|---|---:|---:|")
    base = rate["plain loop"]
    for name, r in rate.items():
        flag = "  BELOW TARGET" if name == "clbench w=0" and r / base < TARGET else ""
        print(f"| {name} | {r:,.0f} | {r / base:.2f}x{flag} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

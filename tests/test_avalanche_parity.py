"""Parity of clbench's baselines with Avalanche 0.6 strategies on the real split-digits stream.

Both sides start from the same initial weights, train with plain SGD (same lr, epochs, batch
size) on the same data in the same order (``trainer.shuffle=false`` here, ``shuffle=False`` in
Avalanche's ``train`` call, which forwards it to ``make_train_dataloader``/``ReplayDataLoader``;
``drop_last`` is False on both sides), and R is computed from the trained models. Momentum is 0:
clbench builds a fresh optimizer per experience while Avalanche 0.6's ``make_optimizer`` keeps
the optimizer state (momentum buffers) across experiences.

Every comparison below is exact: the same R, and final parameters equal within 1e-6 (they are
bitwise equal on CPU when written: max |diff| = 0.0) -- the baselines reproduce Avalanche's
arithmetic, not just its accuracy. Replay is exact because the memory is visited in stored order
(``shuffle_memory=false``, as Avalanche under ``shuffle=False``) and both buffers draw their
reservoir weights from the same global RNG state (see ``SameRng``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from clbench.checkpoint import load_checkpoint
from clbench.models import build_model
from clbench.registry import SCENARIOS
from clbench.runner import derive_seed, run, run_dir_for, seed_everything
from clbench.streams import Stream
from clbench.testing import tiny_config

LR, EPOCHS, BS, SEED = 0.1, 4, 32, 0


@pytest.fixture(scope="module")
def stream() -> Stream:
    stream: Stream = SCENARIOS.get("split_digits")().build()
    return stream


Result = tuple[list[list[float]], dict[str, torch.Tensor]]  # R, final model state


def _clbench(tmp: Path, method: str, options: dict[str, Any]) -> Result:
    """R and the final model state of a clbench run on split_digits (CPU, no shuffling)."""
    overrides = {"scenario": "split_digits", "trainer.shuffle": False, "trainer.device": "cpu",
                 "trainer.epochs": EPOCHS, "trainer.batch_size": BS, "trainer.lr": LR,
                 "trainer.momentum": 0.0, "eval.validation": False, "seed": SEED,
                 **{f"method.{k}": v for k, v in options.items()}}
    cfg = tiny_config(tmp, method, **overrides)
    res = run(cfg)
    ckpt = load_checkpoint(run_dir_for(cfg))
    assert ckpt is not None
    return res.R, ckpt["model"]


def _initial_model(stream: Stream, tmp: Path) -> nn.Module:
    """The model clbench's runner builds for the same config (same seed, same init)."""
    cfg = tiny_config(tmp, "naive")
    seed_everything(SEED)
    model, _ = build_model(cfg.model, stream.info(), dict(cfg.model_options))
    return model


@torch.inference_mode()
def _row(model: nn.Module, stream: Stream) -> list[float]:
    model.eval()
    accs = [int((model(e.test.x).argmax(-1) == e.test.y).sum()) / len(e.test)
            for e in stream.experiences]
    model.train()
    return accs


def _avalanche(stream: Stream, model: nn.Module, strategy_cls: Any, plugins: list[Any] | None = None,
               **kwargs: Any) -> list[list[float]]:
    """Train ``strategy_cls`` over ``stream`` without shuffling; R from our accuracy loop."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensors
    from avalanche.training.plugins import EvaluationPlugin

    bm = benchmark_from_datasets(
        train=[tensors(e.train.x, e.train.y, task_labels=e.task_id) for e in stream.experiences])
    R = []
    # Avalanche warns "No loggers specified" (intended: R is ours) and about its own deprecated
    # internals (it resets the warning filters itself, so only recording silences them).
    with warnings.catch_warnings(record=True):
        strategy = strategy_cls(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR),
                                criterion=nn.CrossEntropyLoss(), train_mb_size=BS,
                                train_epochs=EPOCHS, device="cpu", plugins=plugins,
                                evaluator=EvaluationPlugin(loggers=[]), **kwargs)
        for exp in bm.train_stream:
            strategy.train(exp, eval_streams=[], shuffle=False, num_workers=0)
            R.append(_row(model, stream))
    return R


def _assert_same(ours: Result, theirs_R: list[list[float]], theirs: nn.Module) -> None:
    R, state = ours
    assert R == theirs_R
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=1e-6)
    assert sum(R[i][i] for i in range(len(R))) / len(R) > 0.5  # it learned (sanity, not parity)


def test_naive_matches_avalanche_naive(stream: Stream, tmp_path: Path) -> None:
    from avalanche.training.supervised import Naive

    model = _initial_model(stream, tmp_path)
    _assert_same(_clbench(tmp_path, "naive", {}), _avalanche(stream, model, Naive), model)


def test_joint_without_reset_matches_avalanche_cumulative(stream: Stream, tmp_path: Path) -> None:
    from avalanche.training.supervised import Cumulative

    model = _initial_model(stream, tmp_path)
    ours = _clbench(tmp_path, "joint", {"reset": False})
    _assert_same(ours, _avalanche(stream, model, Cumulative), model)


@pytest.mark.parametrize(("mode", "decay"), [("separate", 1.0), ("online", 0.5)])
def test_ewc_matches_avalanche_ewc(stream: Stream, tmp_path: Path, mode: str, decay: float) -> None:
    from avalanche.training.supervised import EWC

    model = _initial_model(stream, tmp_path)
    ours = _clbench(tmp_path, "ewc", {"ewc_lambda": 10.0, "mode": mode, "decay_factor": decay})
    theirs = _avalanche(stream, model, EWC, ewc_lambda=10.0, mode=mode,
                        decay_factor=decay if mode == "online" else None)
    _assert_same(ours, theirs, model)


def test_lwf_matches_avalanche_lwf(stream: Stream, tmp_path: Path) -> None:
    from avalanche.training.supervised import LwF

    alpha = [0.0, 0.5, 1.0, 1.5, 2.0]
    model = _initial_model(stream, tmp_path)
    ours = _clbench(tmp_path, "lwf", {"alpha": alpha, "temperature": 2.0})
    _assert_same(ours, _avalanche(stream, model, LwF, alpha=alpha, temperature=2.0), model)


@pytest.mark.parametrize("storage", ["reservoir", "class_balanced", "experience_balanced"])
def test_replay_matches_avalanche_replay_plugin(stream: Stream, tmp_path: Path, storage: str) -> None:
    from avalanche.core import SupervisedPlugin
    from avalanche.training import storage_policy as sp
    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.supervised import Naive

    class SameRng(SupervisedPlugin):  # type: ignore[misc]
        """clbench's runner seeds the global RNG at each experience start and nothing draws from
        it until the buffer update; Avalanche's DataLoaders do draw from it, so re-seed before
        the ReplayPlugin's update (plugins run in list order) to give both the same weights."""

        def __init__(self) -> None:
            super().__init__()
            self.i = 0

        def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
            torch.manual_seed(derive_seed(SEED, self.i))
            self.i += 1

    mem = 50
    policy = {"reservoir": sp.ReservoirSamplingBuffer(mem),
              "class_balanced": sp.ClassBalancedBuffer(mem),
              "experience_balanced": sp.ExperienceBalancedBuffer(mem)}[storage]
    model = _initial_model(stream, tmp_path)
    # shuffle_memory=False: the memory is visited in stored order, as Avalanche's ReplayDataLoader
    # does under shuffle=False (with shuffling both sides draw different permutations).
    ours = _clbench(tmp_path, "replay", {"mem_size": mem, "storage": storage, "shuffle_memory": False})
    theirs = _avalanche(stream, model, Naive, [SameRng(), ReplayPlugin(mem, storage_policy=policy)])
    _assert_same(ours, theirs, model)

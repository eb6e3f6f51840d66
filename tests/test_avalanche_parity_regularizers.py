"""Parity of clbench's MAS and iCaRL with Avalanche 0.6 on the real split-digits stream.

Same set-up as ``tests/test_avalanche_parity.py`` (whose fixtures and helpers this file reuses):
same initial weights, plain SGD without momentum, same data in the same order (no shuffling),
R computed from the trained models. Every comparison is exact: the same R, final parameters
within 1e-6 (bitwise equal on CPU when written: max |diff| = 0.0), and the method's own state
(MAS importances; iCaRL exemplars and class means) equal to Avalanche's.

What cannot be matched, and why:
    - MAS with a large ``lambda_reg`` and ``alpha=0`` (e.g. 1.0 and 0) stops Avalanche's run:
      ``MASPlugin.before_backward`` raises ``ValueError("Loss is not available")`` when a batch's
      loss is exactly 0.0 (it tests ``not strategy.loss``), which a batch fit perfectly reaches
      in float32. The strengths below are ones where Avalanche runs through (and with
      ``trainer.lr=0.1`` a much larger strength diverges on both sides anyway).
    - iCaRL's NME differs from Avalanche's only where Avalanche would predict a class without
      exemplars (a zero mean, at distance 1 from every normalised feature); it never does on
      this stream (R is equal, the untrained experiences' columns included).
    - Avalanche cannot evaluate iCaRL before training (no class means), so only R after each
      experience is compared (as for every method here).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import test_avalanche_parity as parity
import torch
from test_avalanche_parity import (
    BS,
    EPOCHS,
    LR,
    _assert_same,
    _avalanche,
    _clbench,
    _initial_model,
    _row,
)

from clbench.checkpoint import load_checkpoint
from clbench.streams import Stream

stream = parity.stream  # the module-scoped split-digits fixture, shared


def _method_state(tmp: Path) -> dict[str, Any]:
    """The method state in the checkpoint of the one run under ``tmp``."""
    (path,) = tmp.rglob("checkpoint.pt")
    ckpt = load_checkpoint(path.parent)
    assert ckpt is not None
    state: dict[str, Any] = ckpt["method"]
    return state


@pytest.mark.parametrize(("lambda_reg", "alpha"), [(0.1, 0.5), (0.05, 0.0)])
def test_mas_matches_avalanche_mas_plugin(stream: Stream, tmp_path: Path, lambda_reg: float,
                                          alpha: float) -> None:
    from avalanche.training.plugins import MASPlugin
    from avalanche.training.supervised import Naive

    model = _initial_model(stream, tmp_path)
    ours = _clbench(tmp_path, "mas", {"lambda_reg": lambda_reg, "alpha": alpha})
    plugin = MASPlugin(lambda_reg=lambda_reg, alpha=alpha)
    _assert_same(ours, _avalanche(stream, model, Naive, [plugin]), model)
    assert plugin.importance is not None
    importance = _method_state(tmp_path)["importance"]
    assert set(importance) == set(plugin.importance)
    for name, omega in plugin.importance.items():
        torch.testing.assert_close(importance[name], omega.data, rtol=0, atol=0)
    R = ours[0]
    assert R[1][1] < 0.6  # the penalty acts: 0.486 here, naive 0.722 (its final row: 0, 0, 0, 0, 0.831)


def _avalanche_icarl(stream: Stream, model: torch.nn.Module, mem_size: int) -> tuple[list[list[float]], Any]:
    """Avalanche's ``ICaRL`` over ``stream`` on the clbench MLP's ``features`` and ``head``."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensors
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import ICaRL

    bm = benchmark_from_datasets(
        train=[tensors(e.train.x, e.train.y, task_labels=e.task_id) for e in stream.experiences])
    # the fields _ICaRLPlugin reads from a class-incremental benchmark (benchmark_from_datasets
    # builds a generic one without them)
    bm.n_classes_per_exp = [len(e.classes) for e in stream.experiences]
    bm.classes_order = [c for e in stream.experiences for c in e.classes]
    R = []
    with warnings.catch_warnings(record=True):  # see _avalanche in test_avalanche_parity.py
        strategy = ICaRL(feature_extractor=model.features, classifier=model.head,
                         optimizer=torch.optim.SGD(model.parameters(), lr=LR), memory_size=mem_size,
                         buffer_transform=None, fixed_memory=True, train_mb_size=BS,
                         train_epochs=EPOCHS, device="cpu", evaluator=EvaluationPlugin(loggers=[]))
        for exp in bm.train_stream:
            exp.benchmark = bm
            strategy.train(exp, eval_streams=[], shuffle=False, num_workers=0)
            R.append(_row(strategy.model, stream))  # eval mode: the NCM classifier
    return R, strategy


@pytest.mark.parametrize("mem", [50, 200])  # 200: 100 herding picks per class of the first experience
def test_icarl_matches_avalanche_icarl(stream: Stream, tmp_path: Path, mem: int) -> None:
    model = _initial_model(stream, tmp_path)
    R, state = _clbench(tmp_path, "icarl", {"mem_size": mem})
    theirs_R, strategy = _avalanche_icarl(stream, model, mem)
    assert R == theirs_R
    for k, v in model.state_dict().items():  # the features and head modules Avalanche trained
        torch.testing.assert_close(state[k], v, rtol=0, atol=1e-6)
    plugin = next(p for p in strategy.plugins if type(p).__name__ == "_ICaRLPlugin")
    ours = _method_state(tmp_path)
    assert [e["cls"] for e in ours["exemplars"]] == [ys[0] for ys in plugin.y_memory] == list(range(10))
    for e, x, order in zip(ours["exemplars"], plugin.x_memory, plugin.order, strict=True):
        assert len(e["x"]) == math.ceil(mem / 10)
        assert torch.equal(e["x"], x) and torch.equal(e["order"], order)
    torch.testing.assert_close(ours["means"], strategy.model.eval_classifier.class_means, rtol=0, atol=0)
    assert sum(R[i][i] for i in range(len(R))) / len(R) > 0.5 and R[-1][0] > 0.5  # remembers (naive: 0.0)


def test_icarl_loss_matches_avalanche_icarl_loss_plugin() -> None:
    from avalanche.training.losses import ICaRLLossPlugin

    from clbench.streams import Batch
    from methods.icarl import ICaRL

    g = torch.Generator().manual_seed(0)
    logits, old = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    y = torch.tensor([4, 5, 0, 4, 3, 5])
    theirs = ICaRLLossPlugin()
    theirs.old_classes, theirs.old_logits = [0, 1, 2, 3], old
    icarl = ICaRL()
    icarl.old_classes, icarl.teacher = [0, 1, 2, 3], torch.nn.Identity()  # teacher(x) = old logits
    ours = icarl.loss(torch.nn.Identity(), Batch(old, y), logits, torch.tensor(0.0))
    torch.testing.assert_close(ours, theirs(logits, y), rtol=0, atol=0)

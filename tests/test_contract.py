"""Contract tests over every registered method: hook order, resume, frozen params, state."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from clbench.protocol import Method
from clbench.registry import METHODS
from clbench.runner import run
from clbench.testing import tiny_config

HOOKS = ("setup", "on_source_data", "on_experience_start", "train_data", "optimizer", "transform_batch", "loss",
         "on_after_backward", "on_after_step", "on_experience_end", "experience_report", "predict", "adapt")
ORDER = re.compile(
    r"^setup (on_source_data )?(predict )+"
    r"(on_experience_start train_data optimizer (transform_batch loss on_after_backward on_after_step )+"
    r"on_experience_end experience_report (predict )+)+$"
)
# test-time streams (clbench/tta.py): one online pass, ``adapt`` per batch, no training hooks
TTA_ORDER = re.compile(
    r"^setup (on_source_data )?(predict )+(on_experience_start (adapt )+on_experience_end experience_report "
    r"(predict )*)+$"
)


def _recording(cls: type[Method], log: list[str]) -> type[Method]:
    """Subclass of ``cls`` that logs top-level hook calls (nested calls are not logged)."""
    depth = [0]

    def wrap(name: str) -> Any:
        parent = getattr(cls, name)

        @functools.wraps(parent)
        def hook(self: Method, *args: Any, **kwargs: Any) -> Any:
            if depth[0] == 0:
                log.append(name)
            depth[0] += 1
            try:
                return parent(self, *args, **kwargs)
            finally:
                depth[0] -= 1

        return hook

    return type(f"Recording{cls.__name__}", (cls,), {h: wrap(h) for h in HOOKS})


@pytest.fixture
def swap() -> Iterator[Any]:
    """``swap(name, cls)`` registers ``cls`` as ``name`` until the test ends (swaps nest)."""
    with contextlib.ExitStack() as stack:
        def do(name: str, cls: type[Method]) -> None:
            stack.enter_context(METHODS.override(name, cls))

        yield do


ALL = METHODS.names()


def _cfg(tmp: Path, name: str, **overrides: Any) -> Any:
    """The tiny run config; with source data when the method declares it needs some."""
    if METHODS.get(name).needs_source_data:
        overrides = {"scenario.source": True, "foundation.epochs": 2,
                     "foundation.cache_dir": str(tmp / "cache"), **overrides}
    if _test_time_only(name):  # a test_time stream of tiny images and a BatchNorm CNN
        overrides = {"scenario.scenario_type": "test_time", "scenario.image": True, "model": "cnn_bn",
                     **overrides}
    return tiny_config(tmp, name, **overrides)


def _test_time_only(name: str) -> bool:
    return set(METHODS.get(name).scenario_types) == {"test_time"}


@pytest.mark.parametrize("name", ALL)
def test_hooks_fire_in_documented_order(name: str, tmp_path: Path, swap: Any) -> None:
    log: list[str] = []
    swap(name, _recording(METHODS.get(name), log))
    run(_cfg(tmp_path, name, **{"scenario.n_experiences": 2, "eval.validation": False}))
    assert (TTA_ORDER if _test_time_only(name) else ORDER).match(" ".join(log) + " "), " ".join(log)
    assert log.count("on_experience_start") == 2 and log.count("on_experience_end") == 2


@pytest.mark.parametrize("name", ALL)
def test_resume_after_kill_equals_uninterrupted(name: str, tmp_path: Path, swap: Any) -> None:
    full = run(_cfg(tmp_path / "full", name))
    cls = METHODS.get(name)

    class Killed(cls):  # type: ignore[valid-type, misc]
        def on_experience_start(self, exp: Any, model: torch.nn.Module) -> None:
            if exp.index == 2:
                raise KeyboardInterrupt("simulated kill")
            super().on_experience_start(exp, model)

    swap(name, Killed)
    cfg = _cfg(tmp_path / "resumed", name)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    run_dirs = list((tmp_path / "resumed" / "runs").rglob("checkpoint.pt"))
    assert len(run_dirs) == 1 and not (run_dirs[0].parent / "results.json").exists()
    swap(name, cls)
    resumed = run(cfg, resume=True)
    assert resumed.R == full.R
    assert resumed.R_pretrain == full.R_pretrain


@pytest.mark.parametrize("name", ALL)
def test_frozen_parameters_stay_frozen(name: str, tmp_path: Path, swap: Any) -> None:
    cls = METHODS.get(name)
    snapshots: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Freezing(cls):  # type: ignore[valid-type, misc]
        def on_experience_start(self, exp: Any, model: torch.nn.Module) -> None:
            super().on_experience_start(exp, model)
            layer = model.features[1]
            layer.weight.requires_grad_(False)
            snapshots.append((layer.weight, layer.weight.detach().clone()))

        def on_experience_end(self, exp: Any, model: torch.nn.Module) -> None:
            live, before = snapshots[-1]
            assert torch.equal(live, before), "a frozen parameter changed during training"
            super().on_experience_end(exp, model)

    swap(name, Freezing)
    res = run(_cfg(tmp_path, name, **{"trainer.weight_decay": 0.01, "trainer.momentum": 0.9}))
    assert len(snapshots) == 3 and len(res.R) == (1 if _test_time_only(name) else 3)  # test-time R: 1 x D


@pytest.mark.parametrize("name", ALL)
def test_method_contract_basics(name: str) -> None:
    cls = METHODS.get(name)
    assert cls.registry_name == name
    assert (Path(__file__).parent.parent / "methods" / f"{name}.py").is_file(), "file name = registry name"
    doc = cls.__doc__ or ""
    assert "Deviations" in doc and "Hooks used" in doc, "class docstring must list hooks and deviations"
    state = cls().state_dict()
    assert isinstance(state, dict)
    import dataclasses

    assert dataclasses.is_dataclass(cls.Config)
    assert cls.Config.__dataclass_params__.frozen  # type: ignore[attr-defined]


def _naming(name: str) -> re.Pattern[str]:
    """``name`` as a whole word or identifier, any case (``_`` and digits belong to the identifier)."""
    return re.compile(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", re.IGNORECASE)


def test_method_name_matching_is_by_whole_word_in_any_case() -> None:
    for text in ("EWC regularises", "as in LwF.", "method=hft", "'ssu'", "tent:", "(lae)"):
        assert any(_naming(n).search(text) for n in ("ewc", "lwf", "hft", "ssu", "tent", "lae")), text
    for text in ("shift", "content", "issue", "ewc_lambda", "lwf2", "the layer", "potential"):
        assert not any(_naming(n).search(text) for n in ("ewc", "lwf", "hft", "ssu", "tent", "lae")), text


@pytest.mark.parametrize("name", ALL)
def test_core_never_names_a_method(name: str) -> None:
    """No method name, however short (ewc, lwf, hft...), as a whole word or identifier in clbench/.

    Case-insensitive (``EWC`` in a comment counts); a name never matches inside another word or
    identifier (``hft`` in ``shift``, ``tent`` in ``content``, ``ewc`` in ``ewc_lambda``).
    """
    root = Path(__file__).parent.parent
    word = _naming(name)
    hits = [f"{path.relative_to(root)}:{i}: {line.strip()}"
            for path in sorted((root / "clbench").rglob("*.py"))
            for i, line in enumerate(path.read_text().splitlines(), 1) if word.search(line)]
    assert not hits, f"clbench/ names method {name!r}:\n" + "\n".join(hits)

"""Avalanche adapter: benchmarks built from in-memory tensors convert faithfully and train.

The benchmarks are made with Avalanche's own generators (``nc_benchmark``/``ni_benchmark``) over
sklearn's real 8x8 digits (1,797 images, no exact duplicates), so nothing is downloaded. The
offline path blocks DNS inside the test so a download attempt fails at once on any machine.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from clbench.config import RunConfig, TrackingConfig, TrainerConfig, build_run_config
from clbench.errors import ConfigError, DataUnavailableError
from clbench.options import build_dataclass
from clbench.protocol import Scenario
from clbench.registry import SCENARIOS
from clbench.runner import resolve, run
from clbench.streams import Stream
from scenarios._common import stratified_split
from scenarios.avalanche_adapter import _as_float_tensor, from_avalanche, infer_scenario_type


def _digits() -> tuple[TensorDataset, TensorDataset]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(np.asarray(d.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = torch.as_tensor(np.asarray(d.target, dtype=np.int64))
    test_idx, train_idx = (torch.as_tensor(i) for i in stratified_split(y.numpy(), [0.2]))
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[test_idx], y[test_idx])


def _nc(task_labels: bool = False, **kwargs: Any) -> Any:
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark

    train, test = _digits()
    return nc_benchmark(train, test, n_experiences=5, task_labels=task_labels, seed=1, **kwargs)


def _run_config(tmp: Path, scenario: str) -> RunConfig:
    return RunConfig(method="naive", scenario=scenario, model="mlp", seed=0,
                     trainer=TrainerConfig(epochs=3, batch_size=8, lr=0.05, progress=False),
                     tracking=TrackingConfig(runs_dir=str(tmp / "runs"), mlflow=False),
                     model_options={"hidden": 32, "layers": 1})


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x}


def test_nc_benchmark_converts_faithfully() -> None:
    bench = _nc()
    stream = from_avalanche(bench, val_fraction=0.1)
    assert len(stream) == len(bench.train_stream) == 5
    assert stream.num_classes == 10 and stream.scenario_type == "class_incremental"
    assert stream.meta["avalanche_version"] == "0.6.0"
    for e, av_train, av_test in zip(stream.experiences, bench.train_stream, bench.test_stream,
                                    strict=True):
        assert e.classes == tuple(sorted(av_train.classes_in_this_experience))
        assert len(e.classes) == 2 and e.task_id == 0
        assert len(e.train) + len(e.val) == len(av_train.dataset)
        assert len(e.test) == len(av_test.dataset)
        assert set(e.train.y.tolist()) == set(e.val.y.tolist()) == set(e.test.y.tolist()) == set(e.classes)
        assert e.train.x.dtype == torch.float32 and e.train.x.shape[1:] == (1, 8, 8)
        # validation is carved out of train: disjoint, and together they are Avalanche's train set
        assert not _rows(e.train.x) & _rows(e.val.x)
        av_rows = _rows(torch.stack([item[0] for item in av_train.dataset]))
        assert _rows(e.train.x) | _rows(e.val.x) == av_rows
        assert 0.05 < len(e.val) / len(av_train.dataset) < 0.15


def test_conversion_is_deterministic() -> None:
    assert from_avalanche(_nc()).content_hash() == from_avalanche(_nc()).content_hash()


def test_scenario_type_inference_and_task_ids() -> None:
    from avalanche.benchmarks.scenarios.deprecated.generators import ni_benchmark

    task = from_avalanche(_nc(task_labels=True))
    assert task.scenario_type == "task_incremental"
    assert [e.task_id for e in task.experiences] == [0, 1, 2, 3, 4]
    # per-experience class ids from zero + task labels: still task-incremental, 2 output units
    remapped = from_avalanche(_nc(task_labels=True, class_ids_from_zero_in_each_exp=True))
    assert remapped.scenario_type == "task_incremental" and remapped.num_classes == 2
    # new instances, shared classes, one complete test set -> domain-incremental
    train, test = _digits()
    ni = from_avalanche(ni_benchmark(train, test, n_experiences=3, task_labels=False, seed=1))
    assert ni.scenario_type == "domain_incremental" and len(ni) == 3
    assert all(e.classes == tuple(range(10)) and len(e.test) == len(test) for e in ni.experiences)
    forced = from_avalanche(_nc(task_labels=False), scenario_type="task_incremental")
    assert [e.task_id for e in forced.experiences] == [0, 1, 2, 3, 4]
    assert infer_scenario_type([0, 0], [(0, 1), (2, 3)]) == "class_incremental"
    assert infer_scenario_type([0, 0], [(0, 1), (1, 2)]) == "domain_incremental"
    assert infer_scenario_type([0, 1], [(0, 1), (0, 1)]) == "task_incremental"
    with pytest.raises(ValueError, match="scenario_type"):
        from_avalanche(_nc(), scenario_type="online")


def test_images_become_float_tensors() -> None:
    img = Image.fromarray(np.full((4, 5), 255, dtype=np.uint8))
    t = _as_float_tensor(img)
    assert t.shape == (1, 4, 5) and t.dtype == torch.float32 and float(t.max()) == 1.0
    assert _as_float_tensor(np.arange(3, dtype=np.int64)).dtype == torch.float32


def test_clbench_run_trains_on_converted_stream(tmp_path: Path) -> None:
    stream = from_avalanche(_nc(), name="avalanche_digits")

    class Converted(Scenario):
        """The converted digits benchmark (temporary test scenario)."""

        def build(self) -> Stream:
            return stream

    SCENARIOS.register("avalanche_test_digits")(Converted)
    try:
        cfg = _run_config(tmp_path, scenario="avalanche_test_digits")
        res = run(cfg)
    finally:
        SCENARIOS.unregister("avalanche_test_digits")
    R = np.asarray(res.R)
    assert R.shape == (5, 5)
    assert res.scenario.name == "avalanche_digits"
    assert res.cost.optimizer_steps > 0 and res.cost.train_samples > 0
    # each experience is learned when it is trained (2-way digits are easy)
    assert np.diag(R).min() > 0.8, R


def test_offline_benchmark_raises_data_unavailable(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Block name resolution so a download attempt fails immediately whatever the network is.
    def no_dns(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "name resolution blocked by test")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    cls = SCENARIOS.get("avalanche")
    options = {"benchmark": "SplitFMNIST",
               "kwargs": {"n_experiences": 5, "seed": 0, "dataset_root": str(tmp_path / "fm")}}
    with pytest.raises(DataUnavailableError) as info:
        cls(build_dataclass(cls.Config, options, "scenario")).build()
    msg = str(info.value)
    assert "SplitFMNIST" in msg and "offline" in msg and "\n" not in msg
    for alt in ("split_mnist", "permuted_mnist", "rotated_mnist", "split_digits"):
        assert alt in msg


def test_unknown_benchmark_and_bad_options_raise_config_error(tmp_path: Path) -> None:
    cfg = build_run_config({"scenario.benchmark": "SplitNope"}, _run_config(tmp_path, "avalanche"))
    res = resolve(cfg)  # options are well-typed; the name is checked against Avalanche at build
    with pytest.raises(ConfigError) as info:
        res.scenario.build()
    assert info.value.field == "scenario.benchmark"
    assert "SplitMNIST" in info.value.allowed and "SplitFMNIST" in info.value.allowed
    cls = SCENARIOS.get("avalanche")
    bad_kwargs = {"benchmark": "SplitMNIST", "kwargs": {"n_experiences": 5, "bogus": 1}}
    with pytest.raises(ConfigError, match="n_experiences") as info:
        cls(build_dataclass(cls.Config, bad_kwargs, "scenario")).build()
    assert info.value.field == "scenario.kwargs"
    with pytest.raises(ConfigError):
        build_dataclass(cls.Config, {"val_fraction": 1.5}, "scenario")
    with pytest.raises(ConfigError):
        build_dataclass(cls.Config, {"scenario_type": "online"}, "scenario")

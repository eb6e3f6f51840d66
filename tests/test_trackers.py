"""Tracking backends (tracking.backends): CSV, TensorBoard, W&B offline and MLflow; the fan-out, the
per-track MLflow experiment, the params under command-line names and the step loss."""

from __future__ import annotations

import csv
import json
import struct
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from clbench import trackers
from clbench.bench import suite_configs
from clbench.config import RunConfig, TrackingConfig, build_run_config
from clbench.errors import ConfigError
from clbench.records import RunRecord
from clbench.runner import run
from clbench.testing import tiny_config
from clbench.trackers import STEP_LOSS, STEP_PEAK_MEM, FanOut, check_backends, cli_params
from clbench.tracking import MlflowRun, git_commit, open_tracker

# the tiny stream: 3 experiences of 48 training samples, batch 8, 2 epochs: 12 optimizer steps each
STEPS_PER_EXP, N_EXP = 12, 3


def _csv_rows(run_dir: Path) -> list[tuple[int, str, float]]:
    with (run_dir / "metrics.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["step", "name", "value"]
    return [(int(s), n, float(v)) for s, n, v in rows[1:]]


def _series(rows: list[tuple[int, str, float]], name: str) -> list[tuple[int, float]]:
    return [(s, v) for s, n, v in rows if n == name]


def _check_logged(res: RunRecord, series: Any) -> None:
    """Per-experience metrics at steps 0..T-1, the final ones once at step T."""
    assert [s for s, _ in series("acc_seen")] == list(range(N_EXP))
    for i in range(N_EXP):
        assert dict(series(f"acc_exp_{i}"))[N_EXP - 1] == pytest.approx(res.R[-1][i])
    assert series("acc") == [(N_EXP, pytest.approx(res.metrics["acc"]))]
    assert series("bwt") == [(N_EXP, pytest.approx(res.metrics["bwt"]))]
    assert series("cost/optimizer_steps") == [(N_EXP, STEPS_PER_EXP * N_EXP)]


def test_csv_and_tensorboard_write_final_and_per_experience_metrics(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tmp_path, "ewc", **{"tracking.backends": ["csv", "tensorboard"], "tracking.loss_every": 2,
                                          "method.ewc_lambda": 3.0})
    res = run(cfg)
    rd = Path(res.run_dir)
    assert res.mlflow.run_id is None and not (tmp_path / "mlflow.db").exists()  # mlflow not selected
    rows = _csv_rows(rd)
    _check_logged(res, lambda name: _series(rows, name))
    params = json.loads((rd / "params.json").read_text())
    assert params["method"] == "ewc" and params["method.ewc_lambda"] == 3.0 and params["model.hidden"] == 32
    assert params["trainer.lr"] == 0.05 and params["tracking.backends"] == ["csv", "tensorboard"]
    assert not any(k.endswith("_options") or "_options." in k for k in params)
    tags = json.loads((rd / "tags.json").read_text())
    assert tags["clbench.scenario_hash"] == res.scenario.content_hash and tags["run_name"] == "ewc-tiny-s0"
    acc = EventAccumulator(str(rd / "tensorboard"))
    acc.Reload()

    def tb(name: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in acc.Scalars(name)]

    _check_logged(res, tb)
    every_2nd = list(range(2, STEPS_PER_EXP * N_EXP + 1, 2))
    assert [s for s, _ in tb(STEP_LOSS)] == every_2nd == [s for s, _ in _series(rows, STEP_LOSS)]
    assert "config/text_summary" in acc.Tags()["tensors"]  # params and tags as a text summary


def test_loss_every_logs_the_step_loss_without_changing_training(tmp_path: Path) -> None:
    plain = run(tiny_config(tmp_path / "a", "naive", **{"tracking.backends": ["csv"]}))
    assert STEP_LOSS not in {n for _, n, _ in _csv_rows(Path(plain.run_dir))}  # off by default
    logged = run(tiny_config(tmp_path / "b", "naive", **{"tracking.backends": ["csv"], "tracking.loss_every": 1}))
    assert logged.R == plain.R and logged.run_key == plain.run_key  # same numbers, same run key
    losses = _series(_csv_rows(Path(logged.run_dir)), STEP_LOSS)
    assert [s for s, _ in losses] == list(range(1, STEPS_PER_EXP * N_EXP + 1))  # counted over the stream
    for i, exp in enumerate(logged.per_experience):  # one batch per step: the steps' mean is the experience's
        mine = [v for s, v in losses if i * STEPS_PER_EXP < s <= (i + 1) * STEPS_PER_EXP]
        assert sum(mine) / len(mine) == pytest.approx(exp.mean_loss)
    # beside each logged loss, the memory high-water mark so far: never falls, at most the run's peak
    mem = _series(_csv_rows(Path(logged.run_dir)), STEP_PEAK_MEM)
    assert [s for s, _ in mem] == [s for s, _ in losses]
    values = [v for _, v in mem]
    assert 0 < values[0] and values == sorted(values) and values[-1] <= logged.cost.peak_rss_mb


def test_mlflow_run_has_commit_and_scenario_tags_and_cli_param_names(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "ewc", **{"tracking.mlflow": True, "tracking.loss_every": 4,
                                          "method.ewc_lambda": 3.0})
    res = run(cfg)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    r = client.get_run(res.mlflow.run_id)
    assert client.get_experiment(r.info.experiment_id).name == "clbench"  # not a track's run
    assert r.data.tags["clbench.scenario_hash"] == res.scenario.content_hash
    assert r.data.tags.get("clbench.git_commit") == git_commit()
    assert r.data.tags["clbench.git_commit"] == res.env["git_commit"]
    p = r.data.params
    assert p["method"] == "ewc" and p["method.ewc_lambda"] == "3.0" and p["model.hidden"] == "32"
    assert p["trainer.lr"] == "0.05" and p["scenario"] == "tiny" and "scenario.n_experiences" in p
    assert not any(k.startswith(("method_options", "model_options", "scenario_options")) for k in p)

    def history(name: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, name)]

    _check_logged(res, history)
    assert [s for s, _ in history(STEP_LOSS)] == list(range(4, STEPS_PER_EXP * N_EXP + 1, 4))
    assert [s for s, _ in history(STEP_PEAK_MEM)] == list(range(4, STEPS_PER_EXP * N_EXP + 1, 4))
    assert client.search_runs([r.info.experiment_id], "metrics.acc > -1 and params.`method.ewc_lambda` = '3.0'")


def test_wandb_offline_writes_the_run_inside_the_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = tiny_config(tmp_path, "naive", **{"tracking.backends": "wandb", "tracking.loss_every": 6})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run(cfg)
    failed = [str(w.message) for w in caught if "wandb tracking" in str(w.message)]
    if failed:
        pytest.skip(f"wandb cannot run offline here: {failed[0]}")
    rd = Path(res.run_dir)
    [wb] = list((rd / "wandb").glob("offline-run-*/run-*.wandb"))
    assert wb.name == f"run-{(rd / 'wandb_run_id').read_text()}.wandb"
    history, summary = _read_wandb(wb)
    exp_rows = [h for h in history if "experience" in h]
    _check_logged(res, lambda name: [(int(h["experience"]), h[name]) for h in exp_rows if name in h])
    steps = [int(h["optimizer_step"]) for h in history if STEP_LOSS in h]
    assert steps == [int(h["optimizer_step"]) for h in history if STEP_PEAK_MEM in h]
    assert steps == list(range(6, STEPS_PER_EXP * N_EXP + 1, 6))
    assert summary["acc"] == pytest.approx(res.metrics["acc"])


def _read_wandb(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """History rows and the last summary values of a W&B offline run file, once its writer (W&B's
    service process, which may still be flushing after ``finish`` returns on a loaded machine) has
    written the run's closing ``exit`` record."""
    from wandb.proto import wandb_internal_pb2 as pb

    for _ in range(600):  # a bound, not a timing assertion: at most about a minute of waiting
        recs = []
        for raw in _wandb_records(path.read_bytes()):
            rec = pb.Record()
            rec.ParseFromString(raw)
            recs.append(rec)
        if any(r.WhichOneof("record_type") == "exit" for r in recs):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"{path} never got its exit record")

    def items(entries: Any) -> dict[str, Any]:
        return {e.key or "/".join(e.nested_key): json.loads(e.value_json) for e in entries}

    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for rec in recs:
        if rec.WhichOneof("record_type") == "history":
            history.append(items(rec.history.item))
        elif rec.WhichOneof("record_type") == "summary":
            summary.update(items(rec.summary.update))
    return history, summary


def _wandb_records(data: bytes) -> list[bytes]:
    """The raw records of a W&B run file (a LevelDB-style log of protobuf ``Record``s: a 7-byte
    header, 32 KiB blocks, 7-byte record headers); a record still being written is left out."""
    pos, buf, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 or pos + 7 + n > len(data):  # padding, or a record not yet written in full
            break
        buf += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a full record, or the last piece of one
            records.append(buf)
            buf = b""
    return records


def test_bad_backend_name_is_one_clear_error() -> None:
    with pytest.raises(ConfigError) as err:
        build_run_config({"method": "naive", "tracking.backends": "mlflow,tensorbored"})
    assert err.value.field == "tracking.backends" and err.value.value == "tensorbored"
    for name in ("mlflow", "tensorboard", "csv", "wandb"):
        assert name in err.value.allowed
    with pytest.raises(ConfigError, match="tracking.loss_every"):
        build_run_config({"tracking.loss_every": -1})


def test_backends_list_comma_string_and_the_mlflow_switch(tmp_path: Path) -> None:
    assert build_run_config({"tracking.backends": "mlflow, csv"}).tracking.backends == ("mlflow", "csv")
    assert build_run_config({"tracking.backends": ["csv", "csv"]}).tracking.backends == ("csv",)
    assert TrackingConfig().selected() == ("mlflow",)
    both = TrackingConfig(backends=("mlflow", "csv"), mlflow=False)
    assert both.selected() == ("csv",)
    t = open_tracker(both, run_dir=tmp_path)
    assert isinstance(t, FanOut) and t.run_id is None and [type(m).__name__ for m in t.members] == ["CsvTracker"]
    assert isinstance(open_tracker(TrackingConfig()), MlflowRun)  # the default: MLflow alone, as before
    off = open_tracker(TrackingConfig(mlflow=False), run_id="abc")
    assert off.start("x", {}, {}) is None and off.run_id is None  # records nothing


def test_new_tracking_fields_leave_run_keys_unchanged() -> None:
    values = {"method": "naive", "scenario": "split_mnist"}
    key = build_run_config(values).key()
    assert key == "351f74b319"  # pinned in tests/test_config.py
    new = {"tracking.backends": ["csv", "tensorboard", "wandb"], "tracking.loss_every": 5,
           "tracking.experiment": "vision_cil"}
    assert build_run_config({**values, **new}).key() == key


def test_cli_params_are_the_command_line_names() -> None:
    config = {"method": "m", "method_options": {"a": 1, "b": [1, 2]}, "scenario_options": {},
              "model_options": {"head": {"kind": "x"}}, "trainer": {"lr": 0.1}, "seed": 0}
    assert cli_params(config) == {"method": "m", "method.a": 1, "method.b": [1, 2], "model.head.kind": "x",
                                  "trainer.lr": 0.1, "seed": 0}


def test_a_missing_backend_package_is_refused_before_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install wandb") as err:
        check_backends(TrackingConfig(backends=("csv", "wandb")))
    assert err.value.field == "tracking.backends"
    with pytest.raises(ConfigError, match="pip install wandb"):
        check_backends(TrackingConfig(backends=("wandb",), mlflow=False))
    check_backends(TrackingConfig(backends=("mlflow", "csv")))  # nothing to install


def test_a_failing_backend_warns_and_the_others_go_on(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    good = tmp_path / "good"
    good.mkdir()
    fan = FanOut(None, [trackers.build("csv", TrackingConfig(), blocked), trackers.build("csv", TrackingConfig(), good)])
    with pytest.warns(UserWarning, match="csv tracking start failed"):
        fan.start("r", {"a": 1}, {})
    fan.log_metrics({"acc": 0.5, "nan": float("nan")}, 3)  # the broken one stays quiet
    fan.end("FINISHED")
    assert _csv_rows(good) == [(3, "acc", 0.5)] and json.loads((good / "params.json").read_text()) == {"a": 1}


def test_bench_and_protocol_runs_go_to_their_tracks_experiment() -> None:
    from clbench import tuning

    [cfg, *_] = suite_configs({"method": "naive"}, [0], "runs/x", "vision_cil")
    assert cfg.tracking.experiment == "vision_cil"
    [mine, *_] = suite_configs({"method": "naive", "tracking.experiment": "mine"}, [0], "runs/x", "vision_cil")
    assert mine.tracking.experiment == "mine" and mine.key() == cfg.key()
    pr: Any = SimpleNamespace(protocol=SimpleNamespace(track="tiny"), overrides={"tracking.uri": "sqlite:///x.db"})
    assert tuning._tracking_overrides(pr) == {"experiment": "tiny", "uri": "sqlite:///x.db"}
    assert tuning._in_track(pr, RunConfig()).tracking.experiment == "tiny"
    named = build_run_config({"tracking.experiment": "mine"})
    assert tuning._in_track(pr, named).tracking.experiment == "mine"


@pytest.mark.parametrize("rank", [1, 0])
def test_only_rank_0_writes_tracker_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rank: int) -> None:
    # a process of a 2-process launch, as torchrun sets it (no process group: the environment is read)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    assert trackers.process_rank() == rank
    backends = ("csv", "tensorboard", "wandb") if rank else ("csv",)  # rank 0: the csv files suffice
    fan = open_tracker(TrackingConfig(backends=backends, mlflow=False), run_dir=tmp_path)
    assert isinstance(fan, FanOut) and [m.name for m in fan.members] == list(backends)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no backend failed: a replica's simply write nothing
        fan.start("r", {"a": 1}, {"run_dir": str(tmp_path)})
        fan.log_metrics({"acc": 0.5}, 0)
        fan.end("FINISHED")
    if rank:
        assert list(tmp_path.iterdir()) == []
    else:
        assert _csv_rows(tmp_path) == [(0, "acc", 0.5)] and (tmp_path / "params.json").is_file()
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: RANK alone means nothing
    assert trackers.process_rank() == 0


def test_the_environment_names_the_cpu_model_and_the_kernels_instruction_set() -> None:
    """Two CPUs that differ in either can give R that differ in the last bits: the record says which ran."""
    import torch

    from clbench.tracking import environment

    name = environment("cpu")["device_name"]
    assert name.endswith(f"({torch.backends.cpu.get_cpu_capability()})") and len(name) > 10, name

"""Runs end to end: results.json schema, MLflow logging, bad input, NaN handling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from clbench.errors import ConfigError, DataUnavailableError, IncompatibleError, NonFiniteLossError
from clbench.protocol import Method
from clbench.registry import METHODS
from clbench.runner import run, run_dir_for
from clbench.testing import register_tiny, tiny_config, tiny_vit_config


def _client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _mlflow_cfg(tmp_path: Path, method: str = "naive", **kw: Any) -> Any:
    return tiny_config(tmp_path, method, **{"tracking.mlflow": True, **kw})


def test_results_json_schema_and_metrics(tmp_path: Path) -> None:
    res = run(tiny_config(tmp_path, "naive"))
    on_disk = json.loads((Path(res.run_dir) / "results.json").read_text())
    assert on_disk["schema_version"] == 1
    for key in ("config", "scenario", "model", "seeds", "R", "R_pretrain", "R_val", "metrics",
                "cost", "env", "per_experience"):
        assert key in on_disk, key
    assert len(on_disk["R"]) == 3 and all(len(r) == 3 for r in on_disk["R"])
    assert len(on_disk["scenario"]["content_hash"]) == 64 and on_disk["scenario"]["version"] == "1"
    assert set(on_disk["metrics"]) == {"acc", "avg_inc_acc", "bwt", "fwt", "forgetting", "plasticity",
                                    "zero_shot_transfer"}
    assert on_disk["metrics"]["acc"] == pytest.approx(sum(on_disk["R"][-1]) / 3)
    cost = on_disk["cost"]
    assert cost["optimizer_steps"] == 3 * 2 * 6 and cost["train_samples"] == 3 * 2 * 48
    assert cost["trainable_params"] == cost["total_params"] > 0
    assert on_disk["env"]["packages"]["torch"].startswith("2.14")
    assert on_disk["config"]["method_options"] == {}
    assert (Path(res.run_dir) / "R.png").stat().st_size > 1000


def test_mlflow_run_params_metrics_artifacts(tmp_path: Path) -> None:
    res = run(_mlflow_cfg(tmp_path))
    client = _client(tmp_path)
    r = client.get_run(res.mlflow.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["trainer.lr"] == "0.05" and r.data.params["method"] == "naive"
    assert r.data.tags["scenario"] == "tiny" and r.data.tags["seed"] == "0"
    history = client.get_metric_history(r.info.run_id, "acc_seen")
    assert [m.step for m in history] == [0, 1, 2]
    assert r.data.metrics["acc"] == pytest.approx(res.metrics["acc"])
    names = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"results.json", "R.json", "R.png"} <= names
    found = client.search_runs([r.info.experiment_id], "metrics.acc > -1 and params.method = 'naive'")
    assert len(found) == 1


def test_resume_keeps_one_mlflow_run(tmp_path: Path) -> None:
    original = METHODS.get("naive")

    class Killed(original):  # type: ignore[misc]
        def on_experience_start(self, exp: Any, model: torch.nn.Module) -> None:
            if exp.index == 1:
                raise KeyboardInterrupt
    cfg = _mlflow_cfg(tmp_path)
    with METHODS.override("naive", Killed), pytest.raises(KeyboardInterrupt):
        run(cfg)
    client = _client(tmp_path)
    [killed] = client.search_runs([client.get_experiment_by_name("clbench").experiment_id])
    assert killed.info.status == "KILLED"
    res = run(cfg, resume=True)
    runs = client.search_runs([killed.info.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert res.mlflow.run_id == killed.info.run_id


def test_nan_loss_fails_cleanly_and_keeps_checkpoint(tmp_path: Path) -> None:
    class Exploding(Method):
        """Loss becomes NaN on experience 1."""

        def loss(self, model: Any, batch: Any, outputs: torch.Tensor, base_loss: torch.Tensor) -> torch.Tensor:
            return base_loss * float("nan") if int(batch.task[0]) == 0 and self.exp == 1 else base_loss

        def on_experience_start(self, exp: Any, model: Any) -> None:
            self.exp = exp.index

    cfg = _mlflow_cfg(tmp_path)
    with METHODS.override("naive", Exploding), pytest.raises(NonFiniteLossError, match="experience 1"):
        run(cfg)
    run_dir = run_dir_for(cfg)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and status["completed_experiences"] == 1
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "results.json").exists()
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["progress"]["done"] == 1
    client = _client(tmp_path)
    [r] = client.search_runs([client.get_experiment_by_name("clbench").experiment_id])
    assert r.info.status == "FAILED" and "non-finite loss" in r.data.tags["failure_reason"]


def test_unknown_method_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="naive") as err:
        run(tiny_config(tmp_path, "nope"))
    assert "method='nope'" in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_unknown_scenario_and_bad_method_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="split_mnist"):
        run(tiny_config(tmp_path, "naive", scenario="mnist_typo"))
    with pytest.raises(ConfigError, match=r"method.bogus=1; allowed: once, reset"):
        run(tiny_config(tmp_path, "joint", **{"method.bogus": 1}))
    assert not (tmp_path / "runs").exists()


def test_incompatible_pair_refused_before_training(tmp_path: Path) -> None:
    class DomainOnly(Method):
        """Only domain-incremental."""

        scenario_types = frozenset({"domain_incremental"})

    with (METHODS.override("naive", DomainOnly),
          pytest.raises(IncompatibleError, match="does not support class_incremental.*domain_incremental")):
        run(tiny_config(tmp_path, "naive"))
    assert not (tmp_path / "runs").exists()


def test_missing_data_is_one_clear_error(tmp_path: Path) -> None:
    register_tiny()
    cfg = tiny_config(tmp_path, "naive", scenario="split_mnist",
                      **{"scenario.data": "mnist10k", "scenario.data_dir": str(tmp_path / "none")})
    with pytest.raises(DataUnavailableError, match="scenario.data_dir"):
        run(cfg)
    assert not (tmp_path / "runs").exists()


def test_existing_run_dir_needs_resume_or_force(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "naive")
    first = run(cfg)
    from clbench.errors import ClbenchError

    with pytest.raises(ClbenchError, match="--resume"):
        run(cfg)
    assert run(cfg, resume=True).R == first.R
    assert run(cfg, force=True).R == first.R


def test_the_runner_logs_through_the_tracker_interface(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any object with the Tracker methods is a backend: the runner names no tracking library."""
    import clbench.runner

    calls: list[tuple[str, Any]] = []

    class Recorder:
        uri, run_id = "memory://", None

        def start(self, run_name: str, params: Any, tags: Any, resume_id: str | None = None) -> str:
            calls.append(("start", run_name))
            self.run_id = "r1"
            return "r1"

        def log_metrics(self, metrics: Any, step: int) -> None:
            calls.append(("metrics", step))

        def log_artifacts(self, paths: list[Path]) -> None:
            calls.append(("artifacts", sorted(p.name for p in paths)))

        def end(self, status: str, reason: str | None = None) -> None:
            calls.append(("end", status))

    monkeypatch.setattr(clbench.runner, "open_tracker", lambda cfg: Recorder())
    res = run(tiny_config(tmp_path, "naive"))
    assert calls[0] == ("start", "naive-tiny-s0") and calls[-1] == ("end", "FINISHED")
    assert [c for c in calls if c[0] == "metrics"][1:-1] == [("metrics", i) for i in range(3)]  # per experience
    assert ("artifacts", ["R.json", "R.png", "results.json"]) in calls
    assert res.mlflow.run_id == "r1" and res.mlflow.tracking_uri == "memory://"


def test_resume_completes_a_finish_that_a_kill_interrupted(tmp_path: Path) -> None:
    cfg = _mlflow_cfg(tmp_path)
    first = run(cfg)
    rd, rid = Path(first.run_dir), first.mlflow.run_id
    client = _client(tmp_path)
    # as if killed just after results.json: no R.json/R.png, the MLflow run still RUNNING,
    # and a failure_reason left from an earlier interrupted attempt
    (rd / "R.json").unlink()
    (rd / "R.png").unlink()
    client.update_run(rid, status="RUNNING")
    client.set_tag(rid, "failure_reason", "KeyboardInterrupt: signal 15")
    again = run(cfg, resume=True)
    assert again.R == first.R and (rd / "R.json").is_file() and (rd / "R.png").is_file()
    info = client.get_run(rid)
    assert info.info.status == "FINISHED" and "failure_reason" not in info.data.tags
    assert info.data.metrics["acc"] == pytest.approx(first.metrics["acc"])
    assert "cost/optimizer_steps" in info.data.metrics


def test_a_run_killed_before_its_first_checkpoint_keeps_one_mlflow_run(tmp_path: Path) -> None:
    from methods.naive import Naive

    class KilledOnce(Naive):
        killed = False

        def on_experience_start(self, exp: Any, model: Any) -> None:
            if not KilledOnce.killed:
                KilledOnce.killed = True
                raise KeyboardInterrupt("signal 15")

    with METHODS.override("killed_once", KilledOnce):
        cfg = _mlflow_cfg(tmp_path, "killed_once")
        with pytest.raises(KeyboardInterrupt):
            run(cfg)
        rd = run_dir_for(cfg)
        assert not (rd / "checkpoint.pt").exists() and (rd / "mlflow_run_id").is_file()
        (rd / ".checkpoint.pt.abc123").write_bytes(b"half")  # a temp file a kill -9 would leave
        res = run(cfg, resume=True)
    client = _client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("clbench").experiment_id])
    assert [r.info.run_id for r in runs] == [res.mlflow.run_id]  # resumed into the same MLflow run
    assert runs[0].info.status == "FINISHED" and "failure_reason" not in runs[0].data.tags
    assert not (rd / ".checkpoint.pt.abc123").exists()


STEP_RESUME = [("naive", False), ("ewc", False), ("lwf", False), ("replay", False), ("migu", False),
               ("classp", False), ("hft", False), ("ssu", True), ("lae", True), ("dynamic_rank_lora", True)]


@pytest.mark.parametrize(("method", "vit"), STEP_RESUME, ids=[m for m, _ in STEP_RESUME])
def test_a_kill_within_an_experience_resumes_from_the_last_step_checkpoint_with_the_same_R(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, vit: bool) -> None:
    """trainer.checkpoint_every: killed at step 8 of experience 1 (step checkpoints after steps 3
    and 6), resumed: the same R bit for bit as an uninterrupted run, with a cosine schedule and
    warmup whose state is part of the checkpoint."""
    from clbench.checkpoint import STEP_CHECKPOINT
    from clbench.trainer import Trainer

    opts = {"trainer.checkpoint_every": 3, "trainer.scheduler": "cosine", "trainer.warmup_ratio": 0.2,
            "trainer.optimizer": "adamw"}
    make = tiny_vit_config if vit else tiny_config  # methods that act on transformer blocks or need source data
    if vit:
        opts["foundation.cache_dir"] = str(tmp_path / "cache")  # one foundation for both runs
    whole = run(make(tmp_path / "whole", method, **opts))
    cfg = make(tmp_path / "killed", method, **opts)
    real_step, calls = Trainer._step, {"n": 0}
    first = whole.per_experience[0].optimizer_steps
    assert whole.per_experience[1].optimizer_steps > 8

    def dying_step(self: Trainer, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == first + 8:
            raise KeyboardInterrupt
        real_step(self, *args)

    monkeypatch.setattr(Trainer, "_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    step_file = run_dir_for(cfg) / STEP_CHECKPOINT
    assert step_file.is_file() and torch.load(step_file, weights_only=True)["experience"] == 1
    calls["n"] = -10**9  # count the resumed run's steps, never die again
    resumed = run(cfg, resume=True)
    steps_run = calls["n"] + 10**9
    assert resumed.R == whole.R and resumed.metrics == whole.metrics
    # it continued after step 6 of experience 1 rather than starting the experience over
    assert steps_run == sum(p.optimizer_steps for p in whole.per_experience) - first - 6
    assert [p.optimizer_steps for p in resumed.per_experience] == [p.optimizer_steps for p in whole.per_experience]
    assert not step_file.exists()  # removed once the experience's boundary checkpoint is written
    assert cfg.key() == make(tmp_path / "killed", method, **{**opts, "trainer.checkpoint_every": 0}).key()


def test_the_protocol_does_not_rank_a_method_that_needs_a_pretrained_model_on_an_untrained_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """needs_pretrained: refused by the protocol's precheck (so a board lists it as not
    applicable), allowed by a plain run (an ablation on purpose), accepted on a pretrained model."""
    from clbench import runner
    from clbench.tuning import precheck

    class AdaptsPretrained(Method):
        """Tunes modules of a frozen pretrained model."""

        needs_pretrained = True

    with METHODS.override("naive", AdaptsPretrained):
        cfg = tiny_config(tmp_path, "naive")
        with pytest.raises(IncompatibleError, match=r"method 'naive' tunes .* starts untrained on scenario"):
            precheck(cfg)
        assert run(cfg).metrics["acc"] >= 0.0
        monkeypatch.setattr(runner, "is_pretrained", lambda model: True)
        precheck(cfg)  # a model that arrives pretrained: ranked

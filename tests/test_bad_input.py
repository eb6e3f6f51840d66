"""Bad input gets one clear error; files are written as the umask says; boards stay in their folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clbench.config import build_run_config, load_yaml
from clbench.errors import ClbenchError, ConfigError
from clbench.runner import run, run_dir_for
from clbench.testing import tiny_config


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_learning_rates_are_refused_before_anything_runs(value: str) -> None:
    with pytest.raises(ConfigError, match=r"trainer.lr.*a finite value >= 0"):
        build_run_config({"trainer.lr": float(value)})


@pytest.mark.parametrize("seed", [-1, 2**63, 2**70])
def test_seeds_outside_63_bits_are_refused(seed: int) -> None:
    with pytest.raises(ConfigError, match=r"seed.*\[0, 2\*\*63\)"):
        build_run_config({"seed": seed})


def test_yaml_with_duplicate_keys_tags_or_bad_bytes_is_one_clear_error(tmp_path: Path) -> None:
    cases = {"dup.yaml": "trainer:\n  lr: 0.1\n  lr: 0.2\n", "tag.yaml": "trainer: !!python/object:os.system {}\n",
             "broken.yaml": "trainer: [1, 2\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "latin1.yaml").write_bytes("method: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        load_yaml(tmp_path / "dup.yaml")
    for name in ("tag.yaml", "broken.yaml", "latin1.yaml"):
        with pytest.raises(ConfigError, match=r"config=.*a readable UTF-8 YAML file"):
            load_yaml(tmp_path / name)
    (tmp_path / "ok.yaml").write_text("trainer:\n  lr: 0.1\n")
    assert load_yaml(tmp_path / "ok.yaml") == {"trainer.lr": 0.1}


def test_a_runs_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(ConfigError, match="tracking.runs_dir"):
        run(tiny_config(tmp_path, "naive"))


def test_a_truncated_results_json_is_one_clear_error_on_resume(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "naive")
    run(cfg)
    path = run_dir_for(cfg) / "results.json"
    path.write_text(path.read_text()[:200])
    with pytest.raises(ClbenchError, match=r"results.json is damaged .* --force"):
        run(cfg, resume=True)
    assert run(cfg, force=True).status == "finished"


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        res = run(tiny_config(tmp_path, "naive"))
    finally:
        os.umask(old)
    for name in ("results.json", "R.json", "checkpoint.pt"):
        assert (Path(res.run_dir) / name).stat().st_mode & 0o777 == 0o644, name


def test_render_never_writes_through_a_symlinked_track_folder(tmp_path: Path) -> None:
    from clbench.leaderboard import render

    boards = tmp_path / "boards"
    boards.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "health.json").write_text(json.dumps({"criteria": [], "passed": True}))
    (boards / "x").symlink_to(outside, target_is_directory=True)
    assert render(boards) == [boards / "index.html"]  # the index over tracks, which lists none
    assert not (outside / "README.md").exists() and not (outside / "index.html").exists()
    assert 'href="x/' not in (boards / "index.html").read_text()


def test_a_run_directory_has_one_owner_at_a_time(tmp_path: Path) -> None:
    import fcntl

    cfg = tiny_config(tmp_path, "naive")
    first = run(cfg)
    lock = run_dir_for(cfg).with_name(run_dir_for(cfg).name + ".lock")
    with open(lock, "a+") as fh:  # another owner (flock: a second open file conflicts, same process or not)
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for kwargs in ({"resume": True}, {"force": True}, {}):
            if kwargs.get("resume"):
                assert run(cfg, **kwargs).R == first.R  # a finished run is only read
                continue
            with pytest.raises(ClbenchError, match="is in use by another process"):
                run(cfg, **kwargs)
        assert (Path(first.run_dir) / "results.json").is_file()  # --force deleted nothing
    assert run(cfg, force=True).R == first.R  # free again once the owner lets go


def test_a_damaged_checkpoint_is_refused_with_one_line_naming_force(tmp_path: Path) -> None:
    import torch

    from clbench.checkpoint import CHECKPOINT, DIGEST, load_checkpoint, save_checkpoint

    run_dir = tmp_path / "run"
    save_checkpoint(run_dir, {"model": {"w": torch.arange(1024, dtype=torch.float32)}, "progress": {"done": 1}})
    assert load_checkpoint(run_dir)["progress"] == {"done": 1}  # type: ignore[index]
    raw = torch.load(run_dir / CHECKPOINT, weights_only=True)
    raw["model"]["w"][100:1100] = 0.0  # 4 kB of one tensor changed on disk, the digest kept
    torch.save(raw, run_dir / CHECKPOINT)
    with pytest.raises(ClbenchError, match=r"checkpoint .* is damaged \(its content does not match its sha256\).*--force"):
        load_checkpoint(run_dir)
    data = (run_dir / CHECKPOINT).read_bytes()
    (run_dir / CHECKPOINT).write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ClbenchError, match=r"is damaged \(.*\); rerun with --force"):
        load_checkpoint(run_dir)
    del raw[DIGEST]  # written before digests existed: loads unchecked
    torch.save(raw, run_dir / CHECKPOINT)
    assert load_checkpoint(run_dir) is not None


def test_an_interrupted_protocol_says_how_to_continue(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import clbench.tuning
    from clbench.cli import main

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(clbench.tuning, "run_protocol", interrupted)
    assert main(["protocol", "method=naive", "--track", "vision_cil"]) == 130
    err = capsys.readouterr().err
    assert "rerun the same command to continue" in err and "--resume" not in err


def test_a_store_left_broken_by_an_interrupted_migration_is_repaired(tmp_path: Path) -> None:
    """Leftover ``_alembic_tmp_*`` tables: a copy beside its intact table is dropped, a copy whose
    table is gone is renamed back; the next run is recorded as usual."""
    import sqlite3

    from clbench.config import TrackingConfig
    from clbench.tracking import MlflowRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = MlflowRun(TrackingConfig(uri=uri))
    assert first.start("a", {"trainer": {"lr": 0.1}}, {}) is not None
    first.end("FINISHED")
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        con.execute("CREATE TABLE _alembic_tmp_metrics AS SELECT * FROM metrics")
        con.execute("ALTER TABLE params RENAME TO _alembic_tmp_params")
    second = MlflowRun(TrackingConfig(uri=uri))
    with pytest.warns(UserWarning, match=r"_alembic_tmp_metrics \(dropped.*_alembic_tmp_params \(renamed back"):
        rid = second.start("b", {"trainer": {"lr": 0.2}}, {})
    second.end("FINISHED")
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        lrs = sorted(r[0] for r in con.execute("SELECT value FROM params WHERE key='trainer.lr'"))
    assert not [t for t in tables if t.startswith("_alembic_tmp_")] and rid is not None
    assert lrs == ["0.1", "0.2"]  # the first run's params survived the repair

"""CLI smoke tests: list, run, show, bench validation, and bad input exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from clbench.cli import main
from clbench.testing import register_tiny

TINY = ["scenario=tiny", "model=mlp", "model.hidden=16", "trainer.epochs=1", "trainer.progress=false",
        "tracking.mlflow=false"]


def test_list_shows_methods_and_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("naive", "joint", "split_mnist", "rotated_mnist", "permuted_mnist", "split_digits", "mlp"):
        assert name in out
    assert "Naive sequential fine-tuning" in out


def test_run_then_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    register_tiny()
    assert main(["run", "method=naive", *TINY]) == 0
    out = capsys.readouterr().out
    assert "Accuracy matrix R" in out and "| acc |" in out
    run_dir = out.strip().splitlines()[-1].split(": ", 1)[1]
    assert main(["show", run_dir]) == 0
    assert "naive on tiny (seed 0)" in capsys.readouterr().out


def test_run_with_yaml_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    register_tiny()
    f = tmp_path / "run.yaml"
    f.write_text("method: {name: joint, reset: false}\nscenario: tiny\ntrainer: {epochs: 1, progress: false}\n"
                 "tracking: {mlflow: false}\nmodel: {name: mlp, hidden: 16}\n")
    assert main(["run", "--config", str(f)]) == 0
    assert "joint on tiny" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "method=nope"], "invalid method='nope'; allowed:"),
        (["run", "method=naive", "trainer.lr=fast"], "invalid trainer.lr='fast'; allowed: a number"),
        (["run", "method=naive", "scenario=nope"], "invalid scenario='nope'; allowed:"),
        (["bench"], "bench needs a method"),
        (["bench", "method=nope"], "invalid method='nope'"),
        (["show", "no/such/run"], "no results.json"),
    ],
)
def test_bad_input_exits_2_with_one_message(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not Path("runs").exists()


def test_show_by_mlflow_run_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clbench.config import build_run_config
    from clbench.options import parse_overrides
    from clbench.runner import run

    register_tiny()
    overrides = [a for a in TINY if not a.startswith("tracking.")] + ["method=naive"]
    res = run(build_run_config(parse_overrides(overrides)))
    run_id = res.mlflow.run_id
    assert run_id and main(["show", run_id]) == 0
    assert "naive on tiny (seed 0)" in capsys.readouterr().out
    assert main(["show", "0123456789abcdef0123456789abcdef"]) == 2


@pytest.mark.integration  # runs the CLI in child processes and kills one
def test_sigterm_marks_the_run_killed_and_resume_finishes_it(tmp_path: Path) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys

    script = (
        "import time, sys\n"
        "from clbench.testing import register_tiny\n"
        "from clbench.registry import METHODS\n"
        "from clbench.protocol import Method\n"
        "class Slow(Method):\n"
        "    def on_experience_start(self, exp, model):\n"
        "        if exp.index == 1:\n"
        "            print('ready', flush=True); time.sleep(60)\n"
        "register_tiny()\n"
        "from clbench.cli import main\n"
        "with METHODS.override('naive', Slow):\n"  # loads the plug-ins, then replaces one
        "    sys.exit(main(sys.argv[1:]))\n"
    )
    args = [sys.executable, "-c", script, "run", "method=naive", *TINY]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ})
    try:
        # "ready" is printed inside experience 1, so the kill always lands there, however slow the start
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=240) == 130  # the timeout only guards against a hang
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    [status] = list((tmp_path / "runs").rglob("status.json"))
    assert json.loads(status.read_text())["status"] == "killed"
    assert (status.parent / "checkpoint.pt").is_file()  # experience 0 kept
    plain = "from clbench.testing import register_tiny\nregister_tiny()\nimport sys\n" \
            "from clbench.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    resumed = subprocess.run([sys.executable, "-c", plain, "run", "method=naive", *TINY, "--resume"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and not status.exists()
    assert (status.parent / "results.json").is_file()

"""A protocol run logged to a real MLflow tracking server (``mlflow server`` on loopback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from clbench import tuning
from clbench.tuning import Protocol, run_protocol

pytestmark = pytest.mark.integration  # starts a server: `make test-integration`


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # a hang guard: start-up took 49 s on a loaded 2-core machine
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("mlflow server did not start")
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_protocol_runs_are_nested_in_a_tracking_server(tmp_path: Path, mlflow_server: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    tiny = Protocol(track="tiny", tune_scenario="split_digits", eval_scenario="split_mnist", n_trials=2,
                    tune_options={"image_size": 28, "n_experiences": 2}, eval_options={"n_experiences": 2},
                    fixed={"model": "mlp", "trainer.epochs": 1, "trainer.optimizer": "adamw"}, eval_seeds=(0,))
    monkeypatch.setitem(tuning.PROTOCOLS, "tiny", tiny)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rec = run_protocol("naive", "tiny", {"tracking.uri": mlflow_server}, runs_dir=str(tmp_path), progress=False)
    assert rec.mlflow.tracking_uri == mlflow_server
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("tiny")  # protocol runs: one experiment per track
    runs = client.search_runs([exp.experiment_id])
    parent = client.get_run(rec.mlflow.parent_run_id)
    assert parent.info.status == "FINISHED" and "eval/acc_mean" in parent.data.metrics
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 + 1 and all(r.info.status == "FINISHED" for r in children)
    assert all("acc" in r.data.metrics for r in children)
    assert os.path.isfile(Path(rec.evaluation.run_dirs[0] or "") / "results.json")

"""Several processes starting MLflow runs together on a fresh SQLite store all get recorded."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

WORKER = """
import sys, time, warnings
from pathlib import Path
from clbench.config import TrackingConfig
from clbench.tracking import MlflowRun
db, go, i = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
import mlflow  # imported before the barrier so that the processes reach the store together
while not go.exists():
    time.sleep(0.01)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    run = MlflowRun(TrackingConfig(uri=f"sqlite:///{db}", experiment="race"))
    rid = run.start(f"worker{i}", {"i": i}, {"worker": i})
    run.log_metrics({"acc": 0.5}, step=0)
    run.end("FINISHED")
failed = [str(w.message) for w in caught if str(w.message).startswith("MLflow ")]
if failed or rid is None:  # a failed MLflow call only warns: make it fail the worker
    sys.exit(f"worker {i}: {failed}")
print(rid)
"""


def test_processes_starting_together_on_a_fresh_store_are_all_recorded(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    db, go, n = tmp_path / "mlflow.db", tmp_path / "go", 4
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(db), str(go), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    time.sleep(1.0)  # not a timing assertion: the barrier file releases every worker at once
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [err[-2000:] for _, err in outs]
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.data.tags["worker"] for r in runs) == [str(i) for i in range(n)]
    assert all(r.info.status == "FINISHED" and r.data.metrics["acc"] == 0.5 for r in runs)

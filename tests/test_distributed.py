"""Data parallel through the same trainer: 2 CPU processes (gloo) == 1 process, up to float sums."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ARGS = ["scenario=split_digits", "scenario.n_experiences=2", "model=mlp", "trainer.epochs=1",
        "trainer.batch_size=33", "trainer.lr=0.05", "trainer.optimizer=sgd", "tracking.mlflow=false",
        "eval.validation=false"]


def _run(tmp: Path, method: str, procs: int) -> Path:
    runs = tmp / f"p{procs}"
    cmd = [sys.executable, "-m", "clbench.cli", "run", f"method={method}", *ARGS, f"tracking.runs_dir={runs}"]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--standalone", "-m", "clbench.cli", "run", f"method={method}", *ARGS,
               f"tracking.runs_dir={runs}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    return next(runs.glob("split_digits/*/*/results.json")).parent


@pytest.mark.parametrize("method", ["naive", "migu"])
def test_two_processes_match_one(tmp_path: Path, method: str) -> None:
    one, two = _run(tmp_path, method, 1), _run(tmp_path, method, 2)
    r1 = json.loads((one / "results.json").read_text())
    r2 = json.loads((two / "results.json").read_text())
    assert r2["env"]["world_size"] == 2 and r1["env"]["world_size"] == 1
    # the same global batches and steps; gradients summed over the two shards before the
    # method's gradient hook (MIGU masks the reduced gradient), so the weights agree
    assert r1["cost"]["optimizer_steps"] == r2["cost"]["optimizer_steps"]
    w1 = torch.load(one / "checkpoint.pt", weights_only=True)["model"]
    w2 = torch.load(two / "checkpoint.pt", weights_only=True)["model"]
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k
    assert sum(r1["R"], []) == pytest.approx(sum(r2["R"], []), abs=0.01)
    # the replica (rank 1) wrote only under _replicas/, and rank 0 wrote the run directory
    assert (two.parents[2] / "_replicas" / "rank1").is_dir()

"""Protocol workers die with the process that spawned them (no orphan claiming trials), and
concurrent workers take each queued trial once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

PARENT = """
import sys
sys.path.insert(0, sys.argv[1])
from clbench.workers import run_workers
from sleepmod import sleeper
run_workers(sleeper, (sys.argv[1],), 2, "test")
"""
# a worker that records its pid and would otherwise run for minutes (a module the spawned
# workers can import by name)
SLEEPER = """
import os, time
from pathlib import Path

def sleeper(folder):
    Path(folder, f"{os.getpid()}.pid").write_text("")
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    (tmp_path / "sleepmod.py").write_text(SLEEPER)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)], cwd=Path(__file__).parents[1])
    deadline = time.monotonic() + 120  # a bound on waiting for the workers to start, not a timed claim
    while len(list(tmp_path.glob("*.pid"))) < 2:
        assert parent.poll() is None and time.monotonic() < deadline, "workers did not start"
        time.sleep(0.2)
    workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 60
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [w for w in workers if _alive(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, f"orphan workers {alive} outlived their parent"


def _claim_all(url: str, name: str, out: str, barrier: Any) -> None:
    """A worker process: claim trials until none waits, writing the numbers it got to ``out``."""
    from clbench.study import load_optuna, storage
    from clbench.workers import claim

    optuna = load_optuna()
    store = storage(url)
    study = optuna.load_study(study_name=name, storage=store)
    got = []
    barrier.wait()  # all claim at once
    while (trial := claim(study, store)) is not None:
        got.append(trial.number)
    Path(out).write_text(json.dumps(got))


def test_concurrent_claims_from_one_sqlite_queue_take_each_trial_once(tmp_path: Path) -> None:
    """Processes claiming from one SQLite study at the same moment never take the same trial
    (SQLite ignores Optuna's SELECT ... FOR UPDATE, hence clbench.study.state_lock), and together
    take every trial; claiming creates no trial."""
    import multiprocessing as mp

    from clbench.study import load_optuna, storage

    optuna = load_optuna()
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="queue", storage=storage(url))
    for slot in range(60):
        study.enqueue_trial({"x": slot}, user_attrs={"slot": slot})
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_claim_all, args=(url, "queue", str(tmp_path / f"{k}.json"), barrier))
             for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    claimed = [n for k in range(3) for n in json.loads((tmp_path / f"{k}.json").read_text())]
    assert sorted(claimed) == list(range(60))  # none twice, none lost
    assert len(study.trials) == 60
    assert all(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)

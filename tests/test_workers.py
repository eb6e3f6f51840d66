"""Protocol workers die with the process that spawned them (no orphan claiming trials)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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

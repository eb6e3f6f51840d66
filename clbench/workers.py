"""Owns who runs a tuning phase's trials: atomic claims of waiting trials, heartbeats,
requeueing of trials whose worker is gone, and the worker processes (which die with the process
that spawned them). The studies themselves are opened by :mod:`clbench.study`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from clbench.errors import ClbenchError
from clbench.study import load_optuna

HEARTBEAT_S = 10.0  # a running trial's worker refreshes its heartbeat this often
STALE_AFTER_S = 120.0  # shared storage: a running trial silent this long is requeued


def requeue(study: Any, older_than: float | None) -> int:
    """RUNNING trials whose worker is gone go back to WAITING (same trial, same slot, same params)."""
    optuna = load_optuna()
    n = 0
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        beat = float(t.user_attrs.get("heartbeat", 0.0))
        if older_than is None or now - beat > older_than:
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.WAITING)
            n += 1
    return n


def claim(study: Any) -> Any:
    """Atomically take one WAITING trial (row lock in PostgreSQL, write lock in SQLite)."""
    optuna = load_optuna()
    for _ in range(50):
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if not waiting:
            return None
        for t in sorted(waiting, key=lambda t: t.number):
            try:
                if study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.RUNNING):
                    return optuna.trial.Trial(study, t._trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            except Exception:  # noqa: BLE001 - sqlite "database is locked": retry
                time.sleep(0.2)
    return None


@contextmanager
def heartbeat(trial: Any) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while True:
            with suppress(Exception):  # finished meanwhile, or a storage hiccup
                trial.set_user_attr("heartbeat", time.time())
            if stop.wait(HEARTBEAT_S):
                return

    th = threading.Thread(target=beat, daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join()


def tell(study: Any, trial: Any, state: Any, value: float | None = None) -> None:
    optuna = load_optuna()
    # another worker that took over a stale trial may have told it already
    with suppress(RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
        study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)


def _orphan_proof(parent: int, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    """Run ``target(*args)`` in a worker that dies with the process that spawned it: Linux's
    parent-death signal where available, else a thread that watches the parent's pid. A worker
    left running after a ``kill -9`` of its parent would keep claiming trials that a rerun
    requeues, so trials would run twice."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    if not sys.platform.startswith("linux"):
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    target(*args)


def run_workers(target: Callable[..., None], args: tuple[Any, ...], workers: int, phase: str) -> None:
    """``target(*args)`` in this process (one worker) or in ``workers`` spawned processes."""
    if workers <= 1:
        target(*args)
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_orphan_proof, args=(os.getpid(), target, args)) for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise ClbenchError(f"{len(bad)} of {workers} {phase} workers exited with codes {bad}; "
                           "rerun the same command to resume")


def until_done(shared: bool, study: Any, target: Callable[..., None], args: tuple[Any, ...],
               workers: int, phase: str) -> None:
    """Run the phase; with ``shared`` storage (other nodes may hold trials), wait for the other
    nodes and take over the trials of dead ones."""
    optuna = load_optuna()
    live = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    while True:
        run_workers(target, args, workers, phase)
        if not study.get_trials(deepcopy=False, states=live):
            return
        if not requeue(study, STALE_AFTER_S if shared else None):
            time.sleep(5)

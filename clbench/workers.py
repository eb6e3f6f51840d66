"""Owns who runs a tuning phase's trials: atomic claims of waiting trials, heartbeats,
requeueing of trials whose worker is gone, and the worker processes (which die with the process
that spawned them). The studies themselves are opened by :mod:`clbench.study`."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from clbench.errors import ClbenchError
from clbench.study import load_optuna

HEARTBEAT_S = 10.0  # a running trial's worker refreshes its heartbeat this often
STALE_AFTER_S = 120.0  # a running trial whose heartbeat is older than this has lost its worker


def requeue(study: Any) -> int:
    """RUNNING trials whose worker is gone go back to WAITING (same trial, same slot, same params).

    A worker is alive while its heartbeat is fresh (younger than :data:`STALE_AFTER_S`) and, on
    this host, while its process exists too; a trial of a live worker is never requeued, so a
    second protocol process on the same study cannot make a trial run twice."""
    optuna = load_optuna()
    n = 0
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not worker_alive(t.user_attrs, now):
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.WAITING)
            n += 1
    return n


def worker_alive(attrs: Mapping[str, Any], now: float) -> bool:
    """Whether the worker that claimed a trial (its ``user_attrs``) is still running it."""
    if now - float(attrs.get("heartbeat", 0.0)) > STALE_AFTER_S:
        return False
    if attrs.get("worker_host") != socket.gethostname():
        return True  # another node: its heartbeat is all there is to go by
    pid = attrs.get("worker_pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user holds that pid: not our worker
        return False
    return True


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
                    trial = optuna.trial.Trial(study, t._trial_id)
                    for key, value in (("worker_host", socket.gethostname()), ("worker_pid", os.getpid()),
                                       ("heartbeat", time.time())):
                        trial.set_user_attr(key, value)
                    return trial
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
    run_slices(target, [args] * workers, phase)


def run_slices(target: Callable[..., None], arg_sets: list[tuple[Any, ...]], phase: str) -> None:
    """``target(*args)`` for each entry of ``arg_sets``, each in its own spawned process (all at
    once; each dies with this process)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_orphan_proof, args=(os.getpid(), target, a)) for a in arg_sets]
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
        raise ClbenchError(f"{len(bad)} of {len(procs)} {phase} workers exited with codes {bad}; "
                           "rerun the same command to resume")


def until_done(study: Any, target: Callable[..., None], args: tuple[Any, ...], workers: int, phase: str) -> None:
    """Run the phase until no trial waits or runs: wait for trials held by live workers (other
    processes or nodes sharing the storage) and take over those of dead ones."""
    optuna = load_optuna()
    live = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    while True:
        run_workers(target, args, workers, phase)
        if not study.get_trials(deepcopy=False, states=live):
            return
        if not requeue(study):  # trials of live workers (other processes or nodes) are waited for
            time.sleep(5)

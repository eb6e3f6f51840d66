"""Owns who runs a tuning phase's trials: atomic claims of waiting trials, heartbeats,
requeueing of trials whose worker is gone, and the worker processes (which die with the process
that spawned them). The studies themselves are opened by :mod:`clbench.study`.

Only Optuna's public API is used: ``Study.get_trials``, ``Study.tell``, ``optuna.trial.Trial(study,
id)``, ``Trial.set_user_attr`` / ``user_attrs`` and, for the one state change the ``Study`` API has no
call for, the storage object that :func:`clbench.study.storage` built (see :func:`_set_state`)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from clbench.errors import ClbenchError
from clbench.study import load_optuna, state_lock

# A worker's heartbeat is a user attribute of its trial, not Optuna's (RDBStorage(heartbeat_interval=...),
# experimental in 5.0.0): that one is recorded by trial id, only Study.optimize records it, a stale
# trial is failed and copied (see _set_state), and staleness can only be made by waiting.
HEARTBEAT_S = 10.0  # a running trial's worker refreshes its heartbeat this often
STALE_AFTER_S = 120.0  # a running trial whose heartbeat is older than this has lost its worker


def _set_state(study: Any, store: Any, number: int, state: Any) -> int | None:
    """Set trial ``number``'s state in one storage transaction; its storage id when this call made
    the change, ``None`` when the trial was taken (RUNNING asked of a trial no longer WAITING) or
    finished meanwhile.

    The queue's only state change outside ``Study.tell``. Checked against Optuna 5.0.0:

    * ``Study.ask()`` claims the oldest WAITING trial with this very call (``set_trial_state_values``
      to RUNNING under ``SELECT ... FOR UPDATE``, false when another process took it), but when no
      trial waits it *creates* a new, sampled one. Two workers racing for the last queued slot would
      leave such an extra trial in the study (counted in the budget), and no public call deletes a
      trial. Claiming here returns nothing instead.
    * Optuna's own recovery of a dead worker's trial (``fail_stale_trials`` with the experimental
      ``RetryHeartbeatStaleTrialCallback``, ``RetryFailedTrialCallback`` deprecated since 4.9) fails it
      and enqueues a *copy* under a new number: every interruption would add a FAIL trial to the
      budget, and failing then copying is two writes (a crash in between loses the slot). Putting the
      same trial back to WAITING is one write: same number, slot, parameters and record.

    ``get_study_id_from_name``, ``get_trial_id_from_study_id_trial_number`` and
    ``set_trial_state_values`` are ``optuna.storages.BaseStorage``'s abstract interface (what every
    storage backend implements); they are called on the storage object clbench built and handed to
    the study, with the trial's public ``number``: no private attribute of a study or trial."""
    optuna = load_optuna()
    row = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(study.study_name), number)
    try:
        with state_lock(store):
            return int(row) if store.set_trial_state_values(row, state) else None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None


def requeue(study: Any, store: Any) -> int:
    """RUNNING trials whose worker is gone go back to WAITING (same trial, same slot, same params).

    A worker is alive while its heartbeat is fresh (younger than :data:`STALE_AFTER_S`) and, on
    this host, while its process exists too; a trial of a live worker is never requeued, so a
    second protocol process on the same study cannot make a trial run twice."""
    optuna = load_optuna()
    n = 0
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not worker_alive(t.user_attrs, now) and _set_state(
                study, store, t.number, optuna.trial.TrialState.WAITING) is not None:
            n += 1
    return n


def release(study: Any, store: Any, trial: Any) -> None:
    """Put a trial this worker claimed back in the queue (the worker stops before telling it).
    Nothing happens when it was finished, or requeued and claimed by another worker, meanwhile."""
    optuna = load_optuna()
    with suppress(Exception):  # best effort: a rerun requeues it anyway once this worker is gone
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.number == trial.number and _mine(t.user_attrs):
                _set_state(study, store, t.number, optuna.trial.TrialState.WAITING)


def _mine(attrs: Mapping[str, Any]) -> bool:
    return attrs.get("worker_host") == socket.gethostname() and attrs.get("worker_pid") == os.getpid()


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


def claim(study: Any, store: Any) -> Any:
    """Atomically take the oldest WAITING trial (row lock in PostgreSQL, write lock in SQLite), as
    an ``optuna.trial.Trial``; ``None`` when no trial waits (no trial is ever created here)."""
    optuna = load_optuna()
    for _ in range(50):
        # filtered here, not with states=(WAITING,): Optuna's InMemoryStorage (5.0.0) answers that
        # query from the first trial it last saw waiting on, so it would miss a requeued one
        waiting = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.WAITING]
        if not waiting:
            return None
        for t in sorted(waiting, key=lambda t: t.number):
            try:
                trial = _take(study, store, t.number)
            except Exception:  # noqa: BLE001 - sqlite "database is locked": retry
                time.sleep(0.2)
                continue
            if trial is not None:
                return trial
    return None


def _take(study: Any, store: Any, number: int) -> Any:
    optuna = load_optuna()
    row = _set_state(study, store, number, optuna.trial.TrialState.RUNNING)
    if row is None:
        return None  # another worker took it first
    try:
        trial = optuna.trial.Trial(study, row)
        for key, value in (("worker_host", socket.gethostname()), ("worker_pid", os.getpid()),
                           ("heartbeat", time.time())):
            trial.set_user_attr(key, value)
    except BaseException:  # claimed but not marked as ours: back to the queue at once
        with suppress(Exception):
            _set_state(study, store, number, optuna.trial.TrialState.WAITING)
        raise
    return trial


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


def tell(study: Any, store: Any, trial: Any, state: Any, value: float | None = None) -> None:
    """Finish a claimed trial (``Study.tell``), under the same lock as claims and requeues."""
    optuna = load_optuna()
    # another worker that took over a stale trial may have told it already
    with state_lock(store), suppress(RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
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


def until_done(study: Any, store: Any, target: Callable[..., None], args: tuple[Any, ...], workers: int,
               phase: str) -> None:
    """Run the phase until no trial waits or runs: wait for trials held by live workers (other
    processes or nodes sharing the storage) and take over those of dead ones."""
    optuna = load_optuna()
    live = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    while True:
        run_workers(target, args, workers, phase)
        if not study.get_trials(deepcopy=False, states=live):
            return
        if not requeue(study, store):  # trials of live workers (other processes or nodes) are waited for
            time.sleep(5)

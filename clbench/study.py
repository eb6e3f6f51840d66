"""Owns where a tuning protocol's trials live (the storage side of clbench.tuning).

The declared protocols (one per track, ``PROTOCOLS``), a protocol run's identity (``ProtocolRun``:
study name, directory, Optuna storage URL, run configurations), and its Optuna studies: creation
and slot queueing; the storage object behind them (:func:`storage`). Who takes the trials
(claims, heartbeats, requeueing, worker processes) is :mod:`clbench.workers`. What a slot runs,
its objective and the chosen hyperparameters belong to ``clbench.tuning``; this module never
imports it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clbench.errors import ClbenchError, ConfigError

PROTOCOL_RUNS_DIR = "runs/protocol"


@dataclass(frozen=True)
class Protocol:
    """One track's fixed protocol: the same budget and settings for every method.

    ``n_trials == 0`` is a zero-budget protocol: no tuning scenario (``tune_scenario`` is ``""``),
    no tuning phase; every method is evaluated with its defaults (H* = {}). ``rank_by`` is the
    metric its board ranks by (direction: :func:`clbench.metrics.higher_is_better`)."""

    track: str
    tune_scenario: str
    eval_scenario: str
    n_trials: int
    tune_options: dict[str, Any] = field(default_factory=dict)
    eval_options: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    sampler: str = "random_grid"  # seeded draw without replacement from the grids (clbench.search.draw)
    sampler_seed: int = 0
    tuning_seeds: tuple[int, ...] = (0,)
    eval_seeds: tuple[int, ...] = (0, 1, 2)
    objective: str = "acc"  # final average accuracy on the tuning scenario's validation split
    name: str = "reality_check"
    version: str = "1"
    retired: bool = False  # the track's board is superseded (kept readable, not extended)
    rank_by: str = "acc"
    shown: tuple[str, ...] = ()  # metrics the board shows beside it
    kind: str = "labelled"  # the track's kind (clbench.tracks.KINDS): test_time runs record R as 1 x D
    # method -> {dotted key: values}: grids this track widens (track.yaml ``search``)
    search: dict[str, dict[str, tuple[Any, ...]]] = field(default_factory=dict)

    @property
    def tuned(self) -> bool:
        """Whether the protocol has a tuning phase (a budget of one trial or more)."""
        return self.n_trials > 0

    def space_for(self, method: str, registered: Mapping[str, Any]) -> dict[str, Any]:
        """``method``'s search space on this track: its registered grids (``registered``, name ->
        :class:`clbench.search.Grid`), with the ones the track widens replaced."""
        from clbench.search import widen

        wider = self.search.get(method)
        return widen(registered, wider, f"{self.track}: search.{method}") if wider else dict(registered)

    def record(self) -> dict[str, Any]:
        """What protocol.json stores under ``protocol``."""
        return {"name": self.name, "version": self.version, "n_trials": self.n_trials,
                "sampler": self.sampler, "sampler_seed": self.sampler_seed,
                "objective": self.objective, "objective_split": "val",
                "tuning_seeds": list(self.tuning_seeds)}


def protocol_of(track: Any) -> Protocol:
    """The protocol a track declares (``leaderboards/<track>/track.yaml``, see clbench.tracks)."""
    assert track.has_protocol
    tune = track.tune
    return Protocol(track=track.name, tune_scenario=tune.name if tune else "", eval_scenario=track.evaluate.name,
                    n_trials=track.n_trials, tune_options=dict(tune.options) if tune else {},
                    eval_options=dict(track.evaluate.options), fixed=dict(track.fixed),
                    eval_seeds=track.eval_seeds, retired=track.status == "retired",
                    rank_by=track.rank_by, shown=tuple(track.shown), kind=track.kind,
                    search={m: dict(g) for m, g in track.search.items()})


def _declared() -> dict[str, Protocol]:
    from clbench.tracks import all_tracks

    return {name: protocol_of(t) for name, t in all_tracks().items() if t.has_protocol}


# Every track that declares a tuning scenario or a zero budget has a protocol (retired ones too,
# so their boards stay verifiable); tests may add entries.
PROTOCOLS: dict[str, Protocol] = _declared()


def protocol_for(track: str) -> Protocol:
    if track not in PROTOCOLS:
        raise ConfigError("track", track, sorted(PROTOCOLS))
    return PROTOCOLS[track]


# --------------------------------------------------------------------------- one protocol run


def _scenario_values(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    return {"scenario": name, **{f"scenario.{k}": v for k, v in options.items()}}


def _study_key(p: Protocol, method: str, overrides: Mapping[str, Any], space: dict[str, Any]) -> str:
    blob = json.dumps({"protocol": p.record(), "tune": [p.tune_scenario, p.tune_options],
                       "eval": [p.eval_scenario, p.eval_options, list(p.eval_seeds)], "fixed": p.fixed,
                       "overrides": dict(overrides), "space": space, "method": method},
                      sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


@dataclass
class ProtocolRun:
    """Everything one protocol run needs; picklable, so worker processes get a copy."""

    method: str
    protocol: Protocol
    overrides: dict[str, Any]
    storage: str  # "" = sqlite file in the protocol directory
    runs_dir: str = PROTOCOL_RUNS_DIR
    progress: bool = True
    # where inputs are (clbench.tracks.LOCATION_KEYS: data folder, weights file, cache): in every
    # run's settings, never in the study name nor in protocol.json's fixed settings
    locations: dict[str, str] = field(default_factory=dict)

    @property
    def space(self) -> dict[str, Any]:
        from clbench.registry import METHODS, load_plugins

        load_plugins()
        return self.protocol.space_for(self.method, METHODS.get(self.method).search_space)

    @property
    def name(self) -> str:
        from clbench.search import space_record

        key = _study_key(self.protocol, self.method, self.overrides, space_record(self.space))
        return f"{self.protocol.track}-{self.method}-{key}"

    @property
    def dir(self) -> Path:
        return Path(self.runs_dir) / self.protocol.track / self.method / self.name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.dir / 'optuna.db').resolve()}"

    @property
    def embedded(self) -> bool:
        return not self.storage

    def config(self, phase: str, params: Mapping[str, Any], seed: int, parent: str) -> Any:
        from clbench.config import build_run_config

        p = self.protocol
        if phase == "tune" and not p.tuned:
            raise ClbenchError(f"the {p.track} protocol has a zero budget: no tuning phase, no tuning scenario")
        scen = (_scenario_values(p.tune_scenario, p.tune_options) if phase == "tune"
                else _scenario_values(p.eval_scenario, p.eval_options))
        values = {**p.fixed, **self.overrides, **params, **scen, **self.locations, "method": self.method, "seed": seed,
                  "tracking.runs_dir": str(self.dir / phase), "tracking.parent_run_id": parent,
                  "trainer.progress": False, "eval.validation": phase == "tune"}
        return build_run_config(values)


# --------------------------------------------------------------------------- Optuna studies


def load_optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@functools.cache
def storage(url: str) -> Any:
    """The process's one RDBStorage for ``url``: the studies opened on it and the queue's claims and
    requeues (:mod:`clbench.workers`, which needs this object, never a study's private one) share it."""
    optuna = load_optuna()
    if url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        store = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        db = make_url(url).database
        if db and db != ":memory:":
            _STATE_LOCKS[id(store)] = Path(db).with_name(Path(db).name + ".state.lock")
        return store
    return optuna.storages.RDBStorage(url)


_STATE_LOCKS: dict[int, Path] = {}  # id of a cached SQLite storage -> its lock file


@contextmanager
def state_lock(store: Any) -> Iterator[None]:
    """Hold while changing a trial's state in ``store``: an exclusive lock of the SQLite file's
    processes (other storages: nothing to hold).

    Optuna reads a trial's state and writes the new one in one session, under ``SELECT ... FOR
    UPDATE``: a row lock in PostgreSQL, but SQLite ignores it, and pysqlite only begins the
    transaction at the write, so two processes can both read WAITING and both claim the trial
    (seen with four processes claiming from one queue). The lock makes that read and write one
    step. Every process that changes states holds it, and a SQLite file is only shared on one host."""
    path = _STATE_LOCKS.get(id(store))
    if path is None:
        yield
        return
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """One local protocol process per directory (so its orphaned trials can be requeued)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise ClbenchError(f"another protocol process is using {path.parent}; wait for it or stop it") from exc
        yield


def open_study(pr: ProtocolRun, suffix: str, slots: list[dict[str, Any]], parent_attrs: dict[str, Any]) -> Any:
    """Create the study and enqueue its slots (only the creator does), or join an existing one."""
    optuna = load_optuna()
    store = storage(pr.storage_url)
    name = pr.name + suffix
    try:
        study = optuna.create_study(study_name=name, storage=store, direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=pr.protocol.sampler_seed))
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=store,
                                  sampler=optuna.samplers.RandomSampler(seed=pr.protocol.sampler_seed))
        created = False
    if created:
        for attr, value in parent_attrs.items():
            study.set_user_attr(attr, value)
        for slot, params in enumerate(slots):
            study.enqueue_trial(params, user_attrs={"slot": slot})
        study.set_user_attr("prepared", len(slots))
    deadline = time.monotonic() + 120
    while "prepared" not in study.user_attrs:  # another node is enqueueing right now
        if time.monotonic() > deadline:
            raise ClbenchError(f"study {name} in {pr.storage_url} was created but never prepared; "
                               "delete it or use another storage")
        time.sleep(1)
    return study


def study_exists(pr: ProtocolRun, suffix: str) -> bool:
    optuna = load_optuna()
    names = {s.study_name for s in optuna.get_all_study_summaries(storage(pr.storage_url))}
    return pr.name + suffix in names


def open_eval(pr: ProtocolRun, eval_slots: list[dict[str, Any]]) -> Any:
    """The evaluation study: one slot per seed (enqueued with the seed as the only parameter)."""
    optuna = load_optuna()
    store = storage(pr.storage_url)
    name = pr.name + "-eval"
    try:
        study = optuna.create_study(study_name=name, storage=store, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        return open_study(pr, "-eval", [], {})
    for slot, params in enumerate(eval_slots):
        study.enqueue_trial(params, user_attrs={"slot": slot, "seed": params["seed"]})
    study.set_user_attr("prepared", len(eval_slots))
    return study

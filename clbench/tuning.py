"""Owns the fixed tuning protocol (Cha & Cho, "Hyperparameters in CL: a Reality Check", TMLR 2025).

Phase 1 tunes a method on a *tuning scenario* (its validation split, never a test split) with a
budget identical for every method; phase 2 evaluates the chosen hyperparameters once per seed on
an *evaluation scenario* with the same configuration but disjoint data. A protocol run writes
``protocol.json`` (schema below) next to the evaluation runs; ``clbench submit`` turns it into a
leaderboard entry.

``protocol.json`` (schema_version 1)::

    {"schema_version": 1, "kind": "clbench-protocol", "status": "finished",
     "method": str, "track": str,
     "protocol": {"name", "version", "n_trials", "sampler", "sampler_seed", "objective",
                  "objective_split", "tuning_seeds"},
     "search_space": {param: {"type": "float"|"int"|"categorical", "low", "high", "log", "choices"}},
     "fixed": {dotted key: value},            # settings shared by both phases
     "tuning": {"scenario", "scenario_options", "scenario_version", "scenario_hash",
                "trials": [{"number", "params", "value", "state", "run_dir"}],
                "trials_used": int},         # every trial started, failed ones included
     "best_params": {param: value}, "best_value": float,
     "evaluation": {"scenario", "scenario_options", "scenario_version", "scenario_hash",
                    "seeds": [int], "run_dirs": [str]},   # each holds a results.json
     "mlflow": {"parent_run_id", "tracking_uri"},
     "env": {"git_commit", "packages", "hardware", "python"},
     "started_at", "finished_at"}
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clbench.checkpoint import atomic_write_json
from clbench.errors import ClbenchError, ConfigError

PROTOCOL_SCHEMA_VERSION = 1
PROTOCOL_RUNS_DIR = "runs/protocol"
HEARTBEAT_S = 10.0  # a running trial's worker refreshes its heartbeat this often
STALE_AFTER_S = 120.0  # shared storage: a running trial silent this long is requeued


@dataclass(frozen=True)
class Protocol:
    """One track's fixed protocol: the same budget and settings for every method."""

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

    def record(self) -> dict[str, Any]:
        """What protocol.json stores under ``protocol``."""
        return {"name": self.name, "version": self.version, "n_trials": self.n_trials,
                "sampler": self.sampler, "sampler_seed": self.sampler_seed,
                "objective": self.objective, "objective_split": "val",
                "tuning_seeds": list(self.tuning_seeds)}


def protocol_of(track: Any) -> Protocol:
    """The protocol a track declares (``leaderboards/<track>/track.yaml``, see clbench.tracks)."""
    assert track.tune is not None
    return Protocol(track=track.name, tune_scenario=track.tune.name, eval_scenario=track.evaluate.name,
                    n_trials=track.n_trials, tune_options=dict(track.tune.options),
                    eval_options=dict(track.evaluate.options), fixed=dict(track.fixed),
                    eval_seeds=track.eval_seeds)


def _declared() -> dict[str, Protocol]:
    from clbench.tracks import all_tracks

    return {name: protocol_of(t) for name, t in all_tracks().items() if t.tune is not None}


# Every track that declares a tuning scenario has a protocol (retired ones too, so their boards
# stay verifiable); tests may add entries.
PROTOCOLS: dict[str, Protocol] = _declared()


def protocol_for(track: str) -> Protocol:
    if track not in PROTOCOLS:
        raise ConfigError("track", track, sorted(PROTOCOLS))
    return PROTOCOLS[track]


# --------------------------------------------------------------------------- the protocol run


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

    @property
    def space(self) -> dict[str, Any]:
        from clbench.registry import METHODS, load_plugins

        load_plugins()
        return dict(METHODS.get(self.method).search_space)

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
        scen = (_scenario_values(p.tune_scenario, p.tune_options) if phase == "tune"
                else _scenario_values(p.eval_scenario, p.eval_options))
        values = {**p.fixed, **self.overrides, **params, **scen, "method": self.method, "seed": seed,
                  "tracking.runs_dir": str(self.dir / phase), "tracking.parent_run_id": parent,
                  "trainer.progress": False}
        return build_run_config(values)


def _log(pr: ProtocolRun, msg: str) -> None:
    if pr.progress:
        print(f"[protocol {pr.method}] {msg}", flush=True)


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _storage(url: str) -> Any:
    optuna = _optuna()
    if url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One local protocol process per directory (so its orphaned trials can be requeued)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise ClbenchError(f"another protocol process is using {path.parent}; wait for it or stop it") from exc
        yield


def _open_study(pr: ProtocolRun, suffix: str, slots: list[dict[str, Any]], parent_attrs: dict[str, Any]) -> Any:
    """Create the study and enqueue its slots (only the creator does), or join an existing one."""
    optuna = _optuna()
    storage = _storage(pr.storage_url)
    name = pr.name + suffix
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=pr.protocol.sampler_seed))
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage,
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


def _requeue(study: Any, older_than: float | None) -> int:
    """RUNNING trials whose worker is gone go back to WAITING (same trial, same slot, same params)."""
    optuna = _optuna()
    n = 0
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        beat = float(t.user_attrs.get("heartbeat", 0.0))
        if older_than is None or now - beat > older_than:
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.WAITING)
            n += 1
    return n


def _claim(study: Any) -> Any:
    """Atomically take one WAITING trial (row lock in PostgreSQL, write lock in SQLite)."""
    optuna = _optuna()
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
def _heartbeat(trial: Any) -> Iterator[None]:
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


def _compact(res: Mapping[str, Any]) -> dict[str, Any]:
    """What a study keeps of a run's results (enough for protocol.json without the run dir)."""
    return {k: res.get(k) for k in ("R", "R_val", "metrics", "general", "cost", "env", "run_dir", "scenario",
                                    "run_key")}


def _work(pr: ProtocolRun, suffix: str, phase: str, parent: str, params_of: Any) -> None:
    """Claim and run slots of one study until none is waiting."""
    from clbench.runner import run

    optuna = _optuna()
    study = _open_study(pr, suffix, [], {})
    space = pr.space
    while (trial := _claim(study)) is not None:
        slot = int(trial.user_attrs["slot"])
        trial.set_user_attr("worker", f"{platform.node()}:{os.getpid()}")
        params = params_of(trial, space)
        seed = int(params.pop("__seed__", pr.protocol.tuning_seeds[0]))
        with _heartbeat(trial):
            start = time.perf_counter()
            try:
                res = run(pr.config(phase, params, seed, parent), resume=True)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - a crashed or NaN trial counts in the budget
                trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
                _tell(study, trial, optuna.trial.TrialState.FAIL)
                _log(pr, f"{phase} slot {slot} {params} failed: {type(exc).__name__}: {exc}")
                continue
        value = _objective(res, phase)
        trial.set_user_attr("results", _compact(res))
        _tell(study, trial, optuna.trial.TrialState.COMPLETE, value)
        _log(pr, f"{phase} slot {slot} seed {seed} {params} -> {value:.4f} ({time.perf_counter() - start:.1f} s)")


def _tell(study: Any, trial: Any, state: Any, value: float | None = None) -> None:
    optuna = _optuna()
    # another worker that took over a stale trial may have told it already
    with suppress(RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
        study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)


def _objective(res: Mapping[str, Any], phase: str) -> float:
    """Tuning: final average accuracy on the tuning scenario's *validation* split; eval: test ACC."""
    import numpy as np

    if phase == "tune":
        rows = res.get("R_val") or []
        if not rows:
            raise ClbenchError("the tuning objective needs validation accuracies (eval.validation=true)")
        return float(np.mean(rows[-1]))
    return float(res["metrics"]["acc"])


def _tune_params(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    return {k: trial.suggest_categorical(k, list(space[k].values)) for k in sorted(space)}


def _eval_params(best: dict[str, Any]) -> Any:
    def params_of(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
        return {**best, "__seed__": int(trial.user_attrs["seed"])}

    return params_of


def _worker_main(pr: ProtocolRun, suffix: str, phase: str, parent: str, best: dict[str, Any] | None) -> None:
    _work(pr, suffix, phase, parent, _tune_params if best is None else _eval_params(best))


def _run_phase(pr: ProtocolRun, suffix: str, phase: str, parent: str, workers: int,
               best: dict[str, Any] | None) -> None:
    if workers <= 1:
        _worker_main(pr, suffix, phase, parent, best)
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(pr, suffix, phase, parent, best)) for _ in range(workers)]
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


def _until_done(pr: ProtocolRun, study: Any, suffix: str, phase: str, parent: str, workers: int,
                best: dict[str, Any] | None) -> None:
    """Run the phase; with shared storage, wait for other nodes and take over trials of dead ones."""
    optuna = _optuna()
    live = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    while True:
        _run_phase(pr, suffix, phase, parent, workers, best)
        if not study.get_trials(deepcopy=False, states=live):
            return
        if not _requeue(study, None if pr.embedded else STALE_AFTER_S):
            time.sleep(5)


def _parent_run(pr: ProtocolRun, study: Any) -> str:
    """The protocol's MLflow parent run (created once, id kept in the study)."""
    if "mlflow_parent_run_id" in study.user_attrs:
        return str(study.user_attrs["mlflow_parent_run_id"])
    from clbench.config import TrackingConfig
    from clbench.search import space_record
    from clbench.tracking import MlflowRun

    tracker = MlflowRun(TrackingConfig(**{k: v for k, v in _tracking_overrides(pr).items()}))
    rid = tracker.start(f"protocol-{pr.method}-{pr.protocol.track}",
                        {"protocol": pr.protocol.record(), "search_space": space_record(pr.space),
                         "tune_scenario": pr.protocol.tune_scenario, "eval_scenario": pr.protocol.eval_scenario,
                         "fixed": pr.protocol.fixed, "overrides": pr.overrides},
                        {"method": pr.method, "track": pr.protocol.track, "clbench.kind": "protocol",
                         "clbench.protocol_dir": str(pr.dir.resolve())}) or ""
    study.set_user_attr("mlflow_parent_run_id", rid)
    return rid


def _tracking_overrides(pr: ProtocolRun) -> dict[str, Any]:
    return {k.split(".", 1)[1]: v for k, v in pr.overrides.items()
            if k.startswith("tracking.") and k.split(".", 1)[1] in ("uri", "experiment", "mlflow")}


def run_protocol(method: str, track: str = "vision", overrides: Mapping[str, Any] | None = None,
                 storage: str = "", workers: int = 1, runs_dir: str = PROTOCOL_RUNS_DIR,
                 progress: bool = True) -> dict[str, Any]:
    """Phase 1 (tune on the tuning scenario's validation split) then phase 2 (evaluate per seed).

    Resumable: rerunning the same command continues (finished trials and runs are kept). With a
    shared ``storage`` URL (PostgreSQL), the same command on many machines shares the work; each
    trial and each evaluation seed runs exactly once.
    """
    from clbench.registry import METHODS, load_plugins
    from clbench.search import draw, size, space_record

    load_plugins()
    METHODS.get(method)  # clear error for an unknown method
    p = protocol_for(track)
    overrides = dict(overrides or {})
    for key in overrides:
        if key in ("method", "scenario", "seed") or key.startswith("scenario."):
            raise ConfigError("override key", key, "trainer.*, eval.*, model.*, method.*, tracking.* "
                              "(the protocol fixes method, scenarios and seeds)")
    pr = ProtocolRun(method, p, overrides, storage, runs_dir, progress)
    _precheck(pr.config("tune", {}, 0, ""))  # settings valid and the pair runnable, before any work
    space = pr.space
    slots = draw(space, p.n_trials, p.sampler_seed)
    pr.dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    lock = _exclusive(pr.dir / ".lock") if pr.embedded else _nullcontext()
    with lock:
        study = _open_study(pr, "", slots, {"method": method, "track": track})
        if pr.embedded:
            n = _requeue(study, None)
            if n:
                _log(pr, f"resuming: {n} interrupted trial(s) requeued")
        parent = _parent_run(pr, study)
        _log(pr, f"phase 1: {len(slots)} of {size(space)} configurations of {sorted(space)} on "
                 f"{p.tune_scenario} ({pr.dir})")
        _until_done(pr, study, "", "tune", parent, workers, None)
        best, best_value = _best(study)
        _log(pr, f"chosen: {best} (validation ACC {best_value:.4f})")
        eval_slots = [{"seed": s} for s in p.eval_seeds]
        ev = _open_study(pr, "-eval", [], {}) if _study_exists(pr, "-eval") else None
        if ev is None:
            ev = _open_eval(pr, eval_slots)
        if pr.embedded:
            _requeue(ev, None)
        _until_done(pr, ev, "-eval", "eval", parent, workers, best)
        record = _record(pr, study, ev, best, best_value, space_record(space), parent, started)
        atomic_write_json(pr.dir / "protocol.json", record)
        _finish_parent(pr, parent, record)
    _log(pr, f"phase 2: ACC on {p.eval_scenario} = {record['evaluation']['acc_mean']:.4f} "
             f"± {record['evaluation']['acc_std']:.4f} over seeds {list(p.eval_seeds)}; {pr.dir / 'protocol.json'}")
    return record


def _precheck(cfg: Any) -> None:
    """Refuse a method the protocol's scenarios/backbone cannot run (declared capabilities)."""
    from clbench.models import build_model, model_family
    from clbench.protocol import check_compatible
    from clbench.runner import resolve

    res = resolve(cfg)
    stream = res.scenario.build()
    model, _ = build_model(cfg.model, stream.info(), dict(cfg.model_options))
    check_compatible(res.method_cls, stream, model_family(model))


@contextmanager
def _nullcontext() -> Iterator[None]:
    yield


def _study_exists(pr: ProtocolRun, suffix: str) -> bool:
    optuna = _optuna()
    names = {s.study_name for s in optuna.get_all_study_summaries(_storage(pr.storage_url))}
    return pr.name + suffix in names


def _open_eval(pr: ProtocolRun, eval_slots: list[dict[str, Any]]) -> Any:
    """The evaluation study: one slot per seed (enqueued with the seed as the only parameter)."""
    optuna = _optuna()
    storage = _storage(pr.storage_url)
    name = pr.name + "-eval"
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        return _open_study(pr, "-eval", [], {})
    for slot, params in enumerate(eval_slots):
        study.enqueue_trial(params, user_attrs={"slot": slot, "seed": params["seed"]})
    study.set_user_attr("prepared", len(eval_slots))
    return study


def _best(study: Any) -> tuple[dict[str, Any], float]:
    optuna = _optuna()
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise ClbenchError(f"no tuning trial of {study.study_name} finished; see the trial errors "
                           "in the study (every trial failed)")
    best = max(done, key=lambda t: (t.value, -int(t.user_attrs["slot"])))
    return dict(best.params), float(best.value)


def _record(pr: ProtocolRun, study: Any, ev: Any, best: dict[str, Any], best_value: float,
            space: dict[str, Any], parent: str, started: str) -> dict[str, Any]:
    import numpy as np

    from clbench.tracking import environment, tracking_uri

    p = pr.protocol
    trials = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: int(t.user_attrs.get("slot", -1))):
        res = t.user_attrs.get("results") or {}
        trials.append({"number": t.number, "slot": t.user_attrs.get("slot"), "params": dict(t.params),
                       "value": t.value, "state": t.state.name, "error": t.user_attrs.get("error"),
                       "run_dir": res.get("run_dir"), "train_time_s": (res.get("cost") or {}).get("train_time_s")})
    evals = sorted((t for t in ev.get_trials(deepcopy=False)), key=lambda t: int(t.user_attrs["seed"]))
    results = [t.user_attrs.get("results") or {} for t in evals]
    accs = [t.value for t in evals if t.value is not None]
    tune_res: dict[str, Any] = next((t["results"] for t in (x.user_attrs for x in study.get_trials(deepcopy=False))
                     if "results" in t), {})
    ev_scen = results[0].get("scenario", {}) if results else {}
    env = environment("cpu")
    return {
        "schema_version": PROTOCOL_SCHEMA_VERSION, "kind": "clbench-protocol",
        "status": "finished" if len(accs) == len(p.eval_seeds) else "failed",
        "method": pr.method, "track": p.track, "protocol": p.record(), "search_space": space,
        "fixed": {**p.fixed, **pr.overrides},
        "tuning": {"scenario": p.tune_scenario, "scenario_options": p.tune_options,
                   "scenario_version": (tune_res.get("scenario") or {}).get("version"),
                   "scenario_hash": (tune_res.get("scenario") or {}).get("content_hash"),
                   "trials": trials, "trials_used": len(trials),
                   "trials_failed": sum(t["state"] == "FAIL" for t in trials),
                   "storage": pr.storage_url if pr.embedded else "external", "study": pr.name},
        "best_params": best, "best_value": best_value,
        "evaluation": {"scenario": p.eval_scenario, "scenario_options": p.eval_options,
                       "scenario_version": ev_scen.get("version"), "scenario_hash": ev_scen.get("content_hash"),
                       "seeds": [int(t.user_attrs["seed"]) for t in evals],
                       "run_dirs": [r.get("run_dir") for r in results], "results": results,
                       "acc_mean": float(np.mean(accs)) if accs else float("nan"),
                       "acc_std": float(np.std(accs)) if accs else float("nan")},
        "mlflow": {"parent_run_id": parent, "tracking_uri": tracking_uri(_tracking_config(pr))},
        "env": {"git_commit": env["git_commit"], "packages": env["packages"], "python": env["python"],
                "hardware": {"platform": env["platform"], "machine": platform.machine(),
                             "cpus": os.cpu_count(), "device": (results[0].get("env") or {}).get("device")
                             if results else None}},
        "started_at": started, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _tracking_config(pr: ProtocolRun) -> Any:
    from clbench.config import TrackingConfig

    return TrackingConfig(**_tracking_overrides(pr))


def _finish_parent(pr: ProtocolRun, parent: str, record: dict[str, Any]) -> None:
    if not parent:
        return
    from clbench.tracking import MlflowRun

    tracker = MlflowRun(_tracking_config(pr))
    tracker.run_id = parent
    ev = record["evaluation"]
    tracker.log_metrics({"tune/best_val_acc": record["best_value"], "eval/acc_mean": ev["acc_mean"],
                         "eval/acc_std": ev["acc_std"], "tune/trials_used": record["tuning"]["trials_used"],
                         "tune/trials_failed": record["tuning"]["trials_failed"]}, step=0)
    tracker.log_artifacts([pr.dir / "protocol.json"])
    tracker.end("FINISHED")

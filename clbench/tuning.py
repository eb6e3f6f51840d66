"""Owns the fixed tuning protocol (Cha & Cho, "Hyperparameters in CL: a Reality Check", TMLR 2025).

Phase 1 tunes a method on a *tuning scenario* (its validation split, never a test split) with a
budget identical for every method; phase 2 evaluates the chosen hyperparameters once per seed on
an *evaluation scenario* with the same configuration but disjoint data. A protocol run writes
``protocol.json`` (schema below) next to the evaluation runs; ``clbench submit`` turns it into a
leaderboard entry. The declared protocols, the run's Optuna studies and its worker processes
live in ``clbench.study``.

``protocol.json`` is a :class:`clbench.protocol_records.ProtocolRecord` (schema_version 1): the
protocol's identity and budget, the search space, the fixed settings, every tuning trial, H* and
its validation value, the evaluation runs per seed (their directories and compact results),
the MLflow parent run and the environment.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

from clbench.checkpoint import atomic_write_json
from clbench.errors import ClbenchError, ConfigError, IncompatibleError
from clbench.protocol_records import (
    EvaluationRecord,
    ProtocolMlflow,
    ProtocolRecord,
    ProtocolSpec,
    TrialRecord,
    TuningRecord,
)
from clbench.records import RunRecord, as_json, decode
from clbench.search import grid_edges
from clbench.study import (
    PROTOCOL_RUNS_DIR,
    PROTOCOLS,  # noqa: F401 - re-exported (moved to clbench.study)
    Protocol,  # noqa: F401 - re-exported (moved to clbench.study)
    ProtocolRun,
    exclusive,
    load_optuna,
    open_eval,
    open_study,
    protocol_for,
    protocol_of,  # noqa: F401 - re-exported (moved to clbench.study)
    study_exists,
)
from clbench.study import storage as open_storage
from clbench.workers import claim, heartbeat, release, requeue, tell, until_done

# --------------------------------------------------------------------------- the protocol run


def _log(pr: ProtocolRun, msg: str) -> None:
    if pr.progress:
        print(f"[protocol {pr.method}] {msg}", flush=True)


def _compact(res: RunRecord) -> dict[str, Any]:
    """What a study keeps of a run's results (enough for protocol.json without the run dir):
    these parts of results.json, as JSON."""
    return {"R": as_json(res.R), "R_val": as_json(res.R_val), "metrics": as_json(res.metrics),
            "general": as_json(res.general), "cost": as_json(res.cost), "env": as_json(res.env),
            "run_dir": res.run_dir, "scenario": as_json(res.scenario), "run_key": res.run_key}


def _work(pr: ProtocolRun, suffix: str, phase: str, parent: str, params_of: Any) -> None:
    """Claim and run slots of one study until none is waiting."""
    from clbench.runner import run

    study = open_study(pr, suffix, [], {})
    store = open_storage(pr.storage_url)
    space = pr.space
    while (trial := claim(study, store)) is not None:
        try:
            _run_slot(pr, study, store, trial, space, phase, parent, params_of, run)
        except BaseException:  # interrupted before its tell: back to the queue, a rerun resumes it
            release(study, store, trial)
            raise


def _run_slot(pr: ProtocolRun, study: Any, store: Any, trial: Any, space: dict[str, Any], phase: str,
              parent: str, params_of: Any, run: Any) -> None:
    optuna = load_optuna()
    slot = int(trial.user_attrs["slot"])
    trial.set_user_attr("worker", f"{platform.node()}:{os.getpid()}")
    params = params_of(trial, space)
    seed = int(params.pop("__seed__", pr.protocol.tuning_seeds[0]))
    with heartbeat(trial):
        start = time.perf_counter()
        try:
            res = run(_in_track(pr, pr.config(phase, params, seed, parent)), resume=True)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - a crashed or NaN trial counts in the budget
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
            tell(study, store, trial, optuna.trial.TrialState.FAIL)
            _log(pr, f"{phase} slot {slot} {params} failed: {type(exc).__name__}: {exc}")
            return
    value = _objective(res, phase)
    trial.set_user_attr("results", _compact(res))
    tell(study, store, trial, optuna.trial.TrialState.COMPLETE, value)
    _log(pr, f"{phase} slot {slot} seed {seed} {params} -> {value:.4f} ({time.perf_counter() - start:.1f} s)")


def _objective(res: RunRecord, phase: str) -> float:
    """Tuning: final average accuracy on the tuning scenario's *validation* split; eval: test ACC."""
    import numpy as np

    if phase == "tune":
        if not res.R_val:
            raise ClbenchError("the tuning objective needs validation accuracies (eval.validation=true)")
        return float(np.mean(res.R_val[-1]))
    return float(res.metrics["acc"])


def _tune_params(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    return {k: trial.suggest_categorical(k, list(space[k].values)) for k in sorted(space)}


def _eval_params(best: dict[str, Any]) -> Any:
    def params_of(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
        return {**best, "__seed__": int(trial.user_attrs["seed"])}

    return params_of


def _worker_main(pr: ProtocolRun, suffix: str, phase: str, parent: str, best: dict[str, Any] | None) -> None:
    _work(pr, suffix, phase, parent, _tune_params if best is None else _eval_params(best))


def _parent_run(pr: ProtocolRun, study: Any) -> str:
    """The protocol's MLflow parent run (created once, id kept in the study)."""
    if "mlflow_parent_run_id" in study.user_attrs:
        return str(study.user_attrs["mlflow_parent_run_id"])
    from clbench.config import TrackingConfig
    from clbench.search import space_record
    from clbench.tracking import open_tracker

    tracker = open_tracker(TrackingConfig(**{k: v for k, v in _tracking_overrides(pr).items()}))
    rid = tracker.start(f"protocol-{pr.method}-{pr.protocol.track}",
                        {"protocol": pr.protocol.record(), "search_space": space_record(pr.space),
                         "tune_scenario": pr.protocol.tune_scenario, "eval_scenario": pr.protocol.eval_scenario,
                         "fixed": pr.protocol.fixed, "overrides": pr.overrides,
                         **({"locations": pr.locations} if pr.locations else {})},
                        {"method": pr.method, "track": pr.protocol.track, "clbench.kind": "protocol",
                         "clbench.protocol_dir": str(pr.dir.resolve())}) or ""
    study.set_user_attr("mlflow_parent_run_id", rid)
    return rid


def _tracking_overrides(pr: ProtocolRun) -> dict[str, Any]:
    """The parent run's tracking settings: the overrides' store, and the track's experiment
    unless ``tracking.experiment`` is given."""
    out = {k.split(".", 1)[1]: v for k, v in pr.overrides.items()
           if k.startswith("tracking.") and k.split(".", 1)[1] in ("uri", "experiment", "mlflow")}
    return {"experiment": pr.protocol.track, **out}


def _in_track(pr: ProtocolRun, cfg: Any) -> Any:
    """``cfg`` logged to the track's MLflow experiment, beside the parent run, unless it names
    another (tracking settings are not part of the run key)."""
    from dataclasses import replace

    from clbench.config import TrackingConfig

    if cfg.tracking.experiment != TrackingConfig.experiment:
        return cfg
    return replace(cfg, tracking=replace(cfg.tracking, experiment=pr.protocol.track))


def run_protocol(method: str, track: str = "vision", overrides: Mapping[str, Any] | None = None,
                 storage: str = "", workers: int = 1, runs_dir: str = PROTOCOL_RUNS_DIR,
                 progress: bool = True, locations: Mapping[str, str] | None = None) -> ProtocolRecord:
    """Phase 1 (tune on the tuning scenario's validation split) then phase 2 (evaluate per seed).

    A zero-budget protocol (``n_trials == 0``, :attr:`clbench.study.Protocol.tuned` false) skips
    phase 1: no tuning scenario is built, H* is ``{}`` (the method's defaults), the record's
    search space is ``{}`` and its tuning part names no scenario and no trial.

    Resumable: rerunning the same command continues (finished trials and runs are kept). With a
    shared ``storage`` URL (PostgreSQL), the same command on many machines shares the work; each
    trial and each evaluation seed runs exactly once. ``locations`` (keys of
    :data:`clbench.tracks.LOCATION_KEYS` only: where data and weights are) go into every run's
    settings, both phases' (a ``scenario.*`` one reaches the tuning and the evaluation scenario),
    and into the MLflow parent run's parameters, but neither into the study name (a rerun with
    other paths resumes the same protocol run) nor into protocol.json's ``fixed``.
    """
    from clbench.registry import METHODS, load_plugins
    from clbench.search import draw, grid_edges, size, space_record

    load_plugins()
    METHODS.get(method)  # clear error for an unknown method
    p = protocol_for(track)
    overrides = dict(overrides or {})
    for key in overrides:
        if key in ("method", "scenario", "seed") or key.startswith("scenario."):
            raise ConfigError("override key", key, "trainer.*, eval.*, model.*, method.*, tracking.* "
                              "(the protocol fixes method, scenarios and seeds)")
    from clbench.tracks import check_locations

    pr = ProtocolRun(method, p, overrides, storage, runs_dir, progress, check_locations(None, locations or {}))
    # settings valid and the pair runnable, before any work
    precheck(pr.config("tune" if p.tuned else "eval", {}, 0, ""))
    space = pr.space if p.tuned else {}
    slots = draw(space, p.n_trials, p.sampler_seed) if p.tuned else []
    pr.dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    lock = exclusive(pr.dir / ".lock") if pr.embedded else nullcontext()
    with lock:
        study = open_study(pr, "", slots, {"method": method, "track": track})
        store = open_storage(pr.storage_url)
        if pr.embedded:
            n = requeue(study, store)
            if n:
                _log(pr, f"resuming: {n} interrupted trial(s) requeued")
        parent = _parent_run(pr, study)
        best: dict[str, Any] = {}
        best_value: float | None = None
        if p.tuned:
            _log(pr, f"phase 1: {len(slots)} of {size(space)} configurations of {sorted(space)} on "
                     f"{p.tune_scenario} ({pr.dir})")
            until_done(study, store, _worker_main, (pr, "", "tune", parent, None), workers, "tune")
            best, best_value = _best(study)
            edges = grid_edges(best, space_record(space))
            _log(pr, f"chosen: {best} (validation ACC {best_value:.4f})"
                     + (f"; on the edge of its grid: {', '.join(edges)}" if edges else ""))
        else:
            _log(pr, f"phase 1 skipped: zero-budget protocol, the method's defaults ({pr.dir})")
        eval_slots = [{"seed": s} for s in p.eval_seeds]
        ev = open_study(pr, "-eval", [], {}) if study_exists(pr, "-eval") else None
        if ev is None:
            ev = open_eval(pr, eval_slots)
        if pr.embedded:
            requeue(ev, store)
        until_done(ev, store, _worker_main, (pr, "-eval", "eval", parent, best), workers, "eval")
        record = _record(pr, study, ev, best, best_value, space_record(space), parent, started)
        atomic_write_json(pr.dir / "protocol.json", record.to_json())
        _finish_parent(pr, parent, record)
    _log(pr, f"phase 2: ACC on {p.eval_scenario} = {record.evaluation.acc_mean:.4f} "
             f"± {record.evaluation.acc_std:.4f} over seeds {list(p.eval_seeds)}; {pr.dir / 'protocol.json'}")
    return record


def precheck(cfg: Any) -> None:
    """Refuse a method the protocol's scenarios/backbone cannot run: its declared capabilities
    (``needs_pretrained`` too: a method that tunes modules of a pretrained model is not ranked
    on a model that starts untrained), then its ``setup`` on a throw-away model (a method that finds at setup what the model lacks
    raises :class:`~clbench.errors.IncompatibleError` there, once, instead of failing every
    trial of the budget)."""
    from clbench.models import build_model, model_family
    from clbench.protocol import check_compatible
    from clbench.runner import resolve, starts_pretrained

    res = resolve(cfg)
    stream = res.scenario.build()
    model, _ = build_model(cfg.model, stream.info(), dict(cfg.model_options))
    check_compatible(res.method_cls, stream, model_family(model))
    if res.method_cls.needs_pretrained and not starts_pretrained(model, stream, cfg):
        raise IncompatibleError(
            f"method {cfg.method!r} tunes parameter-efficient modules of a frozen "
            f"pretrained model, but model {cfg.model if cfg.model != 'auto' else type(model).__name__!r} "
            f"starts untrained on scenario {stream.name!r} "
            "(no pretrained weights, no foundation pretrained on a source split): the protocol does "
            "not rank it there (a track with a pretrained model or a foundation does)")
    method = res.method_cls(res.method_cfg)
    method.objective = stream.objective
    try:
        method.setup(model, stream.info())
    except IncompatibleError:
        raise
    except Exception:  # noqa: BLE001 - anything else is the trials' to meet and record
        pass


def _best(study: Any) -> tuple[dict[str, Any], float]:
    optuna = load_optuna()
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise ClbenchError(f"no tuning trial of {study.study_name} finished; see the trial errors "
                           "in the study (every trial failed)")
    best = max(done, key=lambda t: (t.value, -int(t.user_attrs["slot"])))
    return dict(best.params), float(best.value)


def _record(pr: ProtocolRun, study: Any, ev: Any, best: dict[str, Any], best_value: float | None,
            space: dict[str, Any], parent: str, started: str) -> ProtocolRecord:
    import numpy as np

    from clbench.tracking import environment, tracking_uri

    p = pr.protocol
    trials = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: int(t.user_attrs.get("slot", -1))):
        res = t.user_attrs.get("results") or {}
        trials.append(TrialRecord(number=t.number, slot=t.user_attrs.get("slot"), params=dict(t.params),
                                  value=t.value, state=t.state.name, error=t.user_attrs.get("error"),
                                  run_dir=res.get("run_dir"), train_time_s=(res.get("cost") or {}).get("train_time_s")))
    evals = sorted((t for t in ev.get_trials(deepcopy=False)), key=lambda t: int(t.user_attrs["seed"]))
    results = [t.user_attrs.get("results") or {} for t in evals]
    accs = [t.value for t in evals if t.value is not None]
    tune_res: dict[str, Any] = next((t["results"] for t in (x.user_attrs for x in study.get_trials(deepcopy=False))
                                     if "results" in t), {})
    tune_scen, ev_scen = tune_res.get("scenario") or {}, results[0].get("scenario", {}) if results else {}
    env = environment("cpu")
    return ProtocolRecord(
        status="finished" if len(accs) == len(p.eval_seeds) else "failed",
        method=pr.method, track=p.track, protocol=decode(ProtocolSpec, p.record(), "protocol"),
        search_space=space, fixed={**p.fixed, **pr.overrides},
        tuning=TuningRecord(scenario=p.tune_scenario, scenario_options=dict(p.tune_options),
                            scenario_version=tune_scen.get("version"), scenario_hash=tune_scen.get("content_hash"),
                            trials=trials, trials_used=len(trials),
                            trials_failed=sum(t.state == "FAIL" for t in trials),
                            storage=pr.storage_url if pr.embedded else "external", study=pr.name),
        best_params=best, best_value=best_value,
        evaluation=EvaluationRecord(
            scenario=p.eval_scenario, scenario_options=dict(p.eval_options),
            scenario_version=ev_scen.get("version"), scenario_hash=ev_scen.get("content_hash"),
            seeds=[int(t.user_attrs["seed"]) for t in evals], run_dirs=[r.get("run_dir") for r in results],
            results=results, acc_mean=float(np.mean(accs)) if accs else float("nan"),
            acc_std=float(np.std(accs)) if accs else float("nan")),
        mlflow=ProtocolMlflow(parent_run_id=parent, tracking_uri=tracking_uri(_tracking_config(pr))),
        env={"git_commit": env["git_commit"], "packages": env["packages"], "python": env["python"],
             "hardware": {"platform": env["platform"], "machine": platform.machine(), "cpus": os.cpu_count(),
                          "device": (results[0].get("env") or {}).get("device") if results else None}},
        started_at=started, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        edge_params=grid_edges(best, space))


def _tracking_config(pr: ProtocolRun) -> Any:
    from clbench.config import TrackingConfig

    return TrackingConfig(**_tracking_overrides(pr))


def _finish_parent(pr: ProtocolRun, parent: str, record: ProtocolRecord) -> None:
    if not parent:
        return
    from clbench.tracking import open_tracker

    tracker = open_tracker(_tracking_config(pr), run_id=parent)
    ev, tune = record.evaluation, record.tuning
    tracker.log_metrics({"tune/best_val_acc": record.best_value or float("nan"),
                         "eval/acc_mean": ev.acc_mean or float("nan"), "eval/acc_std": ev.acc_std or float("nan"),
                         "tune/trials_used": tune.trials_used, "tune/trials_failed": tune.trials_failed}, step=0)
    tracker.log_artifacts([pr.dir / "protocol.json"])
    tracker.end("FINISHED")

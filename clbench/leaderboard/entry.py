"""Owns building a leaderboard entry from a finished protocol run, and where entry files lie.

``clbench submit`` reads ``protocol.json`` (:class:`~clbench.protocol_records.ProtocolRecord`)
and each evaluation run's ``results.json`` (:class:`~clbench.records.RunRecord`), checks they
agree, and builds the typed entry (:class:`~clbench.leaderboard.record.LeaderboardEntry`, whose
module owns the entry's schema, canonical JSON and content hash).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clbench import stats
from clbench.errors import ClbenchError
from clbench.leaderboard.record import (
    COST_KEYS,
    ENTRY_SCHEMA_VERSION,
    SUMMARY_COST,
    CostSummary,
    EntryBudget,
    EntryEnv,
    EntryGeneral,
    EntryHealth,
    EntryMlflow,
    EntryProtocol,
    EntryRun,
    EntryRunCost,
    EntryScenario,
    EntryTuning,
    HealthCriterion,
    LeaderboardEntry,
    MeanStd,
    is_num,
)
from clbench.protocol_records import ProtocolRecord
from clbench.records import RunRecord
from clbench.tracks import LOCATION_KEYS

RUN_METRICS = ("acc", "bwt", "forgetting", "plasticity", "avg_inc_acc")
#: JSON files a track folder holds beside its entries (the track's health check record)
NOT_ENTRIES = frozenset({"health.json"})


def entry_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The entry files (``*.json``) in ``folder``: hidden files and :data:`NOT_ENTRIES` left out."""
    found = folder.rglob("*.json") if recursive else folder.glob("*.json")
    return sorted(f for f in found if not f.name.startswith(".") and f.name not in NOT_ENTRIES)


def entry_filename(method: str) -> str:
    """``<method>.json`` with every character outside ``[A-Za-z0-9_.-]`` replaced by ``_``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", method).lstrip(".")[:120] or "_"
    return stem + ".json"

# ---------------------------------------------------------------------------------------------
# building an entry


def entry_from_protocol(protocol_dir: str | Path, boards: str | Path | None = None) -> LeaderboardEntry:
    """The leaderboard entry of a finished protocol run, with its content hash.

    Args:
        protocol_dir: folder holding ``protocol.json``; its ``evaluation.run_dirs`` (absolute,
            relative to this folder, or relative to the working directory) each hold a
            ``results.json``.
        boards: the leaderboard root; the entry records the figures of its track's committed
            ``<boards>/<track>/health.json``.

    Raises:
        ClbenchError: missing/malformed files, an unfinished protocol, or evaluation runs that
            disagree with protocol.json (method, scenario, hash, seeds, hyperparameters).
    """
    pdir = Path(protocol_dir)
    proto = ProtocolRecord.from_json(_read_json(pdir / "protocol.json"), str(pdir / "protocol.json"))
    try:
        _check_protocol(proto)
        runs = [_read_run(_find_run(pdir, rd or "") / "results.json") for rd in proto.evaluation.run_dirs]
        _check_runs(proto, runs)
        health = read_health(Path(boards) / proto.track / "health.json") if boards is not None else None
        return replace(_build_entry(proto, runs), health=health, chance_acc=chance_acc(runs[0])).with_hash()
    except (KeyError, TypeError, IndexError) as exc:
        raise ClbenchError(f"{pdir / 'protocol.json'} or its results.json lack a field: {exc!r}") from exc
    except ValueError as exc:  # a non-finite number where the entry needs one (no canonical JSON)
        raise ClbenchError(f"{pdir / 'protocol.json'} or its results.json: {exc}") from exc


def _build_entry(proto: ProtocolRecord, runs: Sequence[RunRecord]) -> LeaderboardEntry:
    p, tun, ev = proto.protocol, proto.tuning, proto.evaluation
    best = _plain(proto.best_params)
    return LeaderboardEntry(
        track=proto.track, method=proto.method,
        protocol=EntryProtocol(name=p.name, version=str(p.version)),
        hyperparameters=best, config=_plain({**proto.fixed, **best}),
        search_space=_plain(proto.search_space),
        budget=EntryBudget(
            n_trials=p.n_trials, trials_used=max(tun.trials_used, len(tun.trials)),
            sampler=p.sampler, sampler_seed=p.sampler_seed, objective=p.objective,
            objective_split=p.objective_split, tuning_seeds=list(p.tuning_seeds),
            trials_failed=sum(t.state == "FAIL" for t in tun.trials),
            tuning_train_time_s=sum((float(t.train_time_s or 0.0) for t in tun.trials), 0.0)),
        # a zero-budget protocol (n_trials 0) has no tuning phase: no tuning scenario
        tuning=EntryTuning(scenario=tun.scenario, version=_str(tun.scenario_version, "tuning.scenario_version"),
                           content_hash=_str(tun.scenario_hash, "tuning.scenario_hash"),
                           options=_plain(tun.scenario_options), best_value=_finite(proto.best_value))
        if p.n_trials > 0 else None,
        evaluation=EntryScenario(scenario=ev.scenario, version=_str(ev.scenario_version, "evaluation.scenario_version"),
                                 content_hash=_str(ev.scenario_hash, "evaluation.scenario_hash"),
                                 options=_plain(ev.scenario_options)),
        seeds=list(ev.seeds), runs=[_run_record(r) for r in runs],
        summary=summarize_metrics([r.metrics for r in runs]),
        cost=CostSummary(**{k: mean_std([getattr(r.cost, k) for r in runs]) for k in SUMMARY_COST}),
        env=_env(proto, runs[0]),
        mlflow=EntryMlflow(parent_run_id=proto.mlflow.parent_run_id, tracking_uri=proto.mlflow.tracking_uri),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"), content_hash="")


def chance_acc(run: RunRecord) -> float | None:
    """ACC of uniform guessing on the run's stream: among all classes (class- and
    domain-incremental), among the experience's own classes (task-incremental, averaged over
    experiences); None for test-time and language-modelling streams."""
    sc = run.scenario
    if sc.type == "task_incremental":
        sizes = [len(c) for c in sc.classes if c]
        return sum(1.0 / n for n in sizes) / len(sizes) if sizes else None
    if sc.type in ("class_incremental", "domain_incremental") and sc.num_classes > 1:
        return 1.0 / sc.num_classes
    return None


def read_health(path: Path) -> EntryHealth | None:
    """The health figures an entry records from the track's ``health.json`` (None when absent)."""
    if not path.is_file():
        return None
    rec = _read_json(path)
    try:
        figures, learners = rec["figures"], rec["learners"]
        return EntryHealth(
            git_commit=rec.get("git_commit"), declaration_sha256=str(rec["declaration_sha256"]),
            passed=bool(rec["passed"]),
            criteria=[HealthCriterion(name=str(c["name"]), rule=str(c["rule"]), value=_finite(c["value"]),
                                      threshold=_finite(c["threshold"]), passed=bool(c["passed"]))
                      for c in rec["criteria"]],
            lower=str(learners["lower"]), upper=str(learners["upper"]),
            lower_acc=_finite(figures["lower"].get("acc", {}).get("mean")),
            upper_acc=_finite(figures["upper"].get("acc", {}).get("mean")))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ClbenchError(f"{path} is not a health record ({type(exc).__name__}: {exc})") from exc


def _env(proto: ProtocolRecord, first: RunRecord) -> EntryEnv:
    """The protocol's environment, completed from the first evaluation run's."""
    env, run_env = proto.env, first.env
    hardware = {**{k: run_env.get(k) for k in ("device", "device_name", "platform", "world_size")},
                **(env.get("hardware") or {})}
    return EntryEnv(git_commit=env.get("git_commit") or run_env.get("git_commit"),
                    packages=_plain(env.get("packages") or run_env.get("packages", {})),
                    hardware=_plain(hardware), python=env.get("python") or run_env.get("python"))


def _str(v: Any, name: str) -> str:
    if v is None:
        raise ClbenchError(f"protocol.json records no {name}")
    return str(v)


def _finite(v: float | None) -> float | None:
    """``v`` as a float (an integer threshold such as 500 steps too: the entry record reads floats
    back, and an entry must round-trip bit-identically), or None when missing or not finite."""
    return float(v) if v is not None and math.isfinite(v) else None


def _run_record(r: RunRecord) -> EntryRun:
    """An entry's ``runs`` item: the parts of one evaluation run's record that a board shows."""
    g = r.general
    general = EntryGeneral(before=_finite_map(g.before), after=[_finite_map(a) for a in g.after]) if g.before else None
    mechanism = {k: [_finite(v) for v in vals] for k, vals in r.mechanism.items()}
    return EntryRun(seed=r.seeds.seed, R=r.R, R_pretrain=r.R_pretrain, metrics=_finite_map(r.metrics),
                    general=general, cost=EntryRunCost(**{k: getattr(r.cost, k) for k in COST_KEYS}),
                    mechanism=mechanism)


def _finite_map(d: Mapping[str, float] | None) -> dict[str, float | None]:
    return {str(k): _finite(v) for k, v in (d or {}).items()}


def summarize_runs(runs: Sequence[EntryRun], version: int = ENTRY_SCHEMA_VERSION) -> dict[str, MeanStd]:
    """:func:`mean_std` over seeds of every metric an entry's ``runs`` report."""
    return summarize_metrics([r.metrics for r in runs], version)


def summarize_metrics(metrics: Sequence[Mapping[str, Any]], version: int = ENTRY_SCHEMA_VERSION) -> dict[str, MeanStd]:
    """:func:`mean_std` over seeds of every metric in ``metrics`` (one mapping per seed)."""
    keys = sorted({k for m in metrics for k in m})
    return {k: mean_std([m.get(k) for m in metrics], version) for k in keys}


def mean_std(values: Iterable[Any], version: int = ENTRY_SCHEMA_VERSION) -> MeanStd:
    """Mean, std and count of the finite numbers in ``values`` (None, None, 0 when none), as
    entry schema ``version`` defines them: 2 = sample std (ddof=1, None for one value) and the
    95 % confidence interval of the mean; 1 = population std, no interval."""
    xs = [float(v) for v in values if is_num(v)]
    if not xs:
        return MeanStd(mean=None, std=None, n=0)
    mean = sum(xs) / len(xs)
    if version == 1:
        return MeanStd(mean=mean, std=math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)), n=len(xs))
    interval = stats.ci95(xs)
    return MeanStd(mean=mean, std=stats.sample_sd(xs) if len(xs) > 1 else None, n=len(xs),
                   ci95=list(interval) if interval else None)


def _check_protocol(proto: ProtocolRecord) -> None:
    if proto.status != "finished":
        raise ClbenchError(f"protocol run is not finished (status={proto.status!r})")
    if not proto.evaluation.run_dirs:
        raise ClbenchError("protocol.json lists no evaluation runs")


def _check_runs(proto: ProtocolRecord, runs: Sequence[RunRecord]) -> None:
    ev = proto.evaluation
    expected = {**proto.fixed, **proto.best_params}
    seeds = [r.seeds.seed for r in runs]
    if seeds != list(ev.seeds):
        raise ClbenchError(f"evaluation runs have seeds {seeds}, protocol.json lists {ev.seeds}")
    for r in runs:
        where = f"evaluation run seed {r.seeds.seed}"
        if r.status != "finished":
            raise ClbenchError(f"{where} is not finished")
        got = (r.method, r.scenario.name, r.scenario.content_hash, str(r.scenario.version))
        want = (proto.method, ev.scenario, ev.scenario_hash, str(ev.scenario_version))
        if got != want:
            raise ClbenchError(f"{where} is (method, scenario, hash, version) {got}, protocol.json {want}")
        flat = _flatten(r.config)
        bad = [k for k, v in expected.items()
               if k not in LOCATION_KEYS and _result_key(k) in flat and flat[_result_key(k)] != v]
        if bad:
            raise ClbenchError(f"{where} did not use the protocol's settings for {', '.join(bad)}")


def _read_run(path: Path) -> RunRecord:
    """The run record in a ``results.json`` (missing, unreadable or malformed: ClbenchError)."""
    return RunRecord.from_json(_read_json(path), str(path))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ClbenchError(f"no {path.name} at {path.parent}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClbenchError(f"cannot read {path}: {exc}") from exc


def _result_key(dotted: str) -> str:
    """Where a dotted override lands in results.json's config (``method.x`` -> ``method_options.x``)."""
    head, _, rest = dotted.partition(".")
    if head in ("method", "scenario", "model"):
        return head if rest in ("", "name") else f"{head}_options.{rest}"
    return dotted


def _find_run(pdir: Path, run_dir: str) -> Path:
    """The run dir as recorded (absolute or cwd-relative), relative to ``pdir``, or, when the
    protocol folder was moved, the part of the recorded path below the protocol folder's name."""
    p = Path(str(run_dir))
    cands = [p, pdir / p]
    if pdir.resolve().name in p.parts:
        parts = p.parts
        cut = len(parts) - parts[::-1].index(pdir.resolve().name)
        cands.append(pdir.joinpath(*parts[cut:]))
    for cand in cands:
        if (cand / "results.json").is_file():
            return cand
    raise ClbenchError(f"no results.json for evaluation run {run_dir} (looked in {pdir} and .)")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out[key] = v
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
    return out


def _plain(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, tuples lists, keys strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj

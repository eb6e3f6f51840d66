"""Owns the leaderboard entry: its schema, building it from a finished protocol run, canonical JSON.

An entry is ``leaderboards/<track>/<method>.json``: one method's score under a track's fixed
tuning protocol (``clbench.tuning.PROTOCOLS``), machine-written by ``clbench submit`` from a
finished protocol run.

Entry (``schema_version`` 1, ``kind`` ``clbench-leaderboard-entry``)::

    {"schema_version", "kind", "track", "method",
     "protocol": {"name", "version"},
     "hyperparameters": {param: value},                 # H*, chosen in phase 1
     "config": {dotted key: value},                     # protocol's fixed settings + H*
     "search_space": {param: {...}},
     "budget": {"n_trials", "trials_used", "sampler", "sampler_seed", "objective",
                "objective_split", "tuning_seeds", "trials_failed", "tuning_train_time_s"},
     "tuning": {"scenario", "version", "content_hash", "options", "best_value"},
     "evaluation": {"scenario", "version", "content_hash", "options"},
     "seeds": [int],
     "runs": [{"seed", "R", "R_pretrain", "metrics", "general", "cost"}],  # one per seed
     "summary": {metric: {"mean", "std", "n"}},         # over seeds; population std
     "cost": {counter: {"mean", "std", "n"}},           # train/wall time, samples, steps
     "env": {"git_commit", "packages", "hardware", "python"},
     "mlflow": {...} | null, "created_at": ISO-8601,
     "content_hash": sha256 of the canonical JSON of everything else}

Canonical JSON: sorted keys, ``(",", ":")`` separators, UTF-8, no NaN (non-finite numbers are
stored as ``null``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clbench.errors import ClbenchError
from clbench.protocol_records import ProtocolRecord
from clbench.records import RunRecord, as_json

ENTRY_SCHEMA_VERSION = 1
ENTRY_KIND = "clbench-leaderboard-entry"
RUN_METRICS = ("acc", "bwt", "forgetting", "plasticity", "avg_inc_acc")
COST_KEYS = ("train_time_s", "wall_time_s", "train_samples", "optimizer_steps", "train_samples_per_s",
             "peak_rss_mb", "peak_cuda_mb", "trainable_params", "total_params")
SUMMARY_COST = ("train_time_s", "wall_time_s", "train_samples", "optimizer_steps")
_NUM = (int, float)
#: JSON files a track folder holds beside its entries (the track's health check record)
NOT_ENTRIES = frozenset({"health.json"})


def entry_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The entry files (``*.json``) in ``folder``: hidden files and :data:`NOT_ENTRIES` left out."""
    found = folder.rglob("*.json") if recursive else folder.glob("*.json")
    return sorted(f for f in found if not f.name.startswith(".") and f.name not in NOT_ENTRIES)

# ---------------------------------------------------------------------------------------------
# building an entry


def entry_from_protocol(protocol_dir: str | Path) -> dict[str, Any]:
    """The leaderboard entry of a finished protocol run.

    Args:
        protocol_dir: folder holding ``protocol.json``; its ``evaluation.run_dirs`` (absolute,
            relative to this folder, or relative to the working directory) each hold a
            ``results.json``.

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
        entry = _build_entry(proto, runs)
    except (KeyError, TypeError, IndexError) as exc:
        raise ClbenchError(f"{pdir / 'protocol.json'} or its results.json lack a field: {exc!r}") from exc
    entry["content_hash"] = content_hash(entry)
    return entry


def _build_entry(proto: ProtocolRecord, runs: Sequence[RunRecord]) -> dict[str, Any]:
    p, tun, ev = proto.protocol, proto.tuning, proto.evaluation
    best = dict(proto.best_params)
    per_run = [_run_record(r) for r in runs]
    env = dict(proto.env)
    first = runs[0].env
    hardware = {**{k: first.get(k) for k in ("device", "device_name", "platform", "world_size")},
                **(env.get("hardware") or {})}
    entry = {
        "schema_version": ENTRY_SCHEMA_VERSION, "kind": ENTRY_KIND,
        "track": proto.track, "method": proto.method,
        "protocol": {"name": p.name, "version": _str(p.version)},
        "hyperparameters": best, "config": {**proto.fixed, **best},
        "search_space": proto.search_space,
        "budget": {"n_trials": p.n_trials,
                   "trials_used": max(tun.trials_used, len(tun.trials)),
                   "sampler": p.sampler, "sampler_seed": p.sampler_seed,
                   "objective": p.objective, "objective_split": p.objective_split,
                   "tuning_seeds": list(p.tuning_seeds),
                   "trials_failed": sum(t.state == "FAIL" for t in tun.trials),
                   "tuning_train_time_s": sum(float(t.train_time_s or 0.0) for t in tun.trials)},
        "tuning": {"scenario": tun.scenario, "version": _str(tun.scenario_version),
                   "content_hash": tun.scenario_hash, "options": tun.scenario_options,
                   "best_value": proto.best_value},
        "evaluation": {"scenario": ev.scenario, "version": _str(ev.scenario_version),
                       "content_hash": ev.scenario_hash, "options": ev.scenario_options},
        "seeds": list(ev.seeds), "runs": per_run,
        "summary": summarize_metrics([r.metrics for r in runs]),
        "cost": {k: _mean_std([getattr(r.cost, k) for r in runs]) for k in SUMMARY_COST},
        "env": {"git_commit": env.get("git_commit") or first.get("git_commit"),
                "packages": env.get("packages") or first.get("packages", {}),
                "hardware": hardware, "python": env.get("python") or first.get("python")},
        "mlflow": as_json(proto.mlflow),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return dict(_plain(entry))


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def _run_record(r: RunRecord) -> dict[str, Any]:
    """An entry's ``runs`` item: the parts of one evaluation run's record that a board shows."""
    return {"seed": r.seeds.seed, "R": r.R, "R_pretrain": r.R_pretrain,
            "metrics": dict(r.metrics),
            "general": as_json(r.general) if r.general.before else None,
            "cost": {k: getattr(r.cost, k) for k in COST_KEYS}}  # CostRecord fields, always present


def summarize_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, population std and count over seeds of every metric an entry's ``runs`` report."""
    return summarize_metrics([r["metrics"] for r in runs])


def summarize_metrics(metrics: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, population std and count over seeds of every metric in ``metrics`` (one per seed)."""
    keys = sorted({k for m in metrics for k in m})
    return {k: _mean_std([m.get(k) for m in metrics]) for k in keys}


def _mean_std(values: Iterable[Any]) -> dict[str, Any]:
    xs = [float(v) for v in values if _is_num(v) and math.isfinite(v)]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(xs) / len(xs)
    return {"mean": mean, "std": math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)), "n": len(xs)}


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
        got = (r.config["method"], r.scenario.name, r.scenario.content_hash, str(r.scenario.version))
        want = (proto.method, ev.scenario, ev.scenario_hash, str(ev.scenario_version))
        if got != want:
            raise ClbenchError(f"{where} is (method, scenario, hash, version) {got}, protocol.json {want}")
        flat = _flatten(r.config)
        bad = [k for k, v in expected.items() if _result_key(k) in flat and flat[_result_key(k)] != v]
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


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def content_hash(entry: Mapping[str, Any]) -> str:
    """sha256 (hex) over the canonical JSON of ``entry`` without its ``content_hash`` field."""
    return hashlib.sha256(canonical_json({k: v for k, v in entry.items() if k != "content_hash"})).hexdigest()


def entry_filename(method: str) -> str:
    """``<method>.json`` with every character outside ``[A-Za-z0-9_.-]`` replaced by ``_``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", method).lstrip(".")[:120] or "_"
    return stem + ".json"


# ---------------------------------------------------------------------------------------------
# number checks (shared with validation and rendering)


def _typed(v: Any, want: type | tuple[type, ...]) -> bool:
    wants = want if isinstance(want, tuple) else (want,)
    if isinstance(v, bool):
        return bool in wants
    if isinstance(v, float) and not math.isfinite(v):
        return False
    return isinstance(v, wants)


def _is_num(v: Any) -> bool:
    return _typed(v, _NUM)

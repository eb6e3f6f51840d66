"""Owns leaderboard entries: build them from protocol runs, validate them, render the boards.

An entry is ``leaderboards/<track>/<method>.json``: one method's score under a track's fixed
tuning protocol (``clbench.tuning.PROTOCOLS``), machine-written by ``clbench submit`` from a
finished protocol run. ``clbench leaderboard render`` turns the entries that validate into
``<track>/README.md`` (a Markdown table between markers) and ``<track>/index.html`` (a static,
self-contained page: sortable table, inline SVG plots, no network). Entries that fail validation
are listed with their reasons and never ranked.

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

import base64
import hashlib
import html
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clbench import metrics as M
from clbench.checkpoint import atomic_write_bytes
from clbench.errors import ClbenchError
from clbench.tuning import PROTOCOLS, Protocol

ENTRY_SCHEMA_VERSION = 1
ENTRY_KIND = "clbench-leaderboard-entry"
MARK_START, MARK_END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"
RUN_METRICS = ("acc", "bwt", "forgetting", "plasticity", "avg_inc_acc")
COST_KEYS = ("train_time_s", "wall_time_s", "train_samples", "optimizer_steps", "train_samples_per_s",
             "peak_rss_mb", "peak_cuda_mb", "trainable_params", "total_params")
SUMMARY_COST = ("train_time_s", "wall_time_s", "train_samples", "optimizer_steps")
# overrides that do not change what is learned (where results go, progress bars, device placement)
NEUTRAL_KEYS = ("tracking.", "trainer.progress", "trainer.device", "trainer.precision", "eval.batch_size")

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
    proto = _read_json(pdir / "protocol.json")
    try:
        _check_protocol(proto)
        runs = [_read_json(_find_run(pdir, rd) / "results.json") for rd in proto["evaluation"]["run_dirs"]]
        _check_runs(proto, runs)
        entry = _build_entry(proto, runs)
    except (KeyError, TypeError, IndexError) as exc:
        raise ClbenchError(f"{pdir / 'protocol.json'} or its results.json lack a field: {exc!r}") from exc
    entry["content_hash"] = content_hash(entry)
    return entry


def _build_entry(proto: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    p, tun, ev = proto["protocol"], proto["tuning"], proto["evaluation"]
    best = dict(proto["best_params"])
    per_run = [_run_record(r) for r in runs]
    env = dict(proto.get("env") or {})
    first = runs[0].get("env", {})
    hardware = {**{k: first.get(k) for k in ("device", "device_name", "platform", "world_size")},
                **(env.get("hardware") or {})}
    entry = {
        "schema_version": ENTRY_SCHEMA_VERSION, "kind": ENTRY_KIND,
        "track": proto["track"], "method": proto["method"],
        "protocol": {"name": p["name"], "version": _str(p["version"])},
        "hyperparameters": best, "config": {**proto.get("fixed", {}), **best},
        "search_space": proto.get("search_space", {}),
        "budget": {"n_trials": p["n_trials"],
                   "trials_used": max(int(tun.get("trials_used", 0)), len(tun.get("trials", []))),
                   "sampler": p["sampler"], "sampler_seed": p["sampler_seed"],
                   "objective": p["objective"], "objective_split": p["objective_split"],
                   "tuning_seeds": list(p.get("tuning_seeds", [])),
                   "trials_failed": sum(t.get("state") == "FAIL" for t in tun.get("trials", [])),
                   "tuning_train_time_s": sum(float(t.get("train_time_s") or 0.0)
                                              for t in tun.get("trials", []))},
        "tuning": {"scenario": tun["scenario"], "version": _str(tun["scenario_version"]),
                   "content_hash": tun["scenario_hash"], "options": tun.get("scenario_options", {}),
                   "best_value": proto.get("best_value")},
        "evaluation": {"scenario": ev["scenario"], "version": _str(ev["scenario_version"]),
                       "content_hash": ev["scenario_hash"], "options": ev.get("scenario_options", {})},
        "seeds": list(ev["seeds"]), "runs": per_run,
        "summary": summarize_runs(per_run),
        "cost": {k: _mean_std([r["cost"].get(k) for r in per_run]) for k in SUMMARY_COST},
        "env": {"git_commit": env.get("git_commit") or first.get("git_commit"),
                "packages": env.get("packages") or first.get("packages", {}),
                "hardware": hardware, "python": env.get("python") or first.get("python")},
        "mlflow": proto.get("mlflow"),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return dict(_plain(entry))


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def _run_record(r: Mapping[str, Any]) -> dict[str, Any]:
    general = r.get("general") or {}
    return {"seed": r["config"]["seed"], "R": r["R"], "R_pretrain": r.get("R_pretrain"),
            "metrics": dict(r["metrics"]),
            "general": general if general.get("before") else None,
            "cost": {k: r["cost"].get(k) for k in COST_KEYS if k in r["cost"]}}


def summarize_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, population std and count over seeds of every metric the runs report."""
    keys = sorted({k for r in runs for k in r["metrics"]})
    return {k: _mean_std([r["metrics"].get(k) for r in runs]) for k in keys}


def _mean_std(values: Iterable[Any]) -> dict[str, Any]:
    xs = [float(v) for v in values if _is_num(v) and math.isfinite(v)]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(xs) / len(xs)
    return {"mean": mean, "std": math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)), "n": len(xs)}


def _check_protocol(proto: Mapping[str, Any]) -> None:
    if not isinstance(proto, dict) or proto.get("kind") != "clbench-protocol" \
            or proto.get("schema_version") != 1:
        raise ClbenchError("protocol.json is not a clbench protocol record (kind/schema_version)")
    if proto.get("status") != "finished":
        raise ClbenchError(f"protocol run is not finished (status={proto.get('status')!r})")
    if not proto["evaluation"]["run_dirs"]:
        raise ClbenchError("protocol.json lists no evaluation runs")


def _check_runs(proto: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> None:
    ev = proto["evaluation"]
    expected = {**proto.get("fixed", {}), **proto["best_params"]}
    seeds = [r["config"]["seed"] for r in runs]
    if seeds != list(ev["seeds"]):
        raise ClbenchError(f"evaluation runs have seeds {seeds}, protocol.json lists {ev['seeds']}")
    for r in runs:
        where = f"evaluation run seed {r['config']['seed']}"
        if r.get("status") != "finished":
            raise ClbenchError(f"{where} is not finished")
        got = (r["config"]["method"], r["scenario"]["name"], r["scenario"]["content_hash"],
               str(r["scenario"]["version"]))
        want = (proto["method"], ev["scenario"], ev["scenario_hash"], str(ev["scenario_version"]))
        if got != want:
            raise ClbenchError(f"{where} is (method, scenario, hash, version) {got}, protocol.json {want}")
        flat = _flatten(r["config"])
        bad = [k for k, v in expected.items() if _result_key(k) in flat and flat[_result_key(k)] != v]
        if bad:
            raise ClbenchError(f"{where} did not use the protocol's settings for {', '.join(bad)}")


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
# submitting


def submit(protocol_dir: str | Path, leaderboards_dir: str | Path = "leaderboards", *,
           scenario_versions: Mapping[str, str] | None = None) -> Path:
    """Build, validate and atomically write ``<leaderboards_dir>/<track>/<method>.json``.

    Overwrites the method's previous entry on that track. Raises ClbenchError (and writes
    nothing) when the entry does not validate.
    """
    entry = entry_from_protocol(protocol_dir)
    reasons = validate_entry(entry, scenario_versions=scenario_versions)
    if reasons:
        raise ClbenchError(f"entry from {protocol_dir} rejected: " + "; ".join(reasons))
    path = Path(leaderboards_dir) / entry["track"] / entry_filename(entry["method"])
    _atomic_write(path, json.dumps(entry, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# validating

_NUM, _OPT_NUM, _OPT_STR = (int, float), (int, float, type(None)), (str, type(None))
_SCHEMA: dict[str, Any] = {
    "schema_version": int, "kind": str, "track": str, "method": str,
    "protocol": {"name": str, "version": str},
    "hyperparameters": dict, "config": dict, "search_space": dict,
    "budget": {"n_trials": int, "trials_used": int, "sampler": str, "sampler_seed": int,
               "objective": str, "objective_split": str, "tuning_seeds": list},
    "tuning": {"scenario": str, "version": str, "content_hash": str, "options": dict,
               "best_value": _OPT_NUM},
    "evaluation": {"scenario": str, "version": str, "content_hash": str, "options": dict},
    "seeds": list, "runs": list, "summary": dict, "cost": dict,
    "env": {"git_commit": _OPT_STR, "packages": dict, "hardware": dict, "python": _OPT_STR},
    "created_at": str, "content_hash": str,
}
_RUN_SCHEMA: dict[str, Any] = {"seed": int, "R": list, "metrics": dict, "cost": dict,
                               "R_pretrain": (list, type(None)), "general": (dict, type(None))}


def validate_entry(entry: Any, protocols: Mapping[str, Protocol] = PROTOCOLS, *,
                   scenario_versions: Mapping[str, str] | None = None) -> list[str]:
    """Reasons ``entry`` may not be ranked (empty list = valid).

    Checks, in order: schema (fields and types), content hash, known track, protocol version,
    budget (declared n_trials and trials used vs the track's protocol; sampler, objective, and the
    validation split), scenarios (tuning ≠ evaluation, the track's scenarios, registered VERSION),
    seeds, and that metrics follow from R and the summary from the per-seed metrics.

    Args:
        entry: a parsed entry.
        protocols: track name -> Protocol.
        scenario_versions: scenario name -> registered VERSION; default: the scenario registry.
    """
    reasons = _schema_errors(entry)
    if reasons:
        return reasons
    stored, computed = entry["content_hash"], _safe_hash(entry)
    if stored != computed:
        reasons.append(f"content_hash mismatch (entry edited after submission): stored "
                       f"{stored[:12]}, computed {computed[:12]}")
    proto = protocols.get(entry["track"])
    if proto is None:
        return [*reasons, f"unknown track {entry['track']!r}; known: {', '.join(sorted(protocols))}"]
    versions = registered_scenario_versions() if scenario_versions is None else scenario_versions
    for check in (_protocol_errors, _budget_errors, _settings_errors, _scenario_errors):
        reasons += check(entry, proto, versions)
    return reasons + _consistency_errors(entry, proto)


def _schema_errors(entry: Any) -> list[str]:
    if not isinstance(entry, dict):
        return [f"entry must be a JSON object, got {type(entry).__name__}"]
    errs = _check_fields(entry, _SCHEMA, "")
    if errs:
        return errs
    if entry["kind"] != ENTRY_KIND or entry["schema_version"] != ENTRY_SCHEMA_VERSION:
        errs.append(f"kind/schema_version {entry['kind']!r}/{entry['schema_version']!r}; expected "
                    f"{ENTRY_KIND!r}/{ENTRY_SCHEMA_VERSION}")
    if not entry["runs"]:
        errs.append("runs: no evaluation runs")
    for i, run in enumerate(entry["runs"]):
        errs += _run_schema_errors(run, f"runs[{i}]")
    for k, s in (*entry["summary"].items(), *entry["cost"].items()):
        if not (isinstance(s, dict) and _typed(s.get("mean"), _OPT_NUM) and _typed(s.get("std"), _OPT_NUM)):
            errs.append(f"summary/cost field {k!r} must be {{mean, std, n}} numbers")
    if "acc" not in entry["summary"]:
        errs.append("missing field summary.acc")
    return errs


def _run_schema_errors(run: Any, where: str) -> list[str]:
    if not isinstance(run, dict):
        return [f"{where} must be an object"]
    errs = _check_fields(run, _RUN_SCHEMA, where + ".")
    if errs:
        return errs
    R = run["R"]
    if not (R and all(isinstance(row, list) and len(row) == len(R) and all(_is_num(x) for x in row)
                      for row in R)):
        errs.append(f"{where}.R must be a non-empty square matrix of numbers")
    errs += [f"{where}.metrics.{k}: expected a number or null" for k, v in run["metrics"].items()
             if not _typed(v, _OPT_NUM)]
    errs += [f"missing field {where}.metrics.{k}" for k in ("acc", "bwt", "forgetting", "plasticity")
             if k not in run["metrics"]]
    return errs


def _check_fields(obj: Mapping[str, Any], schema: Mapping[str, Any], prefix: str) -> list[str]:
    errs: list[str] = []
    for key, want in schema.items():
        name = prefix + key
        if key not in obj:
            errs.append(f"missing field {name}")
        elif isinstance(want, dict):
            if isinstance(obj[key], dict):
                errs += _check_fields(obj[key], want, name + ".")
            else:
                errs.append(f"field {name}: expected object, got {type(obj[key]).__name__}")
        elif not _typed(obj[key], want):
            names = "/".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            errs.append(f"field {name}: expected {names}, got {type(obj[key]).__name__}")
    return errs


def _typed(v: Any, want: type | tuple[type, ...]) -> bool:
    wants = want if isinstance(want, tuple) else (want,)
    if isinstance(v, bool):
        return bool in wants
    if isinstance(v, float) and not math.isfinite(v):
        return False
    return isinstance(v, wants)


def _is_num(v: Any) -> bool:
    return _typed(v, _NUM)


def _safe_hash(entry: Mapping[str, Any]) -> str:
    try:
        return content_hash(entry)
    except ValueError:  # NaN/inf cannot be canonical JSON
        return "(not canonical JSON: non-finite number)"


def _protocol_errors(entry: Mapping[str, Any], proto: Protocol, _v: Mapping[str, str]) -> list[str]:
    p = entry["protocol"]
    if (p["name"], p["version"]) != (proto.name, proto.version):
        return [f"stale protocol {p['name']} v{p['version']}; track {proto.track!r} uses "
                f"{proto.name} v{proto.version}"]
    return []


def _budget_errors(entry: Mapping[str, Any], proto: Protocol, _v: Mapping[str, str]) -> list[str]:
    b, errs = entry["budget"], []
    if b["n_trials"] != proto.n_trials:
        errs.append(f"budget: declared n_trials={b['n_trials']} differs from the {proto.track} "
                    f"protocol's {proto.n_trials}")
    if b["trials_used"] > proto.n_trials:
        errs.append(f"budget exceeded: {b['trials_used']} trials used > {proto.n_trials} allowed by "
                    f"the {proto.track} protocol")
    for key, want in (("sampler", proto.sampler), ("sampler_seed", proto.sampler_seed),
                      ("objective", proto.objective)):
        if b[key] != want:
            errs.append(f"budget: {key}={b[key]!r} differs from the protocol's {want!r}")
    if b["objective_split"] != "val":
        errs.append(f"objective computed on split {b['objective_split']!r}; the protocol tunes on "
                    f"the tuning scenario's validation split ('val') only")
    return errs


def _settings_errors(entry: Mapping[str, Any], proto: Protocol, _v: Mapping[str, str]) -> list[str]:
    """The protocol's fixed settings unchanged, H* inside the search space, nothing hand-set."""
    cfg, hp, errs = entry["config"], entry["hyperparameters"], []
    for k, v in proto.fixed.items():
        if k not in cfg or cfg[k] != v:
            errs.append(f"config {k}={cfg.get(k)!r} deviates from the protocol's fixed {k}={v!r}")
    if any(cfg.get(k) != v for k, v in hp.items()):
        errs.append("config disagrees with the chosen hyperparameters")
    outside = sorted(k for k in hp if k not in entry["search_space"])
    if outside:
        errs.append(f"hyperparameters outside the declared search space: {', '.join(outside)}")
    extra = sorted(k for k in cfg if k not in proto.fixed and k not in hp and not k.startswith(NEUTRAL_KEYS))
    if extra:
        errs.append(f"settings set by hand outside the protocol's fixed settings and trial budget: "
                    f"{', '.join(extra)}")
    return errs


def _canon(obj: Any) -> str:
    """Order- and tuple/list-insensitive JSON form, for comparing recorded options."""
    return json.dumps(obj or {}, sort_keys=True, default=list)


def _scenario_errors(entry: Mapping[str, Any], proto: Protocol, versions: Mapping[str, str]) -> list[str]:
    tun, ev, errs = entry["tuning"], entry["evaluation"], []
    # one scenario family may serve both phases with different options (e.g. text_cl tasks)
    same = tun["scenario"] == ev["scenario"] and _canon(tun.get("options")) == _canon(ev.get("options"))
    if same or tun["content_hash"] == ev["content_hash"]:
        errs.append(f"tuned on the evaluation scenario ({tun['scenario']} "
                    f"{tun['content_hash'][:12]} vs {ev['scenario']} {ev['content_hash'][:12]})")
    for phase, rec, want, opts in (("tuning", tun, proto.tune_scenario, proto.tune_options),
                                   ("evaluation", ev, proto.eval_scenario, proto.eval_options)):
        if rec["scenario"] != want:
            errs.append(f"{phase} scenario {rec['scenario']!r} is not the {proto.track} track's {want!r}")
        elif "options" in rec and _canon(rec["options"]) != _canon(opts):
            errs.append(f"{phase} scenario options {rec['options']} differ from the {proto.track} track's {opts}")
        registered = versions.get(rec["scenario"])
        if registered is None:
            errs.append(f"{phase} scenario {rec['scenario']!r} is not registered")
        elif str(registered) != rec["version"]:
            errs.append(f"stale {phase} scenario version: {rec['scenario']} v{rec['version']}, "
                        f"registered VERSION is {registered}")
    return errs


def _consistency_errors(entry: Mapping[str, Any], proto: Protocol) -> list[str]:
    errs = []
    run_seeds = [r["seed"] for r in entry["runs"]]
    if entry["seeds"] != list(proto.eval_seeds):
        errs.append(f"evaluation seeds {entry['seeds']} differ from the protocol's {list(proto.eval_seeds)}")
    if run_seeds != entry["seeds"]:
        errs.append(f"runs have seeds {run_seeds}, entry lists {entry['seeds']}")
    for r in entry["runs"]:
        try:
            derived = M.summarize(r["R"], r["R_pretrain"] or [0.0] * len(r["R"]))
        except (ValueError, TypeError, IndexError):
            continue  # malformed R is already reported by the schema check
        keys = (*RUN_METRICS, "fwt") if r["R_pretrain"] else RUN_METRICS
        bad = [k for k in keys if k in r["metrics"] and not _close(r["metrics"][k], derived[k])]
        if bad:
            errs.append(f"seed {r['seed']}: metrics {', '.join(bad)} do not follow from its R")
    recomputed = summarize_runs(entry["runs"])
    bad = [k for k, s in recomputed.items() if not _close(entry["summary"].get(k, {}).get("mean"), s["mean"])]
    if bad:
        errs.append(f"summary disagrees with the per-seed metrics ({', '.join(bad)})")
    return errs


def _close(a: Any, b: Any) -> bool:
    """Equal within 1e-6, where None (stored) matches None/NaN (computed)."""
    b_missing = b is None or (isinstance(b, float) and not math.isfinite(b))
    if a is None or b_missing:
        return a is None and b_missing
    return _is_num(a) and abs(float(a) - float(b)) <= 1e-6


_VERSIONS: dict[str, str] = {}


def registered_scenario_versions() -> dict[str, str]:
    """Scenario name -> its class's VERSION, from the scenario registry (imports the plug-ins)."""
    if not _VERSIONS:
        from clbench.registry import SCENARIOS

        _VERSIONS.update({n: str(getattr(SCENARIOS.get(n), "VERSION", "")) for n in SCENARIOS.names()})
    return dict(_VERSIONS)


def validate_file(path: Path, protocols: Mapping[str, Protocol] = PROTOCOLS, *,
                  scenario_versions: Mapping[str, str] | None = None) -> tuple[Any, list[str]]:
    """(parsed entry or None, reasons) for one entry file, including where it lies."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [f"malformed JSON: {exc}"]
    reasons = validate_entry(entry, protocols, scenario_versions=scenario_versions)
    if isinstance(entry, dict) and isinstance(entry.get("method"), str) and isinstance(entry.get("track"), str):
        want = f"{entry['track']}/{entry_filename(entry['method'])}"
        if f"{path.parent.name}/{path.name}" != want:
            reasons.append(f"file lies at {path.parent.name}/{path.name}; this entry belongs at {want}")
    return entry, reasons


def validate_dir(path: str | Path = "leaderboards", protocols: Mapping[str, Protocol] = PROTOCOLS, *,
                 scenario_versions: Mapping[str, str] | None = None) -> dict[Path, list[str]]:
    """Every entry file (``*.json``, hidden files skipped) under ``path`` -> its reasons."""
    root = Path(path)
    if not root.is_dir():
        raise ClbenchError(f"no leaderboard directory at {root}")
    files = sorted(f for f in root.rglob("*.json") if not f.name.startswith("."))
    return {f: validate_file(f, protocols, scenario_versions=scenario_versions)[1] for f in files}


# ---------------------------------------------------------------------------------------------
# rendering


def render(leaderboards_dir: str | Path = "leaderboards", protocols: Mapping[str, Protocol] = PROTOCOLS, *,
           scenario_versions: Mapping[str, str] | None = None) -> list[Path]:
    """Write ``<track>/README.md`` and ``<track>/index.html`` for every track folder.

    Only entries that validate are ranked (by mean ACC, best first); the others are listed as
    rejected with their reasons. Returns the written paths.
    """
    root = Path(leaderboards_dir)
    if not root.is_dir():
        raise ClbenchError(f"no leaderboard directory at {root}")
    written: list[Path] = []
    for track_dir in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        valid, rejected = [], []
        for f in sorted(track_dir.glob("*.json")):
            if f.name.startswith("."):
                continue
            entry, reasons = validate_file(f, protocols, scenario_versions=scenario_versions)
            if reasons:
                rejected.append((f.name, reasons))
            else:
                valid.append(entry)
        valid.sort(key=_rank_key)
        proto = protocols.get(track_dir.name)
        readme = track_dir / "README.md"
        old = readme.read_text(encoding="utf-8") if readme.is_file() else None
        _atomic_write(readme, _readme(track_dir.name, proto, valid, rejected, old))
        _atomic_write(track_dir / "index.html", render_html(track_dir.name, proto, valid, rejected))
        written += [readme, track_dir / "index.html"]
    return written


def _rank_key(entry: Mapping[str, Any]) -> tuple[float, str]:
    acc = _mean(entry, "acc")
    return (-acc if acc is not None else math.inf, entry["method"])


def _mean(entry: Mapping[str, Any], key: str, part: str = "summary") -> float | None:
    v = entry[part].get(key, {}).get("mean")
    return float(v) if _is_num(v) else None


def _pm(entry: Mapping[str, Any], key: str, part: str = "summary", digits: int = 3) -> str:
    s = entry[part].get(key) or {}
    if not _is_num(s.get("mean")):
        return "n/a"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" if _is_num(s.get("std")) else f"{s['mean']:.{digits}f}"


def _has_general(entries: Sequence[Mapping[str, Any]]) -> bool:
    return any(_mean(e, "general_retention") is not None for e in entries)


Column = tuple[str, str, str, Callable[[Mapping[str, Any]], str], Callable[[Mapping[str, Any]], Any]]


def _columns(entries: Sequence[Mapping[str, Any]]) -> list[Column]:
    """(key, header, type, text(entry), sort value(entry)) for the board's columns."""
    cols: list[Column] = [
        ("method", "Method", "text", lambda e: e["method"], lambda e: e["method"]),
        ("acc", "ACC", "num", lambda e: _pm(e, "acc"), lambda e: _mean(e, "acc")),
        ("bwt", "BWT", "num", lambda e: _pm(e, "bwt"), lambda e: _mean(e, "bwt")),
        ("forgetting", "Forgetting", "num", lambda e: _pm(e, "forgetting"), lambda e: _mean(e, "forgetting")),
        ("plasticity", "Plasticity", "num", lambda e: _pm(e, "plasticity"), lambda e: _mean(e, "plasticity")),
    ]
    if _has_general(entries):
        cols.append(("general", "General retention", "num", lambda e: _pm(e, "general_retention"),
                     lambda e: _mean(e, "general_retention")))
    cols += [
        ("time", "Train time (s)", "num", lambda e: _pm(e, "train_time_s", "cost", 1),
         lambda e: _mean(e, "train_time_s", "cost")),
        ("trials", "Trials", "num", lambda e: f"{e['budget']['trials_used']}/{e['budget']['n_trials']}",
         lambda e: e["budget"]["trials_used"]),
        ("seeds", "Seeds", "num", lambda e: ", ".join(str(s) for s in e["seeds"]), lambda e: len(e["seeds"])),
    ]
    return cols


def _md_cell(text: str) -> str:
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def _protocol_line(track: str, proto: Protocol | None) -> str:
    if proto is None:
        return f"Track `{track}` is not a known track: every entry here is rejected."
    return (f"Protocol {proto.name} v{proto.version}: tune on `{proto.tune_scenario}` "
            f"({proto.n_trials} trials, {proto.sampler} sampler seed {proto.sampler_seed}, objective "
            f"{proto.objective} on the validation split), evaluate H* on `{proto.eval_scenario}` with "
            f"seeds {', '.join(map(str, proto.eval_seeds))}. Mean ± std over seeds.")


def _readme(track: str, proto: Protocol | None, valid: Sequence[Mapping[str, Any]],
            rejected: Sequence[tuple[str, list[str]]], old: str | None) -> str:
    cols = _columns(valid)
    lines = [MARK_START, "", _protocol_line(track, proto), ""]
    if valid:
        lines += ["| # | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += ["| " + " | ".join([str(i), *(_md_cell(c[3](e)) for c in cols)]) + " |"
                  for i, e in enumerate(valid, 1)]
    else:
        lines.append("No valid entries yet.")
    if rejected:
        lines += ["", "Rejected entries (not ranked):", ""]
        lines += [f"- `{_md_cell(name)}`: {_md_cell('; '.join(r))}" for name, r in rejected]
    block = "\n".join([*lines, "", MARK_END])
    if old and MARK_START in old and MARK_END in old:
        head, rest = old.split(MARK_START, 1)
        return head + block + rest.split(MARK_END, 1)[1]
    return (f"# Leaderboard: {track}\n\nGenerated by `clbench leaderboard render` from the entries in "
            f"this folder; the part between the markers is rewritten on every render. Interactive "
            f"page: [index.html](index.html).\n\n{block}\n")


# ---------------------------------------------------------------------------------------------
# HTML page and inline SVG plots

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
            "#bcbd22", "#7f7f7f")
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#222;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
.note{color:#555}table{border-collapse:collapse;width:100%;margin:.8em 0}
th,td{border-bottom:1px solid #e3e3e3;padding:.35em .6em;text-align:right;white-space:nowrap}
th:nth-child(2),td:nth-child(2){text-align:left}th{background:#f6f8fa}
td:nth-child(2){white-space:normal;overflow-wrap:anywhere;min-width:8em;max-width:22em}
.scroll{overflow-x:auto}figcaption{overflow-wrap:anywhere;max-width:420px}
th button{all:unset;cursor:pointer;font-weight:600}th button:hover{text-decoration:underline}
th[aria-sort=ascending] button::after{content:" \\25B2"}th[aria-sort=descending] button::after{content:" \\25BC"}
tbody tr:hover{background:#f3f7ff}.plots{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}
figure{margin:0}figcaption{color:#555;font-size:.9em}svg text{font-family:inherit}
.rejected li{margin:.3em 0}code{background:#f3f3f3;padding:0 .25em;border-radius:3px}
details{margin:.4em 0}details pre{background:#f8f8f8;padding:.6em;overflow:auto;font-size:12px}
"""
_JS = """
(function () {
  var table = document.getElementById('board');
  if (!table) { return; }
  var heads = table.tHead.rows[0].cells, state = {key: null, dir: null};
  function val(row, i, num) {
    var v = row.cells[i].getAttribute('data-v');
    if (!num) { return v || ''; }
    return v === null || v === '' ? NaN : parseFloat(v);
  }
  function sortBy(key, dir) {
    var idx = -1, i;
    for (i = 0; i < heads.length; i++) {
      heads[i].removeAttribute('aria-sort');
      if (heads[i].getAttribute('data-key') === key) { idx = i; }
    }
    if (idx < 0) { return; }
    var num = heads[idx].getAttribute('data-type') === 'num', sign = dir === 'asc' ? 1 : -1;
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = val(a, idx, num), y = val(b, idx, num);
      if (num) {
        if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }  // missing values last
        return sign * (x - y);
      }
      return sign * x.localeCompare(y);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    heads[idx].setAttribute('aria-sort', dir === 'asc' ? 'ascending' : 'descending');
    state.key = key; state.dir = dir;
    document.body.setAttribute('data-sorted', key + ':' + dir);
  }
  Array.prototype.forEach.call(heads, function (th) {
    var b = th.querySelector('button');
    if (!b) { return; }
    b.addEventListener('click', function () {
      var key = th.getAttribute('data-key'), num = th.getAttribute('data-type') === 'num';
      var dir = state.key === key ? (state.dir === 'asc' ? 'desc' : 'asc') : (num ? 'desc' : 'asc');
      sortBy(key, dir);
    });
  });
  function fromHash() {
    var m = /^#sort=([a-z_]+):(asc|desc)$/.exec(window.location.hash);
    if (m) { sortBy(m[1], m[2]); }
  }
  window.addEventListener('hashchange', fromHash);
  fromHash();
  if (!state.key) { state.key = 'acc'; state.dir = 'desc'; }
  document.body.setAttribute('data-js', 'ready');
}());
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def render_html(track: str, proto: Protocol | None, valid: Sequence[Mapping[str, Any]],
                rejected: Sequence[tuple[str, list[str]]]) -> str:
    """The self-contained page of one track (CSP forbids network and foreign scripts)."""
    script_hash = base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()
    csp = (f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; "
           f"img-src data:; base-uri 'none'; form-action 'none'")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>clbench leaderboard: {_e(track)}</title><style>{_CSS}</style></head><body>",
        f"<h1>clbench leaderboard: {_e(track)}</h1>",
        f'<p class="note">{_e(_protocol_line(track, proto).replace("`", ""))} Click a column header '
        f"to sort.</p>",
        _html_table(valid) if valid else "<p>No valid entries yet.</p>",
    ]
    if valid:
        parts += ['<h2>Plots</h2><div class="plots">', _figure(scatter_svg(valid), "Final average accuracy "
                  "vs forgetting (mean over seeds; bars = ± std)")]
        if _has_general(valid):
            parts.append(_figure(retention_svg(valid), "General-capability retention (after / before)"))
        parts.append("</div><h2>Accuracy matrices R (mean over seeds)</h2><div class=\"plots\">")
        parts += [_figure(heatmap_svg(e), e["method"]) for e in valid]
        parts += ["</div>", "<h2>Entry details</h2>", *(_details(e) for e in valid)]
    if rejected:
        parts.append('<h2>Rejected entries (not ranked)</h2><ul class="rejected">')
        parts += [f"<li><code>{_e(name)}</code>: {_e('; '.join(r))}</li>" for name, r in rejected]
        parts.append("</ul>")
    parts += [f'<p class="note">Generated by <code>clbench leaderboard render</code> at '
              f"{_e(datetime.now(UTC).isoformat(timespec='seconds'))}.</p>",
              f"<script>{_JS}</script></body></html>", ""]
    return "\n".join(parts)


_ACC_SORTED = ' aria-sort="descending"'


def _html_table(valid: Sequence[Mapping[str, Any]]) -> str:
    cols = _columns(valid)
    head = '<th data-key="rank" data-type="num">#</th>' + "".join(
        f'<th data-key="{k}" data-type="{t}" scope="col"{_ACC_SORTED if k == "acc" else ""}>'
        f'<button type="button">{_e(h)}</button></th>' for k, h, t, _, _ in cols)
    rows = []
    for i, e in enumerate(valid, 1):
        cells = [f'<td data-v="{i}">{i}</td>']
        for _, _, t, text, sort in cols:
            v = sort(e)
            dv = "" if v is None else (repr(float(v)) if t == "num" else str(v))
            cells.append(f'<td data-v="{_e(dv)}">{_e(text(e))}</td>')
        rows.append(f'<tr data-method="{_e(e["method"])}">{"".join(cells)}</tr>')
    return (f'<div class="scroll"><table id="board"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _details(e: Mapping[str, Any]) -> str:
    env = e["env"]
    info = {"hyperparameters": e["hyperparameters"], "config": e["config"], "budget": e["budget"],
            "tuning": e["tuning"], "evaluation": e["evaluation"], "cost": e["cost"],
            "git_commit": env["git_commit"], "hardware": env["hardware"], "python": env["python"],
            "packages": env["packages"], "created_at": e["created_at"], "content_hash": e["content_hash"]}
    return (f"<details><summary>{_e(e['method'])}</summary>"
            f"<pre>{_e(json.dumps(info, indent=2, ensure_ascii=False))}</pre></details>")


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _color(entries: Sequence[Mapping[str, Any]], entry: Mapping[str, Any]) -> str:
    """One colour per method, the same in every plot (by rank)."""
    return _PALETTE[list(entries).index(entry) % len(_PALETTE)]


def _points(entries: Sequence[Mapping[str, Any]], *keys: str) -> list[tuple[Mapping[str, Any], list[float]]]:
    """(entry, [mean of each key]) for the entries that have every key."""
    out = []
    for e in entries:
        vals = [_mean(e, k) for k in keys]
        if all(v is not None for v in vals):
            out.append((e, [float(v or 0.0) for v in vals]))
    return out


def _axis(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """A padded range with round tick values (at most 6 intervals)."""
    lo, hi = min(lo, 0.0), max(hi * 1.05, lo + 0.1)
    step = next((s for s in (0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0) if (hi - lo) / s <= 6), 10.0)
    a, b = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    return a, b, [a + k * step for k in range(round((b - a) / step) + 1)]


Box = tuple[float, float, float, float]


def _free(box: Box, taken: Sequence[Box], w: float, h: float) -> bool:
    x0, y0, x1, y1 = box
    inside = x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h
    return inside and all(x1 <= a or x0 >= c or y1 <= b or y0 >= d for a, b, c, d in taken)


def _place_labels(points: Sequence[tuple[float, float, str]], w: float, h: float) -> list[tuple[float, float, str]]:
    """(x, y, text-anchor) per label: right of its point, else left, nudged up/down off others."""
    taken: list[Box] = [(x - 6, y - 6, x + 6, y + 6) for x, y, _ in points]
    out = []
    for x, y, text in points:
        tw, spot = 6.8 * len(text) + 2, None
        for dy in (-6, 16, -18, 28, -30, 40, -42, 52, -54, 64):
            for side in (1, -1):
                x0 = x + 8 if side == 1 else x - 8 - tw
                box = (x0, y + dy - 11, x0 + tw, y + dy + 3)
                if _free(box, taken, w, h):
                    spot = (x + 8 * side, y + dy, "start" if side == 1 else "end", box)
                    break
            if spot:
                break
        lx, ly, anchor, box = spot or (x + 8, y - 6, "start", (x + 8, y - 17, x + 8 + tw, y - 3))
        taken.append(box)
        out.append((lx, ly, anchor))
    return out


def scatter_svg(entries: Sequence[Mapping[str, Any]], w: int = 460, h: int = 340) -> str:
    """ACC (y) vs forgetting (x), one labelled point per method with ± std whiskers."""
    pts = [(e, x, y) for e, (x, y) in _points(entries, "forgetting", "acc")]
    ml, mr, mt, mb = 52, 16, 14, 44
    xs = [x for _, x, _ in pts] or [0.0]
    x0, x1, xticks = _axis(min(xs), max(xs))
    y0, y1 = 0.0, 1.0

    def px(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * (w - ml - mr)

    def py(y: float) -> float:
        return h - mb - (y - y0) / (y1 - y0) * (h - mt - mb)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="plot-scatter" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" role="img" aria-label="ACC vs forgetting">',
           f'<rect x="{ml}" y="{mt}" width="{w - ml - mr}" height="{h - mt - mb}" fill="#fafafa" stroke="#ccc"/>']
    for t in xticks:
        out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{mt}" y2="{h - mb}" stroke="#eee"/>'
                   f'<text x="{px(t):.1f}" y="{h - mb + 15}" font-size="11" text-anchor="middle">{t:.2f}</text>')
    for k in range(6):
        t = y0 + (y1 - y0) * k / 5
        out.append(f'<line x1="{ml}" x2="{w - mr}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>'
                   f'<text x="{ml - 6}" y="{py(t) + 4:.1f}" font-size="11" text-anchor="end">{t:.1f}</text>')
    out.append(f'<text x="{(ml + w - mr) / 2}" y="{h - 8}" font-size="12" text-anchor="middle">'
               f"Forgetting (lower is better)</text>"
               f'<text transform="translate(14 {(mt + h - mb) / 2}) rotate(-90)" font-size="12" '
               f'text-anchor="middle">ACC (higher is better)</text>')
    labels = _place_labels([(px(x), py(y), _short(e["method"], 26)) for e, x, y in pts], w, h)
    for (e, x, y), (lx, ly, anchor) in zip(pts, labels, strict=True):
        sx, sy = e["summary"]["forgetting"].get("std") or 0.0, e["summary"]["acc"].get("std") or 0.0
        c, cx, cy = _color(entries, e), px(x), py(y)
        lead = (f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{lx:.1f}" y2="{ly - 4:.1f}" stroke="{c}" '
                f'stroke-width="0.6"/>' if abs(ly - cy) > 12 else "")
        out.append(f'<g class="point" data-method="{_e(e["method"])}"><title>{_e(e["method"])}: ACC '
                   f"{y:.3f}, forgetting {x:.3f}</title>{lead}"
                   f'<line x1="{px(x - sx):.1f}" x2="{px(x + sx):.1f}" y1="{cy:.1f}" y2="{cy:.1f}" stroke="{c}"/>'
                   f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{py(y - sy):.1f}" y2="{py(y + sy):.1f}" stroke="{c}"/>'
                   f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{c}"/>'
                   f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="12" fill="{c}" text-anchor="{anchor}">'
                   f'{_e(_short(e["method"], 26))}</text></g>')
    out.append("</svg>")
    return "".join(out)


def mean_matrix(entry: Mapping[str, Any]) -> list[list[float]]:
    """Element-wise mean of R over the entry's seeds."""
    Rs = [r["R"] for r in entry["runs"]]
    T = len(Rs[0])
    return [[sum(R[i][j] for R in Rs) / len(Rs) for j in range(T)] for i in range(T)]


def _heat(v: float) -> str:
    """White (0) to dark blue (1)."""
    t = min(max(v, 0.0), 1.0)
    r, g, b = (int(247 + (8 - 247) * t), int(251 + (48 - 251) * t), int(255 + (107 - 255) * t))
    return f"rgb({r},{g},{b})"


def heatmap_svg(entry: Mapping[str, Any], cell: int = 34) -> str:
    """Mean R as a heatmap: rows = trained through experience i, columns = tested on j."""
    R = mean_matrix(entry)
    T, ml, mt = len(R), 40, 34
    cell = max(12, min(cell, 340 // max(T, 1)))
    w, h = ml + T * cell + 8, mt + T * cell + 8
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="heatmap" data-method="{_e(entry["method"])}" '
           f'width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="R heatmap">',
           f'<text x="{ml}" y="12" font-size="11">tested on →</text>',
           f'<text transform="translate(11 {mt + T * cell / 2}) rotate(-90)" font-size="11" '
           f'text-anchor="middle">trained through →</text>']
    for j in range(T):
        out.append(f'<text x="{ml + j * cell + cell / 2}" y="{mt - 5}" font-size="10" text-anchor="middle">{j}</text>')
    for i, row in enumerate(R):
        out.append(f'<text x="{ml - 5}" y="{mt + i * cell + cell / 2 + 4}" font-size="10" text-anchor="end">{i}</text>')
        for j, v in enumerate(row):
            x, y = ml + j * cell, mt + i * cell
            out.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{_heat(v)}">'
                       f"<title>R[{i},{j}] = {v:.3f}</title></rect>")
            if cell >= 26:
                out.append(f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" font-size="10" text-anchor="middle" '
                           f'fill="{"#fff" if v > 0.55 else "#222"}">{v:.2f}</text>')
    out.append("</svg>")
    return "".join(out)


def retention_svg(entries: Sequence[Mapping[str, Any]], w: int = 460) -> str:
    """Horizontal bars of general-capability retention (1.0 = nothing lost), ± std."""
    rows = [(e, v) for e, (v,) in _points(entries, "general_retention")]
    ml, mr, bar, gap, mt = 150, 60, 20, 8, 10
    h = mt + len(rows) * (bar + gap) + 30
    top = max(1.2, *(v + (e["summary"]["general_retention"].get("std") or 0) for e, v in rows))

    def px(v: float) -> float:
        return ml + v / top * (w - ml - mr)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="plot-retention" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" role="img" aria-label="general-capability retention">']
    for k, (e, v) in enumerate(rows):
        y, sd = mt + k * (bar + gap), e["summary"]["general_retention"].get("std") or 0.0
        out.append(f'<g class="bar" data-method="{_e(e["method"])}"><title>{_e(e["method"])}: {v:.3f}</title>'
                   f'<text x="{ml - 6}" y="{y + bar / 2 + 4}" font-size="12" text-anchor="end">{_e(_short(e["method"], 19))}</text>'
                   f'<rect x="{ml}" y="{y}" width="{max(px(v) - ml, 0):.1f}" height="{bar}" fill="{_color(entries, e)}"/>'
                   f'<line x1="{px(v - sd):.1f}" x2="{px(v + sd):.1f}" y1="{y + bar / 2}" y2="{y + bar / 2}" stroke="#222"/>'
                   f'<text x="{px(v + sd) + 4:.1f}" y="{y + bar / 2 + 4}" font-size="11">{v:.3f}</text></g>')
    base = mt + len(rows) * (bar + gap)
    out.append(f'<line x1="{px(1.0):.1f}" x2="{px(1.0):.1f}" y1="{mt - 4}" y2="{base}" stroke="#888" '
               f'stroke-dasharray="4 3"/><text x="{px(1.0):.1f}" y="{base + 16}" font-size="11" '
               f'text-anchor="middle">1.0 = no loss</text></svg>')
    return "".join(out)

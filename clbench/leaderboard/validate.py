"""Owns entry validation: schema, content hash, the track's protocol, budget, scenarios, consistency.

``validate_entry`` returns the reasons an entry may not be ranked (empty list = valid);
``validate_file`` adds where the file lies, ``validate_dir`` checks every entry under a root.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clbench import metrics as M
from clbench.errors import ClbenchError
from clbench.leaderboard.entry import (
    ENTRY_KIND,
    ENTRY_SCHEMA_VERSION,
    RUN_METRICS,
    _is_num,
    _typed,
    content_hash,
    entry_filename,
    entry_files,
    summarize_runs,
)
from clbench.tuning import PROTOCOLS, Protocol

# overrides that do not change what is learned (where results go, progress bars, device placement)
NEUTRAL_KEYS = ("tracking.", "trainer.progress", "trainer.device", "trainer.precision", "eval.batch_size")
_OPT_NUM, _OPT_STR = (int, float, type(None)), (str, type(None))
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
    R, b = run["R"], run["R_pretrain"]
    if not (R and all(isinstance(row, list) and len(row) == len(R) and all(_is_num(x) for x in row)
                      for row in R)):
        errs.append(f"{where}.R must be a non-empty square matrix of numbers")
    elif not all(0.0 <= x <= 1.0 for row in R for x in row):
        errs.append(f"{where}.R has values outside [0, 1]")
    if b is not None and not (len(b) == len(R) and all(_is_num(x) and 0.0 <= x <= 1.0 for x in b)):
        errs.append(f"{where}.R_pretrain must hold one number in [0, 1] per experience ({len(R)})")
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


#: limits that keep one hostile file from stopping validate/render for the whole board
MAX_ENTRY_BYTES = 4 * 2**20
MAX_ENTRY_DEPTH = 16


def _depth(obj: Any, level: int = 0) -> int:
    """Nesting depth of a parsed JSON value (stops counting past the limit)."""
    if level > MAX_ENTRY_DEPTH or not isinstance(obj, dict | list):
        return level
    children = obj.values() if isinstance(obj, dict) else obj
    return max((_depth(c, level + 1) for c in children), default=level + 1)


def validate_file(path: Path, protocols: Mapping[str, Protocol] = PROTOCOLS, *,
                  scenario_versions: Mapping[str, str] | None = None) -> tuple[Any, list[str]]:
    """(parsed entry or None, reasons) for one entry file, including where it lies."""
    try:
        if path.stat().st_size > MAX_ENTRY_BYTES:
            return None, [f"entry file is {path.stat().st_size} bytes; at most {MAX_ENTRY_BYTES} are read"]
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [f"malformed JSON: {exc}"]
    except RecursionError:
        return None, ["malformed JSON: nested too deeply"]
    if _depth(entry) > MAX_ENTRY_DEPTH:
        return None, [f"entry nests deeper than {MAX_ENTRY_DEPTH} levels"]
    reasons = validate_entry(entry, protocols, scenario_versions=scenario_versions)
    if isinstance(entry, dict) and isinstance(entry.get("method"), str) and isinstance(entry.get("track"), str):
        want = f"{entry['track']}/{entry_filename(entry['method'])}"
        if f"{path.parent.name}/{path.name}" != want:
            reasons.append(f"file lies at {path.parent.name}/{path.name}; this entry belongs at {want}")
    return entry, reasons


def validate_dir(path: str | Path = "leaderboards", protocols: Mapping[str, Protocol] = PROTOCOLS, *,
                 scenario_versions: Mapping[str, str] | None = None) -> dict[Path, list[str]]:
    """Every entry file under ``path`` (:func:`entry_files`) -> its reasons."""
    root = Path(path)
    if not root.is_dir():
        raise ClbenchError(f"no leaderboard directory at {root}")
    files = entry_files(root, recursive=True)
    return {f: validate_file(f, protocols, scenario_versions=scenario_versions)[1] for f in files}

"""Owns entry validation: why an entry may not be ranked.

Fields and types come from the typed parse (:meth:`LeaderboardEntry.from_json`, one error naming
the path); this module adds what types cannot say (finite numbers, R square and in [0, 1],
required metrics), the content hash (over the dict as read), and the semantic checks: the
track's protocol, budget, settings, scenarios, seeds, and metrics that follow from R.
``validate_entry`` returns the reasons (empty list = valid); ``validate_file`` adds size, depth,
where the file lies and its optional signature (:mod:`clbench.leaderboard.signing`);
``validate_dir`` checks every entry under a root.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import clbench.leaderboard.provenance as provenance
from clbench import metrics as M
from clbench.errors import ClbenchError
from clbench.leaderboard.entry import RUN_METRICS, entry_filename, entry_files
from clbench.leaderboard.record import EntryRun, LeaderboardEntry, content_hash, is_num
from clbench.leaderboard.signing import read_allowed_signers, signature_errors
from clbench.tuning import PROTOCOLS, Protocol

#: settings that change no recorded R: where results go, progress bars, the device and precision
#: (within the reproduce tolerance), the evaluation batch, and whether R_val is filled beside R
#: (the protocol fills it in tuning trials only)
NEUTRAL_KEYS = ("tracking.", "trainer.progress", "trainer.device", "trainer.precision", "eval.batch_size",
                "eval.validation")
#: metrics every run reports (their fields and types come from :class:`LeaderboardEntry`)
_REQUIRED_METRICS = ("acc", "bwt", "forgetting", "plasticity")


def validate_entry(entry: Any, protocols: Mapping[str, Protocol] = PROTOCOLS, *,
                   scenario_versions: Mapping[str, str] | None = None,
                   search_spaces: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Reasons ``entry`` may not be ranked (empty list = valid).

    Checks, in order: schema (the typed parse: fields and types; then R, R_pretrain, required
    metrics, finite numbers), content hash, known track, protocol version, budget (declared
    n_trials and trials used vs the track's protocol; sampler, objective, and the validation
    split), scenarios (tuning ≠ evaluation, the track's scenarios, registered VERSION), the
    method registered and H* inside its registered grid (:mod:`clbench.leaderboard.provenance`),
    seeds, and that metrics follow from R and every summary from the per-seed values. Under a
    zero-budget protocol (``n_trials`` 0) an entry holds no trial, no tuning scenario, no
    hyperparameters and an empty search space; a test-time track's R is one row (1 x D).

    Args:
        entry: an entry dict as read from its file, or a :class:`LeaderboardEntry`.
        protocols: track name -> Protocol.
        scenario_versions: scenario name -> registered VERSION; default: the scenario registry.
        search_spaces: method name -> its registered search space record; default: the method
            registry.
    """
    return check_entry(entry, protocols, scenario_versions=scenario_versions, search_spaces=search_spaces)[1]


def check_entry(entry: Any, protocols: Mapping[str, Protocol] = PROTOCOLS, *,
                scenario_versions: Mapping[str, str] | None = None,
                search_spaces: Mapping[str, Mapping[str, Any]] | None = None,
                ) -> tuple[LeaderboardEntry | None, list[str]]:
    """(the typed entry, or None when it does not parse; the reasons of :func:`validate_entry`)."""
    raw = entry.to_json() if isinstance(entry, LeaderboardEntry) else entry
    try:
        rec = LeaderboardEntry.from_json(raw)
    except ClbenchError as exc:
        return None, [str(exc)]
    reasons = _shape_errors(rec, raw)
    if reasons:
        return rec, reasons
    stored, computed = rec.content_hash, _safe_hash(raw)
    if stored != computed:
        reasons.append(f"content_hash mismatch (entry edited after submission): stored "
                       f"{stored[:12]}, computed {computed[:12]}")
    proto = protocols.get(rec.track)
    if proto is None:
        return rec, [*reasons, f"unknown track {rec.track!r}; known: {', '.join(sorted(protocols))}"]
    versions = registered_scenario_versions() if scenario_versions is None else scenario_versions
    for check in (_protocol_errors, _budget_errors, _settings_errors, _scenario_errors):
        reasons += check(rec, proto, versions)
    spaces = provenance.registered_search_spaces() if search_spaces is None else search_spaces
    reasons += (provenance.method_errors(rec, spaces, tuned=proto.tuned, protocol=proto) + provenance.budget_errors(rec)
                + provenance.commit_errors(rec))
    return rec, reasons + _consistency_errors(rec, proto)


def _shape_errors(entry: LeaderboardEntry, raw: Any) -> list[str]:
    """What the types alone do not say: finite numbers, runs present, R square in [0, 1], ..."""
    errs = [f"entry.{path}: non-finite number {v!r} (store null)" for path, v in _non_finite(raw, "")]
    if errs:
        return errs
    if not entry.runs:
        errs.append("runs: no evaluation runs")
    for i, run in enumerate(entry.runs):
        errs += _run_shape_errors(run, f"runs[{i}]")
    if "acc" not in entry.summary:
        errs.append("missing field summary.acc")
    return errs


def _run_shape_errors(run: EntryRun, where: str) -> list[str]:
    errs: list[str] = []
    R, b = run.R, run.R_pretrain
    # square (T x T, training streams) or one row (1 x D, test-time streams: the track's kind says which)
    cols = len(R[0]) if R and isinstance(R[0], list) else 0
    if not (R and cols and all(len(row) == cols and all(is_num(x) for x in row) for row in R)
            and (len(R) == cols or len(R) == 1)):
        errs.append(f"{where}.R must be a non-empty square matrix (or one row) of numbers")
    elif not all(0.0 <= x <= 1.0 for row in R for x in row):
        errs.append(f"{where}.R has values outside [0, 1]")
    if b is not None and not (len(b) == cols and all(is_num(x) and 0.0 <= x <= 1.0 for x in b)):
        errs.append(f"{where}.R_pretrain must hold one number in [0, 1] per experience ({cols})")
    errs += [f"missing field {where}.metrics.{k}" for k in _REQUIRED_METRICS if k not in run.metrics]
    return errs


def _non_finite(obj: Any, path: str) -> list[tuple[str, float]]:
    """(path, value) of every NaN or infinity in a parsed JSON value."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [(path, obj)]
    if isinstance(obj, Mapping):
        return [hit for k, v in obj.items() for hit in _non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(obj, list):
        return [hit for i, v in enumerate(obj) for hit in _non_finite(v, f"{path}[{i}]")]
    return []


def _safe_hash(entry: Mapping[str, Any]) -> str:
    try:
        return content_hash(entry)
    except ValueError:  # NaN/inf cannot be canonical JSON
        return "(not canonical JSON: non-finite number)"


def _protocol_errors(entry: LeaderboardEntry, proto: Protocol, _v: Mapping[str, str]) -> list[str]:
    p = entry.protocol
    if (p.name, p.version) != (proto.name, proto.version):
        return [f"stale protocol {p.name} v{p.version}; track {proto.track!r} uses "
                f"{proto.name} v{proto.version}"]
    return []


def _budget_errors(entry: LeaderboardEntry, proto: Protocol, _v: Mapping[str, str]) -> list[str]:
    b, errs = entry.budget, []
    if b.n_trials != proto.n_trials:
        errs.append(f"budget: declared n_trials={b.n_trials} differs from the {proto.track} "
                    f"protocol's {proto.n_trials}")
    if b.trials_used > proto.n_trials:
        errs.append(f"budget exceeded: {b.trials_used} trials used > {proto.n_trials} allowed by "
                    f"the {proto.track} protocol")
    for key, got, want in (("sampler", b.sampler, proto.sampler), ("sampler_seed", b.sampler_seed, proto.sampler_seed),
                           ("objective", b.objective, proto.objective)):
        if got != want:
            errs.append(f"budget: {key}={got!r} differs from the protocol's {want!r}")
    if b.objective_split != "val":
        errs.append(f"objective computed on split {b.objective_split!r}; the protocol tunes on "
                    f"the tuning scenario's validation split ('val') only")
    return errs


def _settings_errors(entry: LeaderboardEntry, proto: Protocol, _v: Mapping[str, str]) -> list[str]:
    """The protocol's fixed settings unchanged, H* inside the search space, nothing hand-set."""
    cfg, hp, errs = entry.config, entry.hyperparameters, []
    if not proto.tuned and (hp or entry.search_space):
        errs.append(f"the {proto.track} protocol has a zero budget (every method runs its defaults); the "
                    f"entry brings hyperparameters {sorted(hp)} or a search space {sorted(entry.search_space)}")
    for k, v in proto.fixed.items():
        if k not in cfg or cfg[k] != v:
            errs.append(f"config {k}={cfg.get(k)!r} deviates from the protocol's fixed {k}={v!r}")
    if any(cfg.get(k) != v for k, v in hp.items()):
        errs.append("config disagrees with the chosen hyperparameters")
    outside = sorted(k for k in hp if k not in entry.search_space)
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


def _scenario_errors(entry: LeaderboardEntry, proto: Protocol, versions: Mapping[str, str]) -> list[str]:
    tun, ev, errs = entry.tuning, entry.evaluation, []
    phases: list[tuple[str, Any, str, Mapping[str, Any]]] = [
        ("evaluation", ev, proto.eval_scenario, proto.eval_options)]
    if tun is None:
        if proto.tuned:
            errs.append(f"records no tuning scenario; the {proto.track} protocol tunes on {proto.tune_scenario!r}")
    elif not proto.tuned:
        errs.append(f"records a tuning scenario ({tun.scenario}); the {proto.track} protocol has a zero "
                    "budget and no tuning phase")
    else:
        # one scenario family may serve both phases with different options (e.g. text_cl tasks)
        same = tun.scenario == ev.scenario and _canon(tun.options) == _canon(ev.options)
        if same or tun.content_hash == ev.content_hash:
            errs.append(f"tuned on the evaluation scenario ({tun.scenario} "
                        f"{tun.content_hash[:12]} vs {ev.scenario} {ev.content_hash[:12]})")
        phases.insert(0, ("tuning", tun, proto.tune_scenario, proto.tune_options))
    for phase, rec, want, opts in phases:
        if rec.scenario != want:
            errs.append(f"{phase} scenario {rec.scenario!r} is not the {proto.track} track's {want!r}")
        elif _canon(rec.options) != _canon(opts):
            errs.append(f"{phase} scenario options {rec.options} differ from the {proto.track} track's {opts}")
        registered = versions.get(rec.scenario)
        if registered is None:
            errs.append(f"{phase} scenario {rec.scenario!r} is not registered")
        elif str(registered) != rec.version:
            errs.append(f"stale {phase} scenario version: {rec.scenario} v{rec.version}, "
                        f"registered VERSION is {registered}")
    return errs


def _consistency_errors(entry: LeaderboardEntry, proto: Protocol) -> list[str]:
    errs = []
    run_seeds = [r.seed for r in entry.runs]
    if entry.seeds != list(proto.eval_seeds):
        errs.append(f"evaluation seeds {entry.seeds} differ from the protocol's {list(proto.eval_seeds)}")
    if run_seeds != entry.seeds:
        errs.append(f"runs have seeds {run_seeds}, entry lists {entry.seeds}")
    one_row = proto.kind == "test_time"
    for r in entry.runs:
        if (len(r.R) == 1) != one_row and len(r.R[0]) > 1:
            errs.append(f"seed {r.seed}: R is {len(r.R)} x {len(r.R[0])}; a {proto.kind} track's R is "
                        + ("one row of online accuracies (1 x D)" if one_row else "square (T x T)"))
    errs += [e for r in entry.runs for e in (_online_metrics_errors(r) if one_row else _metrics_from_R_errors(r))]
    return errs + provenance.summary_errors(entry)


def _online_metrics_errors(r: EntryRun) -> list[str]:
    """A test-time run's metrics that its one row of online accuracies determines: ``acc`` (the
    row's mean) and ``mean_error`` (1 - acc)."""
    row = r.R[0] if r.R else []
    if not row:
        return []
    acc = sum(row) / len(row)
    derived = {"acc": acc, "mean_error": 1.0 - acc}
    bad = [k for k, v in derived.items() if k in r.metrics and not _close(r.metrics[k], v)]
    return [f"seed {r.seed}: metrics {', '.join(bad)} do not follow from its R"] if bad else []


def _metrics_from_R_errors(r: EntryRun) -> list[str]:
    """The run's metrics (those R determines) recomputed from its R."""
    try:
        derived = M.summarize(r.R, r.R_pretrain or [0.0] * len(r.R))
    except (ValueError, TypeError, IndexError):
        return []  # malformed R is already reported by the schema check
    keys = (*RUN_METRICS, "fwt") if r.R_pretrain else RUN_METRICS
    bad = [k for k in keys if k in r.metrics and not _close(r.metrics[k], derived[k])]
    return [f"seed {r.seed}: metrics {', '.join(bad)} do not follow from its R"] if bad else []


def _close(a: Any, b: Any) -> bool:
    """Equal within 1e-6, where None (stored) matches None/NaN (computed)."""
    b_missing = b is None or (isinstance(b, float) and not math.isfinite(b))
    if a is None or b_missing:
        return a is None and b_missing
    return is_num(a) and abs(float(a) - float(b)) <= 1e-6


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
                  scenario_versions: Mapping[str, str] | None = None) -> tuple[LeaderboardEntry | None, list[str]]:
    """(the typed entry, or None when the file does not parse as one; reasons) for one entry
    file, including where it lies."""
    try:
        if path.stat().st_size > MAX_ENTRY_BYTES:
            return None, [f"entry file is {path.stat().st_size} bytes; at most {MAX_ENTRY_BYTES} are read"]
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [f"malformed JSON: {exc}"]
    except RecursionError:
        return None, ["malformed JSON: nested too deeply"]
    if _depth(raw) > MAX_ENTRY_DEPTH:
        return None, [f"entry nests deeper than {MAX_ENTRY_DEPTH} levels"]
    entry, reasons = check_entry(raw, protocols, scenario_versions=scenario_versions)
    if entry is not None:
        want = f"{entry.track}/{entry_filename(entry.method)}"
        if f"{path.parent.name}/{path.name}" != want:
            reasons.append(f"file lies at {path.parent.name}/{path.name}; this entry belongs at {want}")
    try:
        reasons += signature_errors(path, read_allowed_signers(path.parent.parent))
    except ClbenchError as exc:
        reasons.append(str(exc))
    return entry, reasons


def validate_dir(path: str | Path = "leaderboards", protocols: Mapping[str, Protocol] = PROTOCOLS, *,
                 scenario_versions: Mapping[str, str] | None = None) -> dict[Path, list[str]]:
    """Every entry file under ``path`` (:func:`entry_files`) -> its reasons, including entries of
    a track that come from another commit than the rest of the track's."""
    root = Path(path)
    if not root.is_dir():
        raise ClbenchError(f"no leaderboard directory at {root}")
    checked = {f: validate_file(f, protocols, scenario_versions=scenario_versions) for f in entry_files(root, recursive=True)}
    mixed = provenance.mixed_commit_errors({f: e for f, (e, _) in checked.items() if e is not None})
    return {f: reasons + mixed.get(f, []) for f, (_, reasons) in checked.items()}

"""Owns track declarations: what a board ranks, declared once as data (``leaderboards/<track>/track.yaml``).

A track names its evaluation scenario and a disjoint tuning scenario of the same shape, the
model and fixed trainer settings, the protocol budget, the reference settings of the quick
suite and of the health check, the metrics that rank and the ones shown beside them, and the
reference learners and thresholds of its health check. The quick suite (``make bench QUICK=1``,
``make compare``), the tuning protocol (:mod:`clbench.tuning`), the leaderboard and
``clbench track check`` all read the same declaration.

``track.yaml`` (schema_version 1)::

    schema_version: 1
    name: vision_cil                 # = the folder name
    title: one line
    status: active | pending | dropped | retired | accelerator
    #   pending: declared, not shipped until its health check has run and passed;
    #   dropped: failed its health check and never shipped (health.json keeps the figures);
    #   accelerator: sized for a GPU (a CPU variant may exist)
    kind: labelled | foundation | test_time
    description: why the track looks the way it does
    evaluate: {scenario: split_mnist, options: {...}}
    tune: {scenario: split_digits, options: {...}}     # optional: no protocol without it (but n_trials 0)
    fixed: {model: mlp, trainer.epochs: 5, ...}          # every run of the track
    reference: {trainer.lr: 0.01}                        # quick suite + health check (tuned by the protocol)
    protocol: {n_trials: 8, eval_seeds: [0, 1, 2]}
    #   n_trials: 0 and no tune: a zero-budget protocol (no tuning phase: every method runs its
    #   defaults, evaluated on the evaluation seeds); a tune without a protocol: 8 trials
    rank_by: acc                                         # a results.json metric, its direction
                                                         # from clbench.metrics (e.g. errors: lower)
    shown: [forgetting, plasticity]                      # metrics shown beside it
    seeds: [0, 1, 2]                                     # quick suite and health check
    health:
      lower: <method>                                    # reference learners (registry names):
      upper: <method>                                    # sequential fine-tuning, training on all seen data
      thresholds: {learns: 0.8, forgets: 0.05, headroom: 0.05, resolution: 4.0, ...}
      upper_options: {method.once: true}                 # optional: the upper learner's options in the check
    search:                                              # optional: grids this track widens, per method
      <method>: {method.<option>: [v1, v2, ..., wider values]}
    #   after a winner on this track sat on an open edge of a method's registered grid: the values
    #   replace that grid on this track only (they must include every registered value, so a track
    #   only widens), the budget stays the track's n_trials; other tracks keep the registered grid

Location overrides: a track check (:func:`clbench.health.check_track`) and a board
(:func:`clbench.board.make_board`, ``clbench board <track> key=path ...``) take, on top of the
declaration, only keys that say *where* an input is (:data:`LOCATION_KEYS`: the data folder, the
weights file, the foundation cache), never what a run does; a track's settings stay its
declaration. They reach the runs (whose ``results.json`` config records the paths used) but
not the health digest, the settings health.json and protocol.json record, nor the protocol's
study name. A run's own key (its run directory, hence resume) leaves them out only where
:meth:`clbench.config.RunConfig.key` does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from clbench.errors import ClbenchError, ConfigError
from clbench.metrics import METRICS
from clbench.yamlio import read_yaml

TRACK_SCHEMA_VERSION = 1
STATUSES = ("active", "pending", "dropped", "retired", "accelerator")
KINDS = ("labelled", "foundation", "test_time")
# health thresholds per kind (the criteria); a track may only make them stricter
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "labelled": {"learns": 0.8, "forgets": 0.05, "headroom": 0.05, "resolution": 4.0},
    # source_margin (language models): the general-capability suite's mean must be this far above
    # its chance level; when declared it replaces source_min
    "foundation": {"learns": 0.8, "forgets": 0.05, "headroom": 0.05, "resolution": 4.0,
                   "source_min": 0.95, "retention_max": 0.9, "source_margin": 0.0},
    "test_time": {"source_min": 0.95, "adapt_gain": 0.10, "min_steps": 500},
}
#: Run options that say where an input is, not what it is: the data folder of the vision scenarios
#: (``root``) and of the file-based ones (``data_dir``), a backbone's local weights file
#: (``weights``) and the foundation cache. The only keys a track check or a board takes on top of
#: the declaration. (``scenario.split_yaml`` is a folder too, but its lists choose the split, so
#: it is not among them.)
LOCATION_KEYS: tuple[str, ...] = ("scenario.root", "scenario.data_dir", "model.weights", "foundation.cache_dir")


def tracks_root() -> Path:
    """``leaderboards/`` of this checkout (the declarations live beside the boards)."""
    return Path(__file__).resolve().parents[1] / "leaderboards"


@dataclass(frozen=True)
class ScenarioRef:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        """As run-config overrides: ``scenario`` and ``scenario.<option>``."""
        return {"scenario": self.name, **{f"scenario.{k}": v for k, v in self.options.items()}}


@dataclass(frozen=True)
class Health:
    lower: str
    upper: str
    thresholds: dict[str, float]
    # run options of the upper learner in the check only (e.g. {method.once: true}: judged on R's
    # last row, so it need not fill the earlier ones)
    upper_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Track:
    """One track, as declared in its ``track.yaml``."""

    name: str
    title: str
    status: str
    kind: str
    description: str
    evaluate: ScenarioRef
    tune: ScenarioRef | None
    fixed: dict[str, Any]
    reference: dict[str, Any]
    n_trials: int
    eval_seeds: tuple[int, ...]
    rank_by: str
    shown: tuple[str, ...]
    seeds: tuple[int, ...]
    health: Health
    path: Path
    # method -> {dotted key: values}: the grids this track widens (clbench.search.widen)
    search: dict[str, dict[str, tuple[Any, ...]]] = field(default_factory=dict)

    def run_values(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run-config values of a quick-suite / health-check run (seed and method not included)."""
        return {**self.fixed, **self.reference, **(overrides or {}), **self.evaluate.values()}

    def digest(self) -> str:
        """Hash of the declaration's content (recorded in health.json)."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]

    def health_digest(self) -> str:
        """Hash of what the health check measures: the run settings, seeds, reference learners,
        thresholds and kind. Title, description, status, tuning scenario, protocol budget and
        ranked metrics can change without making a recorded check stale."""
        doc = {"kind": self.kind, "settings": self.run_values(), "seeds": list(self.seeds),
               "health": {"lower": self.health.lower, "upper": self.health.upper,
                          "thresholds": dict(self.health.thresholds),
                          **({"upper_options": self.health.upper_options} if self.health.upper_options else {})}}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=list).encode()).hexdigest()[:16]

    @property
    def has_protocol(self) -> bool:
        """Whether the track declares a protocol: a tuning scenario, or a zero budget
        (``protocol: {n_trials: 0}`` without ``tune``: the methods' defaults, no tuning phase)."""
        return self.tune is not None or self.n_trials == 0

    def one_line(self) -> str:
        model = self.fixed.get("model", "auto")
        tune = f"tune {self.tune.name}" if self.tune else ("zero-budget protocol" if self.has_protocol
                                                          else "no protocol")
        return (f"{self.name:<16} {self.status:<11} {self.kind:<10} {self.evaluate.name} "
                f"({model}; {tune}) - {self.title}")


def _tuple(v: Any) -> Any:
    """YAML lists -> tuples, recursively (frozen configs take tuples)."""
    if isinstance(v, list):
        return tuple(_tuple(x) for x in v)
    if isinstance(v, dict):
        return {k: _tuple(x) for k, x in v.items()}
    return v


def _scenario(d: Any, where: str) -> ScenarioRef:
    if not isinstance(d, dict) or not isinstance(d.get("scenario"), str):
        raise ClbenchError(f"{where}: needs a mapping with a 'scenario' name")
    return ScenarioRef(d["scenario"], _tuple(dict(d.get("options") or {})))


def _upper_options(opts: Any, path: Path) -> dict[str, Any]:
    if opts is None:
        return {}
    if not isinstance(opts, dict) or not all(isinstance(k, str) and k.startswith("method.") for k in opts):
        raise ConfigError(f"{path}: health.upper_options", opts, "a mapping of method.<option> keys")
    return _tuple(dict(opts))  # type: ignore[no-any-return]


def parse_track(doc: Any, path: Path) -> Track:
    """Validate one declaration; every error names the file and the field."""
    if not isinstance(doc, dict):
        raise ClbenchError(f"{path}: a track declaration must be a YAML mapping")
    if doc.get("schema_version") != TRACK_SCHEMA_VERSION:
        raise ConfigError(f"{path}: schema_version", doc.get("schema_version"), [TRACK_SCHEMA_VERSION])
    if doc.get("name") != path.parent.name:
        raise ConfigError(f"{path}: name", doc.get("name"), [path.parent.name])
    for key, allowed in (("status", STATUSES), ("kind", KINDS)):
        if doc.get(key) not in allowed:
            raise ConfigError(f"{path}: {key}", doc.get(key), allowed)
    kind = doc["kind"]
    h = doc.get("health") or {}
    unknown = set(h.get("thresholds") or {}) - set(DEFAULT_THRESHOLDS[kind])
    if unknown:
        raise ConfigError(f"{path}: health.thresholds", sorted(unknown), sorted(DEFAULT_THRESHOLDS[kind]))
    proto = doc.get("protocol") or {}
    seeds = tuple(int(s) for s in doc.get("seeds", (0, 1, 2)))
    for key, names in (("rank_by", [doc.get("rank_by", "acc")]), ("shown", list(doc.get("shown") or ()))):
        unknown_metrics = [n for n in names if n not in METRICS]
        if unknown_metrics:
            raise ConfigError(f"{path}: {key}", ", ".join(map(str, unknown_metrics)), sorted(METRICS))
    n_trials = int(proto.get("n_trials", 8))
    if n_trials < 0:
        raise ConfigError(f"{path}: protocol.n_trials", n_trials, "0 (no tuning) or more")
    if n_trials == 0 and doc.get("tune"):
        raise ConfigError(f"{path}: protocol.n_trials", n_trials,
                          "1 or more with a tuning scenario (n_trials 0 declares no tuning phase: drop 'tune')")
    return Track(
        name=doc["name"], title=str(doc.get("title", "")), status=doc["status"], kind=kind,
        description=str(doc.get("description", "")).strip(),
        evaluate=_scenario(doc.get("evaluate"), f"{path}: evaluate"),
        tune=_scenario(doc["tune"], f"{path}: tune") if doc.get("tune") else None,
        fixed=_tuple(dict(doc.get("fixed") or {})), reference=_tuple(dict(doc.get("reference") or {})),
        n_trials=n_trials,
        eval_seeds=tuple(int(s) for s in proto.get("eval_seeds", (0, 1, 2))),
        rank_by=str(doc.get("rank_by", "acc")), shown=tuple(doc.get("shown") or ()), seeds=seeds,
        health=Health(str(h.get("lower", "")), str(h.get("upper", "")),
                      {**DEFAULT_THRESHOLDS[kind], **{k: float(v) for k, v in (h.get("thresholds") or {}).items()}},
                      _upper_options(h.get("upper_options"), path)),
        path=path, search=_search(doc.get("search"), path),
    )


def _search(doc: Any, path: Path) -> dict[str, dict[str, tuple[Any, ...]]]:
    """``search:``: method -> {dotted key: non-empty list of values} (whether the method and key
    exist, and that the list widens the registered grid, is checked where the grid is used)."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: search", doc, "a mapping: method -> {dotted key: [values]}")
    out: dict[str, dict[str, tuple[Any, ...]]] = {}
    for method, grids in doc.items():
        if not isinstance(grids, dict) or not grids:
            raise ConfigError(f"{path}: search.{method}", grids, "a mapping: dotted key -> [values]")
        for key, values in grids.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{path}: search.{method}.{key}", values, "a non-empty list of values")
        out[str(method)] = {str(k): tuple(v) for k, v in grids.items()}
    return out


@lru_cache(maxsize=4)
def _load(root: str) -> dict[str, Track]:
    out: dict[str, Track] = {}
    for path in sorted(Path(root).glob("*/track.yaml")):
        track = parse_track(read_yaml(path, "track.yaml"), path)
        out[track.name] = track
    return out


def all_tracks(root: Path | None = None) -> dict[str, Track]:
    """Every declared track by name (sorted), active ones first is the caller's business."""
    return dict(_load(str(root or tracks_root())))


def get_track(name: str, root: Path | None = None) -> Track:
    tracks = all_tracks(root)
    if name not in tracks:
        raise ConfigError("track", name, sorted(tracks))
    return tracks[name]


def locations_of(track: Track) -> tuple[str, ...]:
    """The :data:`LOCATION_KEYS` the track's runs have: ``scenario.<x>`` when its evaluation
    scenario (and its tuning scenario, when it declares one) has the option ``x``, ``model.<x>``
    when its model has it, and ``foundation.cache_dir``. Imports the plug-ins."""
    from dataclasses import fields, is_dataclass

    from clbench.models import DEFAULT_MODEL
    from clbench.registry import MODELS, SCENARIOS, load_plugins

    load_plugins()

    def options(cls: Any) -> set[str]:
        conf = getattr(cls, "Config", None)
        return {f.name for f in fields(conf)} if conf is not None and is_dataclass(conf) else set()

    scenarios = [SCENARIOS.get(ref.name) for ref in (track.evaluate, track.tune) if ref is not None]
    model = str(track.fixed.get("model", "auto"))
    if model == "auto":
        model = getattr(scenarios[0], "default_model", "") or DEFAULT_MODEL
    have = {"scenario": set.intersection(*(options(s) for s in scenarios)), "model": options(MODELS.get(model)),
            "foundation": {"cache_dir"}}
    return tuple(k for k in LOCATION_KEYS if k.partition(".")[2] in have[k.partition(".")[0]])


def check_locations(track: Track | None, locations: Mapping[str, Any]) -> dict[str, str]:
    """``locations`` as a plain dict once every key is one of the track's :func:`locations_of`
    (of :data:`LOCATION_KEYS` without a track) and every value a non-empty path; else one
    :class:`ConfigError` naming the key and the keys allowed."""
    if not locations:
        return {}
    allowed = locations_of(track) if track is not None else LOCATION_KEYS
    out: dict[str, str] = {}
    for key, value in locations.items():
        if key not in allowed:
            raise ConfigError(f"{track.name + ' ' if track else ''}override key", key,
                              f"{', '.join(allowed)} (where data and weights are; nothing else: a track's "
                              "settings are its declaration)")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(key, value, "a non-empty path")
        out[key] = value
    return out


def parse_locations(track: Track | None, items: Sequence[str]) -> dict[str, str]:
    """``key=value`` strings of the command line checked by :func:`check_locations`; values are
    kept verbatim (a path is never parsed as YAML)."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError("override", item, "key=value, e.g. scenario.root=/data")
        pairs[key.strip()] = value
    return check_locations(track, pairs)


def health_path(track: Track) -> Path:
    return track.path.parent / "health.json"


def health_is_current(track: Track, rec: Mapping[str, Any]) -> bool:
    """Whether a health record measured the track as it is declared now.

    Records carry ``health_digest`` (:meth:`Track.health_digest`). Older records carry only the
    whole file's hash: they are current when the file is unchanged, or when the file they hashed
    (read from git at the record's commit) declares the same health-relevant fields as today's."""
    if "health_digest" in rec:
        return bool(rec["health_digest"] == track.health_digest())
    if rec.get("declaration_sha256") == track.digest():
        return True
    old = _declaration_at(track.path, str(rec.get("git_commit") or ""))
    if old is None or hashlib.sha256(old).hexdigest()[:16] != rec.get("declaration_sha256"):
        return False
    import yaml

    try:
        then = parse_track(yaml.safe_load(old), track.path)
    except (ClbenchError, yaml.YAMLError):
        return False
    return then.health_digest() == track.health_digest()


def _declaration_at(path: Path, commit: str) -> bytes | None:
    """``path``'s content at git ``commit`` (None without git, the commit or the file)."""
    import subprocess

    if not commit or commit.endswith("-dirty"):
        return None
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path.parent, capture_output=True,
                             text=True, check=True, timeout=30).stdout.strip()
        rel = path.resolve().relative_to(Path(top).resolve()).as_posix()
        return subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=top, capture_output=True,
                              check=True, timeout=30).stdout
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def health_status(track: Track) -> str:
    """``pass``/``FAIL`` from the committed health.json, ``unchecked`` without one, ``stale``
    when the declaration has changed in what the check measures since it ran."""
    p = health_path(track)
    if not p.is_file():
        return "not checked (retired)" if track.status == "retired" else "unchecked"
    try:
        rec = json.loads(p.read_text())
        verdict = "pass" if rec["passed"] else "FAIL"
    except (ValueError, KeyError):
        return "damaged health.json"
    return verdict if health_is_current(track, rec) else f"{verdict} (stale: rerun the check)"

"""Owns the two write paths: ``submit`` (protocol run -> entry file) and ``render`` (entries -> pages).

Both write atomically; ``render`` ranks the entries that validate and lists the others as
rejected in ``<track>/README.md`` and ``<track>/index.html``, exports each ranked entry's tuned
configuration as ``<track>/configs/<method>.yaml`` (``clbench run --config`` reruns it), and
writes ``index.html`` over all tracks and ``REPORTED.md`` (:mod:`clbench.leaderboard.reported`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clbench.checkpoint import atomic_write_bytes
from clbench.errors import ClbenchError
from clbench.leaderboard.columns import _rank_key, rank_metric
from clbench.leaderboard.entry import entry_filename, entry_files, entry_from_protocol
from clbench.leaderboard.html import index_html, render_html
from clbench.leaderboard.markdown import _readme
from clbench.leaderboard.provenance import mixed_commit_errors
from clbench.leaderboard.record import LeaderboardEntry
from clbench.leaderboard.reported import read_reported, reported_markdown
from clbench.leaderboard.validate import validate_entry, validate_file
from clbench.tuning import PROTOCOLS, Protocol


def submit(protocol_dir: str | Path, leaderboards_dir: str | Path = "leaderboards", *,
           scenario_versions: Mapping[str, str] | None = None) -> Path:
    """Build, validate and atomically write ``<leaderboards_dir>/<track>/<method>.json``.

    Overwrites the method's previous entry on that track. Raises ClbenchError (and writes
    nothing) when the entry does not validate.
    """
    entry = entry_from_protocol(protocol_dir, leaderboards_dir)
    reasons = validate_entry(entry, scenario_versions=scenario_versions)
    if reasons:
        raise ClbenchError(f"entry from {protocol_dir} rejected: " + "; ".join(reasons))
    path = Path(leaderboards_dir) / entry.track / entry_filename(entry.method)
    _atomic_write(path, json.dumps(entry.to_json(), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))


def render(leaderboards_dir: str | Path = "leaderboards", protocols: Mapping[str, Protocol] = PROTOCOLS, *,
           scenario_versions: Mapping[str, str] | None = None) -> list[Path]:
    """Write ``<track>/README.md`` and ``<track>/index.html`` for every track folder that holds
    entries or a health check (``health.json``, shown above the ranking).

    Only entries that validate are ranked (by the mean of the track's ``rank_by`` metric, ACC
    unless declared, best first in its direction); the others are listed as
    rejected with their reasons. Track folders that are symbolic links are skipped. Returns the
    written paths.
    """
    root = Path(leaderboards_dir)
    if not root.is_dir():
        raise ClbenchError(f"no leaderboard directory at {root}")
    written: list[Path] = []
    boards: list[tuple[str, Protocol | None, list[LeaderboardEntry], int, dict[str, Any] | None]] = []
    inside = root.resolve()
    for track_dir in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if track_dir.is_symlink() or track_dir.resolve().parent != inside:
            continue  # never write through a link that leads out of the leaderboards folder
        valid: list[LeaderboardEntry] = []
        rejected: list[tuple[str, list[str]]] = []
        health = health_record(track_dir)
        if not entry_files(track_dir) and health is None:
            continue  # a declared track with neither entries nor a health check has no board yet
        checked = {f: validate_file(f, protocols, scenario_versions=scenario_versions) for f in entry_files(track_dir)}
        mixed = mixed_commit_errors({f: e for f, (e, _) in checked.items() if e is not None})
        for f, (entry, reasons) in checked.items():
            reasons = reasons + mixed.get(f, [])
            if reasons or entry is None:
                rejected.append((f.name, reasons))
            else:
                valid.append(entry)
        proto = protocols.get(track_dir.name)
        metric = rank_metric(proto)
        valid.sort(key=lambda e: _rank_key(e, metric))
        readme = track_dir / "README.md"
        old = readme.read_text(encoding="utf-8") if readme.is_file() else None
        _atomic_write(readme, _readme(track_dir.name, proto, valid, rejected, old, health))
        _atomic_write(track_dir / "index.html", render_html(track_dir.name, proto, valid, rejected, health))
        written += [readme, track_dir / "index.html", *_write_configs(track_dir, valid)]
        boards.append((track_dir.name, proto, valid, len(rejected), health))
    _atomic_write(root / "index.html", index_html(boards))
    written.append(root / "index.html")
    reported = read_reported(root)
    if reported is not None:
        _atomic_write(root / "REPORTED.md", reported_markdown(reported, {b[0]: b[2] for b in boards}))
        written.append(root / "REPORTED.md")
    return written


def config_values(entry: LeaderboardEntry, seed: int = 0) -> dict[str, Any]:
    """The run configuration of ``entry``'s evaluation runs (H* included), nested as a YAML run
    config: ``clbench run --config <file>`` reruns one seed."""
    dotted = {**entry.config, "method": entry.method, "scenario": entry.evaluation.scenario, "seed": seed,
              **{f"scenario.{k}": v for k, v in entry.evaluation.options.items()}}
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        head, _, rest = key.partition(".")
        if not rest:
            if head in ("method", "scenario", "model"):
                nested.setdefault(head, {})["name"] = value
            else:
                nested[head] = value
        else:
            nested.setdefault(head, {})[rest] = value
    return nested


def _write_configs(track_dir: Path, valid: Sequence[LeaderboardEntry]) -> list[Path]:
    """``<track>/configs/<method>.yaml``: each ranked entry's tuned configuration."""
    import yaml

    out = []
    for e in valid:
        path = track_dir / "configs" / (entry_filename(e.method)[:-5] + ".yaml")
        head = (f"# {e.method} on {e.track}: the protocol's fixed settings and the tuned H*, evaluation seed 0\n"
                f"# from the entry made at commit {e.env.git_commit}; rerun with: clbench run --config leaderboards/{e.track}/configs/{path.name}\n")
        _atomic_write(path, head + yaml.safe_dump(config_values(e), sort_keys=False, allow_unicode=True))
        out.append(path)
    return out


def health_record(track_dir: Path) -> dict[str, Any] | None:
    """The track's health check record (``health.json``), or None when absent or unreadable."""
    path = track_dir / "health.json"
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("criteria"), list) else None

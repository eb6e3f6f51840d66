"""Owns ``clbench board <track>`` (``make board TRACK=x``): a track's whole board, from one clean
commit, in one resumable command.

For every registered method the track's scenarios and model can run (the others are listed as
not applicable, with the reason), in registry order: the tuning protocol (resumes its finished
trials and seeds), ``submit`` into ``leaderboards/<track>/``; then ``validate`` and ``render``.
A method whose entry at this commit is already on the board is skipped, so a killed ``board``
rerun continues with the next method. Location overrides (``clbench board <track>
scenario.root=/data model.weights=/w/vit.pth``: the keys of :func:`clbench.tracks.locations_of`
only, anything else is refused) tell every run where the data and weights are; they change
neither the protocol runs' names nor the settings the entries record (see
:func:`clbench.tuning.run_protocol`). A ``scenario.*`` one serves the tuning and the evaluation
scenario alike, so ``scenario.root`` must be the folder holding both datasets.

The chain refuses to start from a working tree with uncommitted changes (its entries would be
rejected as dirty) and on a track without a passing health check: produce boards from a clean
worktree of one commit, e.g. ``git worktree add ../board HEAD && cd ../board && make board
TRACK=vision_cil``, then copy ``leaderboards/<track>/`` back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clbench.errors import ClbenchError, IncompatibleError


@dataclass
class BoardReport:
    """What one ``board`` run did: entries written or kept, methods not applicable, seconds per method."""

    track: str
    commit: str
    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    not_applicable: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"board {self.track} at commit {self.commit[:12]}: {len(self.written)} entries written, "
                 f"{len(self.kept)} kept from an earlier run"]
        lines += [f"  {m}: {s:.0f} s (protocol + submit)" for m, s in self.seconds.items()]
        lines += [f"  not applicable: {m} ({why})" for m, why in self.not_applicable.items()]
        return "\n".join(lines)


def clean_commit() -> str:
    """The checkout's commit; ClbenchError when the tree has uncommitted changes or no git."""
    from clbench.tracking import git_commit

    commit = git_commit()
    if commit is None:
        raise ClbenchError("board needs a git checkout (entries record the commit they come from)")
    if commit.endswith("-dirty"):
        raise ClbenchError("the working tree has uncommitted changes, so every entry would be rejected as "
                           "dirty; commit them, or produce the board from a clean worktree: "
                           "git worktree add ../board HEAD")
    return commit


def make_board(track: str, leaderboards: str | Path = "leaderboards", methods: Sequence[str] | None = None,
               workers: int = 1, storage: str = "", progress: bool = True,
               log: Callable[[str], None] = print, locations: Mapping[str, str] | None = None) -> BoardReport:
    """Protocol, submit, validate and render for every applicable method of ``track``
    (``locations``: where data and weights are, checked against the track's declaration)."""
    from clbench.leaderboard.publish import render, submit
    from clbench.leaderboard.validate import validate_dir
    from clbench.registry import METHODS, load_plugins
    from clbench.study import ProtocolRun, protocol_for
    from clbench.tracks import all_tracks, check_locations
    from clbench.tuning import run_protocol

    locs = check_locations(all_tracks().get(track), locations or {})  # a protocol of no track: any location key
    commit = clean_commit()
    boards = Path(leaderboards)
    _require_health(boards / track / "health.json", track)
    load_plugins()
    report = BoardReport(track, commit)
    for method in methods or METHODS.names():
        if _entry_at(boards, track, method, commit):
            report.kept.append(method)
            continue
        start = time.perf_counter()
        try:
            run_protocol(method, track, storage=storage, workers=workers, progress=progress, locations=locs)
        except IncompatibleError as exc:
            report.not_applicable[method] = str(exc)
            continue
        pdir = ProtocolRun(method, protocol_for(track), {}, storage).dir
        log(f"submitted {submit(pdir, boards)}")
        report.written.append(method)
        report.seconds[method] = time.perf_counter() - start
    bad = {str(p): r for p, r in validate_dir(boards).items() if r and p.parent.name == track}
    render(boards)
    if bad:
        raise ClbenchError(f"board {track}: {len(bad)} entries rejected: {bad}")
    return report


def _require_health(path: Path, track: str) -> None:
    try:
        passed = json.loads(path.read_text(encoding="utf-8")).get("passed")
    except (OSError, ValueError, AttributeError):
        passed = None
    if passed is not True:
        raise ClbenchError(f"track {track} has no passing health check at {path}; run "
                           f"`clbench track check {track}` and commit health.json first")


def _entry_at(boards: Path, track: str, method: str, commit: str) -> bool:
    """Whether the board already holds ``method``'s entry made at ``commit``."""
    from clbench.leaderboard.entry import entry_filename

    path = boards / track / entry_filename(method)
    try:
        return bool(json.loads(path.read_text(encoding="utf-8"))["env"]["git_commit"] == commit)
    except (OSError, ValueError, KeyError, TypeError):
        return False

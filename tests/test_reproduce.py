"""``clbench leaderboard reproduce`` on the shipped boards: the cheapest entry of every track
that has entries is re-run for seed 0 from its recorded settings, and its R must come back
within the stated tolerance (integration: it trains)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clbench.leaderboard.entry import entry_files
from clbench.leaderboard.record import LeaderboardEntry
from clbench.leaderboard.reproduce import DEFAULT_ATOL, reproduce

BOARDS = Path(__file__).parents[1] / "leaderboards"


#: an entry whose recorded evaluation run took longer than this (wall seconds, on the machine
#: that made it) is reproduced in the slow target (`make test-slow`), not in the integration one
#: CI runs: a text_til run is about 400 s on a 2-core machine
SLOW_RUN_S = 120.0

#: ACC of the rerun against the recorded one, and the largest difference of one cell of R, when R
#: is not within DEFAULT_ATOL (a machine other than the entry's: see the test)
ACC_ATOL = 0.02
CROSS_MACHINE_CELL_ATOL = 0.1


def _cheapest_per_track() -> list[object]:
    import json

    by_track: dict[str, list[tuple[float, Path]]] = {}
    for f in entry_files(BOARDS, recursive=True):
        e = LeaderboardEntry.from_json(json.loads(f.read_text()), str(f))
        by_track.setdefault(e.track, []).append((e.cost.wall_time_s.mean or 0.0, f))
    cheapest = [min(files) for _, files in sorted(by_track.items())]
    return [pytest.param(f, marks=pytest.mark.slow) if wall > SLOW_RUN_S else f for wall, f in cheapest]


@pytest.mark.integration
@pytest.mark.parametrize("entry", _cheapest_per_track(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_shipped_entry_reproduces_its_seed_0(entry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))  # the foundation is pretrained again
    out = reproduce(entry, seed=0, runs_dir=str(tmp_path / "runs"), progress=False)
    assert out.same_data, out.report()
    if out.max_abs_diff <= DEFAULT_ATOL:
        return
    # Another CPU than the one that made the entry: float sums differ in the last bits and training
    # amplifies that (on the entry's machine the rerun is bit-identical, max |ΔR| = 0). Measured on
    # 2026-12-02, tta/source_only made on one session's machine and rerun on another, same code:
    # one cell of its 60 off by 0.066, ACC 0.5445 vs 0.5404. The run must still agree in ACC.
    assert out.acc_recorded is not None and abs(out.acc_rerun - out.acc_recorded) <= ACC_ATOL, out.report()
    assert out.max_abs_diff <= CROSS_MACHINE_CELL_ATOL, out.report()

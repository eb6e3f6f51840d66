"""Boards of test-time tracks: a zero-budget protocol (no tuning phase, the methods' defaults),
its entries, their validation, and a board ranked by mean error (lower is better)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clbench import tracking, tuning
from clbench.errors import ConfigError
from clbench.leaderboard.columns import _rank_key, rank_labels
from clbench.leaderboard.entry import entry_from_protocol
from clbench.leaderboard.plots import heatmap_svg, mean_matrix
from clbench.leaderboard.publish import render, submit
from clbench.leaderboard.record import LeaderboardEntry, content_hash
from clbench.leaderboard.validate import validate_dir, validate_entry
from clbench.study import Protocol, ProtocolRun
from clbench.testing import register_tiny
from clbench.tracks import parse_track
from clbench.tuning import run_protocol

TRACK = "tiny_tta"
#: a test-time track's zero-budget protocol on the tiny blob stream (3 domains, 1 x 3 R), two seeds
ZERO = Protocol(track=TRACK, tune_scenario="", eval_scenario="tiny", n_trials=0,
                eval_options={"scenario_type": "test_time", "image": True, "n_experiences": 3},
                fixed={"model": "cnn_bn", "eval.batch_size": 5, "eval.validation": False},
                eval_seeds=(0, 1), rank_by="mean_error", kind="test_time")
VERSIONS = {"tiny": "1"}
METHODS = ("source_only", "norm_adapt")


def _health(boards: Path) -> None:
    acc = {"mean": 0.5, "sd": 0.01, "per_seed": [0.5, 0.5, 0.5]}
    rec = {"schema_version": 1, "kind": "clbench-track-health", "track": TRACK,
           "declaration_sha256": "f" * 16, "git_commit": "1" * 40, "seeds": [0, 1, 2],
           "learners": {"lower": "source_only", "upper": "norm_adapt"},
           "figures": {"lower": {"acc": acc, "wall_time_s": {"mean": 1.0}},
                       "upper": {"acc": {**acc, "mean": 0.6}, "wall_time_s": {"mean": 1.0}}},
           "criteria": [{"name": "adapt_gain", "rule": "error(lower) - error(upper) >= threshold",
                         "value": 0.1, "threshold": 0.1, "passed": True}], "passed": True}
    (boards / TRACK).mkdir(parents=True, exist_ok=True)
    (boards / TRACK / "health.json").write_text(json.dumps(rec))


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Path]]]:
    """Protocol runs of two test-time methods under the zero-budget protocol (run once)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("tta_board")
    register_tiny()
    mp.setitem(tuning.PROTOCOLS, TRACK, ZERO)
    env = tracking.environment
    mp.setattr(tracking, "environment", lambda *a: {**env(*a), "git_commit": "a" * 40})  # a clean commit
    try:
        dirs = {}
        for method in METHODS:
            rec = run_protocol(method, TRACK, {"tracking.mlflow": False}, runs_dir=str(root / "runs"),
                               progress=False)
            assert rec.status == "finished"
            dirs[method] = ProtocolRun(method, ZERO, {"tracking.mlflow": False}, "", str(root / "runs")).dir
        _health(root / "boards")
        yield root, dirs
    finally:
        mp.undo()


@pytest.fixture(autouse=True)
def _protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(tuning.PROTOCOLS, TRACK, ZERO)


def _entry(board: tuple[Path, dict[str, Path]], method: str = "norm_adapt") -> dict[str, Any]:
    root, dirs = board
    return entry_from_protocol(dirs[method], root / "boards").to_json()


def _rehash(e: dict[str, Any]) -> dict[str, Any]:
    e["content_hash"] = content_hash(e)
    return e


def test_zero_budget_protocol_skips_tuning_and_records_the_defaults(board: tuple[Path, dict[str, Path]]) -> None:
    _, dirs = board
    rec = json.loads((dirs["norm_adapt"] / "protocol.json").read_text())
    assert rec["protocol"]["n_trials"] == 0 and rec["best_params"] == {} and rec["search_space"] == {}
    assert rec["tuning"]["trials"] == [] and rec["tuning"]["trials_used"] == 0 and rec["tuning"]["scenario"] == ""
    assert rec["evaluation"]["seeds"] == [0, 1] and len(rec["evaluation"]["run_dirs"]) == 2
    assert not (dirs["norm_adapt"] / "tune").exists()  # no tuning run
    r = rec["evaluation"]["results"][0]
    assert len(r["R"]) == 1 and len(r["R"][0]) == 3  # one row of online accuracies, one per domain


def test_entry_of_a_zero_budget_protocol_validates(board: tuple[Path, dict[str, Path]]) -> None:
    e = _entry(board)
    assert e["tuning"] is None and e["hyperparameters"] == {} and e["search_space"] == {}
    assert (e["budget"]["n_trials"], e["budget"]["trials_used"]) == (0, 0)
    assert "mean_error" in e["summary"] and len(e["summary"]["mean_error"]["ci95"]) == 2
    assert validate_entry(e, scenario_versions=VERSIONS) == []
    assert LeaderboardEntry.from_json(e).to_json() == e


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda e: (e["hyperparameters"].update({"method.lr": 0.1}), e["config"].update({"method.lr": 0.1})),
     "zero budget"),
    (lambda e: e["search_space"].update({"method.lr": {"type": "grid", "values": [0.1]}}), "zero budget"),
    (lambda e: e.update(tuning={"scenario": "tiny", "version": "1", "content_hash": "x", "options": {},
                                "best_value": 0.5}), "records a tuning scenario"),
    (lambda e: e["runs"][0].update(R=[[0.5, 0.5, 0.5]] * 3), "R is 3 x 3"),
    (lambda e: e["runs"][0]["metrics"].update(mean_error=0.01), "do not follow from its R"),
])
def test_validate_rejects_what_a_zero_budget_entry_cannot_hold(board: tuple[Path, dict[str, Path]],
                                                                mutate: Any, reason: str) -> None:
    e = _entry(board)
    mutate(e)
    reasons = validate_entry(_rehash(e), scenario_versions=VERSIONS)
    assert any(reason in r for r in reasons), reasons


def test_a_zero_trial_entry_is_rejected_on_a_track_with_a_budget(board: tuple[Path, dict[str, Path]]) -> None:
    tuned = dataclasses.replace(ZERO, n_trials=3, tune_scenario="tiny", tune_options={"n_experiences": 2})
    reasons = validate_entry(_entry(board), {TRACK: tuned}, scenario_versions=VERSIONS)
    assert any("n_trials=0 differs" in r for r in reasons) and any("records no tuning scenario" in r for r in reasons)


def test_board_ranks_by_mean_error_ascending_and_renders(board: tuple[Path, dict[str, Path]]) -> None:
    root, dirs = board
    boards = root / "boards"
    for method in METHODS:
        submit(dirs[method], boards, scenario_versions=VERSIONS)
    assert all(not r for r in validate_dir(boards, scenario_versions=VERSIONS).values())
    render(boards, scenario_versions=VERSIONS)
    entries = [LeaderboardEntry.from_json(json.loads((boards / TRACK / f"{m}.json").read_text())) for m in METHODS]
    ranked = sorted(entries, key=lambda e: _rank_key(e, "mean_error"))
    errors = [float(e.summary["mean_error"].mean or 0.0) for e in ranked]
    assert errors == sorted(errors)  # lower is better
    readme = (boards / TRACK / "README.md").read_text()
    assert "Mean error [95 % CI]" in readme and "ΔMean error vs source_only (paired t)" in readme
    assert readme.index(f"| {ranked[0].method} |") < readme.index(f"| {ranked[1].method} |")
    assert len(rank_labels(ranked, "mean_error")) == 2
    page = (boards / TRACK / "index.html").read_text()
    assert 'data-key="mean_error"' in page and 'aria-sort="ascending"' in page
    assert (boards / TRACK / "configs" / "norm_adapt.yaml").is_file()
    assert len(mean_matrix(ranked[0])) == 1 and len(mean_matrix(ranked[0])[0]) == 3
    assert heatmap_svg(ranked[0]).count("<rect") >= 3


def test_rank_key_follows_the_metric_direction(board: tuple[Path, dict[str, Path]]) -> None:
    e = LeaderboardEntry.from_json(_entry(board))
    err = e.summary["mean_error"].mean
    assert err is not None
    acc = e.summary["acc"].mean
    assert acc is not None
    # lower error, and (inconsistently, to tell the directions apart) lower ACC
    better = dataclasses.replace(e, method="z", summary={
        **e.summary, "mean_error": dataclasses.replace(e.summary["mean_error"], mean=err - 0.1),
        "acc": dataclasses.replace(e.summary["acc"], mean=acc - 0.1)})
    assert sorted([e, better], key=lambda x: _rank_key(x, "mean_error"))[0] is better  # lower is better
    assert sorted([e, better], key=lambda x: _rank_key(x, "acc"))[0] is e  # higher is better


def test_track_declares_a_zero_budget_protocol(tmp_path: Path) -> None:
    doc = {"schema_version": 1, "name": "t", "status": "active", "kind": "test_time",
           "evaluate": {"scenario": "tiny"}, "protocol": {"n_trials": 0, "eval_seeds": [0, 1, 2, 3, 4]},
           "rank_by": "mean_error"}
    path = tmp_path / "t" / "track.yaml"
    track = parse_track(doc, path)
    assert track.has_protocol and track.n_trials == 0 and track.tune is None
    assert not parse_track({**doc, "protocol": {}}, path).has_protocol  # no protocol declared: none
    with pytest.raises(ConfigError):
        parse_track({**doc, "tune": {"scenario": "tiny"}}, path)  # a tuning scenario needs a budget
    p = tuning.protocol_of(track)
    assert (p.tune_scenario, p.tuned, p.rank_by, p.kind, p.eval_seeds) == ("", False, "mean_error", "test_time",
                                                                           (0, 1, 2, 3, 4))
    real = tuning.PROTOCOLS.get("tta")
    assert real is not None and not real.tuned and real.rank_by == "mean_error"


def test_the_paired_mark_follows_the_metric_direction(board: tuple[Path, dict[str, Path]]) -> None:
    """A lower mean error than the baseline is better: ▲, never the sign of the difference."""
    from clbench.leaderboard.columns import versus_baseline

    root, dirs = board
    boards = root / "boards"
    for method in METHODS:
        submit(dirs[method], boards, scenario_versions=VERSIONS)
    entries = [LeaderboardEntry.from_json(json.loads((boards / TRACK / f"{m}.json").read_text())) for m in METHODS]
    base = next(e for e in entries if e.method == "source_only")
    lowered = dataclasses.replace(base, method="lower_error", runs=[
        dataclasses.replace(r, metrics={**r.metrics, "mean_error": r.metrics["mean_error"] - 0.1 - 0.01 * r.seed})
        for r in base.runs])
    cell = versus_baseline(lowered, [base, lowered], "mean_error")
    assert cell.startswith("-0.1") and cell.endswith("▲"), cell

"""Leaderboard entries: build from a protocol run, submit, validate (each rejection), render;
the typed entry: committed entries round-trip bit-identically and match the published schema.

The protocol run is fixture data written by ``make_protocol_dir``: a protocol.json in the
documented schema (clbench/tuning.py) and one results.json per evaluation seed, with metrics
computed from their R so that everything is consistent. No training happens here.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from test_records import _validate

from clbench import leaderboard as lb
from clbench import metrics as M
from clbench.cli import main
from clbench.errors import ClbenchError
from clbench.jsonrecords import as_json
from clbench.leaderboard.entry import entry_files
from clbench.records import GeneralRecord
from clbench.testing import stub_record
from clbench.tuning import PROTOCOLS

VERSIONS = {"split_digits": "1", "split_mnist": "1"}
N = PROTOCOLS["vision"].n_trials
TUNE_HASH, EVAL_HASH = "a" * 64, "b" * 64
BOARDS = Path(__file__).parents[1] / "leaderboards"
COMMITTED = entry_files(BOARDS, recursive=True)
SCHEMA = Path(__file__).parents[1] / "docs" / "leaderboard-entry.schema.json"
HOSTILE = "<script>document.title='PWNED'</script><img src=x onerror=\"document.body.dataset.pwned=1\">"


#: the registered search space of every fixture method (a grid record, as ``space_record`` writes)
FIXTURE_SPACE = {"method.strength": {"type": "grid", "values": [0.1, 0.5, 1.0]},
                 "trainer.lr": {"type": "grid", "values": [0.01, 0.05, 0.1]}}


class FixtureSpaces(dict[str, Any]):
    """The method registry as the fixtures see it: every name is a registered method with
    :data:`FIXTURE_SPACE`, except names starting with ``unregistered``."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return default if name.startswith("unregistered") else FIXTURE_SPACE


@pytest.fixture(autouse=True)
def _registry_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    # the real registry imports every plug-in (seconds); these tests pin the registered VERSIONs
    # and search spaces
    monkeypatch.setattr(lb.validate, "registered_scenario_versions", lambda: dict(VERSIONS))
    monkeypatch.setattr(lb.provenance, "registered_search_spaces", FixtureSpaces)
    # the fixtures' protocol is the vision track's, as an active board (the real one is retired)
    monkeypatch.setitem(PROTOCOLS, "vision", dataclasses.replace(PROTOCOLS["vision"], retired=False))


def _R(T: int, seed: int, skill: float) -> list[list[float]]:
    """A plausible accuracy matrix: learned tasks at ``skill``, decaying as later tasks arrive."""
    return [[round(skill * (0.9 ** (i - j)) - 0.01 * seed, 4) if j <= i else 0.1 for j in range(T)]
            for i in range(T)]


def write_health(boards: Path, track: str = "vision", passed: bool = True) -> Path:
    """Fixture data: the track's committed health check (``<boards>/<track>/health.json``)."""
    acc = {"mean": 0.9, "sd": 0.01, "per_seed": [0.9, 0.9, 0.9]}
    rec = {"schema_version": 1, "kind": "clbench-track-health", "track": track,
           "declaration_sha256": "f" * 16, "git_commit": "1" * 40, "seeds": [0, 1, 2],
           "learners": {"lower": "naive", "upper": "joint"},
           "figures": {"lower": {"acc": {**acc, "mean": 0.2}, "wall_time_s": {"mean": 3.0}},
                       "upper": {"acc": acc, "wall_time_s": {"mean": 5.0}}},
           "criteria": [{"name": "headroom", "rule": "ACC(upper) - ACC(lower) >= threshold", "value": 0.7,
                         "threshold": 0.05, "passed": passed}], "passed": passed}
    path = boards / track / "health.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


def make_protocol_dir(root: Path, method: str = "fixture_method", *, skill: float = 0.9,
                      general: bool = False, T: int = 3, lr: float = 0.05) -> Path:
    """Fixture data: a finished vision-track protocol run with its evaluation results.json files,
    and the track's passing health check under ``<root>/boards`` (where the tests submit)."""
    if not (root / "boards" / "vision" / "health.json").is_file():
        write_health(root / "boards")
    proto = PROTOCOLS["vision"]
    pdir = root / f"protocol-{lb.entry_filename(method)[:-5]}"
    best = {"trainer.lr": lr, "method.strength": 0.5}
    config = _nested({**proto.fixed, **best})
    run_dirs = []
    for seed in proto.eval_seeds:
        R, b = _R(T, seed, skill), [0.1] * T
        metrics = M.summarize(R, b)
        gen = GeneralRecord(before={}, after=[{} for _ in range(T)])
        if general:
            gen = GeneralRecord(before={"source": 0.8}, after=[{"source": 0.8 - 0.05 * (i + seed)} for i in range(T)])
            metrics["general_retention"] = gen.after[-1]["source"] / 0.8
        results = stub_record(
            method, seed, scenario=proto.eval_scenario, scenario_hash=EVAL_HASH, num_classes=10,
            config={**config, "method": method, "scenario": proto.eval_scenario, "seed": seed},
            R=R, R_pretrain=b, metrics=metrics, general=gen,
            mechanism={"kept_fraction": [1.0 - 0.1 * i for i in range(T)]},
            cost={"wall_time_s": 2.0 + seed, "train_time_s": 1.5 + seed, "train_samples": 900,
                  "train_samples_per_s": 600.0, "optimizer_steps": 30, "peak_rss_mb": 500.0,
                  "peak_cuda_mb": None, "trainable_params": 1000, "total_params": 1000},
            env={"git_commit": "0" * 40, "packages": {"torch": "2.14.1"}, "device": "cpu",
                 "device_name": "x86_64", "python": "3.11.7", "platform": "Linux"})
        rd = pdir / "eval" / f"seed{seed}"
        rd.mkdir(parents=True)
        (rd / "results.json").write_text(json.dumps(results.to_json()))
        run_dirs.append(f"eval/seed{seed}")
    record = {
        "schema_version": 1, "kind": "clbench-protocol", "status": "finished", "method": method,
        "track": "vision", "protocol": proto.record(),
        "search_space": copy.deepcopy(FIXTURE_SPACE),
        "fixed": dict(proto.fixed),
        "tuning": {"scenario": proto.tune_scenario, "scenario_options": dict(proto.tune_options),
                   "scenario_version": "1", "scenario_hash": TUNE_HASH,
                   "trials": [{"number": i, "params": best, "value": 0.5, "state": "COMPLETE",
                               "run_dir": f"tune/t{i}"} for i in range(proto.n_trials)],
                   "trials_used": proto.n_trials},
        "best_params": best, "best_value": 0.61,
        "evaluation": {"scenario": proto.eval_scenario, "scenario_options": dict(proto.eval_options), "scenario_version": "1",
                       "scenario_hash": EVAL_HASH, "seeds": list(proto.eval_seeds), "run_dirs": run_dirs},
        "mlflow": {"parent_run_id": "fixture", "tracking_uri": "sqlite:///fixture.db"},
        "env": {"git_commit": "1" * 40, "packages": {"torch": "2.14.1"},
                "hardware": {"device": "cpu", "device_name": "x86_64"}, "python": "3.11.7"},
        "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T01:00:00+00:00",
    }
    (pdir / "protocol.json").write_text(json.dumps(record))
    return pdir


def _nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """results.json's config layout for dotted run settings (``method.x`` -> method_options.x)."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        head, _, rest = key.partition(".")
        if head in ("method", "scenario", "model"):
            if rest in ("", "name"):
                out[head] = value
            else:
                out.setdefault(f"{head}_options", {})[rest] = value
        elif rest:
            out.setdefault(head, {})[rest] = value
    return out


def _entry(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    """An entry's JSON form (what its file holds), built from fixture data."""
    return lb.entry_from_protocol(make_protocol_dir(tmp_path, **kw), tmp_path / "boards").to_json()


def _resummarize(e: dict[str, Any]) -> None:
    """Recompute an entry dict's summary from its runs (a forger keeping it consistent)."""
    e["summary"] = as_json(lb.summarize_metrics([r["metrics"] for r in e["runs"]]))


def _rehash(entry: dict[str, Any]) -> dict[str, Any]:
    entry["content_hash"] = lb.content_hash(entry)
    return entry


def test_entry_holds_protocol_budget_scenarios_runs_and_a_valid_hash(tmp_path: Path) -> None:
    rec = lb.entry_from_protocol(make_protocol_dir(tmp_path, general=True), tmp_path / "boards")
    e = rec.to_json()
    assert lb.LeaderboardEntry.from_json(e) == rec and lb.validate_entry(rec) == []
    assert e["schema_version"] == 2 and e["kind"] == "clbench-leaderboard-entry"
    assert (e["track"], e["method"]) == ("vision", "fixture_method")
    assert e["hyperparameters"] == {"trainer.lr": 0.05, "method.strength": 0.5}
    assert e["config"] == {**PROTOCOLS["vision"].fixed, **e["hyperparameters"]}
    assert e["budget"] == {"n_trials": N, "trials_used": N, "sampler": PROTOCOLS["vision"].sampler, "sampler_seed": 0,
                           "objective": "acc", "objective_split": "val", "tuning_seeds": [0],
                           "trials_failed": 0, "tuning_train_time_s": 0.0}
    assert e["tuning"]["content_hash"] == TUNE_HASH and e["evaluation"]["content_hash"] == EVAL_HASH
    assert e["evaluation"]["version"] == "1" and e["seeds"] == [0, 1, 2]
    assert [r["seed"] for r in e["runs"]] == [0, 1, 2]
    accs = [r["metrics"]["acc"] for r in e["runs"]]
    assert e["summary"]["acc"]["mean"] == pytest.approx(sum(accs) / 3)
    assert e["summary"]["acc"]["std"] > 0 and e["summary"]["acc"]["n"] == 3
    assert e["summary"]["general_retention"]["mean"] < 1
    assert e["cost"]["train_time_s"]["mean"] == pytest.approx(2.5)
    assert e["env"]["git_commit"] == "1" * 40 and e["env"]["hardware"]["device"] == "cpu"
    assert e["content_hash"] == lb.content_hash(e) and len(e["content_hash"]) == 64
    assert lb.validate_entry(e) == []


def test_submit_writes_a_valid_entry_atomically_and_overwrites(tmp_path: Path) -> None:
    pdir = make_protocol_dir(tmp_path)
    path = lb.submit(pdir, tmp_path / "boards")
    assert path == tmp_path / "boards" / "vision" / "fixture_method.json"
    assert lb.validate_dir(tmp_path / "boards") == {path: []}
    first = json.loads(path.read_text())["content_hash"]
    lb.submit(pdir, tmp_path / "boards")
    assert sorted(p.name for p in path.parent.iterdir()) == ["fixture_method.json", "health.json"]  # no temp files
    assert lb.validate_entry(json.loads(path.read_text())) == []
    assert isinstance(first, str)


def test_submit_refuses_an_invalid_entry_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pdir = make_protocol_dir(tmp_path)
    monkeypatch.setattr(lb.validate, "registered_scenario_versions", lambda: {**VERSIONS, "split_mnist": "2"})
    with pytest.raises(ClbenchError, match="stale evaluation scenario version"):
        lb.submit(pdir, tmp_path / "boards")
    assert not (tmp_path / "boards" / "vision" / "fixture_method.json").exists()


def test_entry_from_protocol_rejects_runs_that_disagree_with_protocol_json(tmp_path: Path) -> None:
    pdir = make_protocol_dir(tmp_path)
    res = pdir / "eval" / "seed1" / "results.json"
    r = json.loads(res.read_text())
    r["config"]["trainer"]["lr"] = 0.5  # not H*
    res.write_text(json.dumps(r))
    with pytest.raises(ClbenchError, match="did not use the protocol's settings for trainer.lr"):
        lb.entry_from_protocol(pdir)
    (pdir / "protocol.json").write_text("{not json")
    with pytest.raises(ClbenchError, match="cannot read"):
        lb.entry_from_protocol(pdir)
    with pytest.raises(ClbenchError, match="no protocol.json"):
        lb.entry_from_protocol(tmp_path / "nowhere")


def _drop_budget(e: dict[str, Any]) -> None:
    del e["budget"]["n_trials"]


def _string_acc(e: dict[str, Any]) -> None:
    e["runs"][0]["metrics"]["acc"] = "0.99"


def _tamper(e: dict[str, Any]) -> None:
    e["summary"]["acc"]["mean"] = 0.99


def _exceed(e: dict[str, Any]) -> None:
    e["budget"]["trials_used"] = N + 1


def _declare_more(e: dict[str, Any]) -> None:
    e["budget"]["n_trials"] = 50


def _tune_on_eval(e: dict[str, Any]) -> None:
    e["tuning"].update(scenario="split_mnist", content_hash=EVAL_HASH)


def _tune_on_eval_options(e: dict[str, Any]) -> None:
    """Same scenario and options as the evaluation (a re-drawn hash does not hide it)."""
    e["tuning"].update(scenario="split_mnist", options=dict(e["evaluation"]["options"]))


def _same_hash(e: dict[str, Any]) -> None:
    e["tuning"]["content_hash"] = EVAL_HASH


def _stale(e: dict[str, Any]) -> None:
    e["evaluation"]["version"] = "0"


def _change_fixed(e: dict[str, Any]) -> None:
    e["config"]["trainer.epochs"] = 50


def _hand_set(e: dict[str, Any]) -> None:
    e["config"]["trainer.momentum"] = 0.99


def _outside_space(e: dict[str, Any]) -> None:
    e["hyperparameters"]["trainer.warmup"] = 3
    e["config"]["trainer.warmup"] = 3


def _unknown_track(e: dict[str, Any]) -> None:
    e["track"] = "no_such_track"


def _test_split(e: dict[str, Any]) -> None:
    e["budget"]["objective_split"] = "test"


def _fewer_seeds(e: dict[str, Any]) -> None:
    e["seeds"], e["runs"] = [0], e["runs"][:1]
    _resummarize(e)


def _inflate(e: dict[str, Any]) -> None:
    for r in e["runs"]:
        r["metrics"]["acc"] += 0.2
    _resummarize(e)


def _short_pretrain(e: dict[str, Any]) -> None:  # used to switch off the metrics-from-R check
    e["runs"][0]["R_pretrain"] = e["runs"][0]["R_pretrain"][:1]
    e["runs"][0]["metrics"]["acc"] = 0.95
    _resummarize(e)


def _out_of_range(e: dict[str, Any]) -> None:
    e["runs"][0]["R"][0][0] = 1.7


def _unregistered(e: dict[str, Any]) -> None:
    e["method"] = "unregistered_method"


def _off_grid(e: dict[str, Any]) -> None:
    """A learning rate the registered grid does not hold, declared in the entry's own grid."""
    e["search_space"]["trainer.lr"]["values"].append(0.07)
    e["hyperparameters"]["trainer.lr"] = e["config"]["trainer.lr"] = 0.07


def _own_grid(e: dict[str, Any]) -> None:
    e["search_space"]["method.strength"] = {"type": "grid", "values": [0.5, 2.0]}


def _failed_beyond_used(e: dict[str, Any]) -> None:
    e["budget"]["trials_failed"] = N + 3


def _no_trial(e: dict[str, Any]) -> None:
    e["budget"]["trials_used"] = 0


def _narrow_std(e: dict[str, Any]) -> None:
    """The mean left right, the spread over seeds shrunk: a tighter-looking result."""
    e["summary"]["acc"]["std"] = 0.0001


def _cheaper(e: dict[str, Any]) -> None:
    e["cost"]["train_time_s"]["mean"] = 0.1


def _narrow_ci(e: dict[str, Any]) -> None:
    lo, hi = e["summary"]["acc"]["ci95"]
    e["summary"]["acc"]["ci95"] = [lo + (hi - lo) / 4, hi - (hi - lo) / 4]


def _dirty(e: dict[str, Any]) -> None:
    e["env"]["git_commit"] += "-dirty"


def _no_health(e: dict[str, Any]) -> None:
    del e["health"]


def _failed_health(e: dict[str, Any]) -> None:
    e["health"]["passed"] = False


@pytest.mark.parametrize(
    ("mutate", "rehash", "reason"),
    [
        (_short_pretrain, True, "runs[0].R_pretrain must hold one number in [0, 1] per experience"),
        (_out_of_range, True, "runs[0].R has values outside [0, 1]"),
        (_drop_budget, True, "entry.budget: missing field 'n_trials'"),
        (_string_acc, True, "entry.runs[0].metrics.acc: expected a number, got '0.99'"),
        (_tamper, False, "content_hash mismatch"),
        (_exceed, True, f"budget exceeded: {N + 1} trials used > {N} allowed"),
        (_declare_more, True, f"declared n_trials=50 differs from the vision protocol's {N}"),
        (_tune_on_eval, True, "tuned on the evaluation scenario"),
        (_same_hash, True, "tuned on the evaluation scenario"),
        (_tune_on_eval_options, True, "tuned on the evaluation scenario"),
        (_stale, True, "stale evaluation scenario version: split_mnist v0, registered VERSION is 1"),
        (_change_fixed, True, "config trainer.epochs=50 deviates from the protocol's fixed"),
        (_hand_set, True, "set by hand outside the protocol's fixed settings and trial budget: trainer.momentum"),
        (_outside_space, True, "hyperparameters outside the declared search space: trainer.warmup"),
        (_unknown_track, True, "unknown track 'no_such_track'; known: " + ", ".join(sorted(PROTOCOLS))),
        (_test_split, True, "objective computed on split 'test'"),
        (_fewer_seeds, True, "evaluation seeds [0] differ from the protocol's [0, 1, 2]"),
        (_inflate, True, "metrics acc do not follow from its R"),
        (_unregistered, True, "method 'unregistered_method' is not registered"),
        (_off_grid, True, "hyperparameter trainer.lr=0.07 is outside fixture_method's registered grid"),
        (_own_grid, True, "search space differs from fixture_method's registered grid (method.strength: entry {'type': 'grid', 'values': [0.5, 2.0]}"),
        (_failed_beyond_used, True, f"budget: trials_failed={N + 3} is not between 0 and trials_used={N}"),
        (_no_trial, True, "budget: trials_used=0; a protocol entry needs at least one trial"),
        (_narrow_std, True, "summary disagrees with the per-seed metrics (acc)"),
        (_cheaper, True, "cost summary disagrees with the per-seed costs (train_time_s)"),
        (_narrow_ci, True, "summary disagrees with the per-seed metrics (acc)"),
        (_dirty, True, f"made from a dirty tree ({'1' * 40}-dirty); produce entries from a clean worktree"),
        (_no_health, True, "records no health check of track 'vision'"),
        (_failed_health, True, "track 'vision' failed its health check"),
    ],
)
def test_validate_rejects_with_the_reason(tmp_path: Path, mutate: Any, rehash: bool, reason: str) -> None:
    e = _entry(tmp_path)
    mutate(e)
    if rehash:  # a forger who recomputes the hash is still caught by the other checks
        _rehash(e)
    reasons = lb.validate_entry(e)
    assert any(reason in r for r in reasons), reasons


def test_validate_dir_reports_malformed_json_misplaced_files_and_valid_ones(tmp_path: Path) -> None:
    good = lb.submit(make_protocol_dir(tmp_path), tmp_path / "boards")
    track = good.parent
    (track / "broken.json").write_text('{"schema_version": 1,')
    (track / "list.json").write_text("[1, 2]")
    (track / "elsewhere.json").write_text(good.read_text())
    out = lb.validate_dir(tmp_path / "boards")
    assert out[good] == []
    assert out[track / "broken.json"][0].startswith("malformed JSON")
    assert out[track / "list.json"] == ["entry must be a JSON object, got list"]
    assert "this entry belongs at vision/fixture_method.json" in out[track / "elsewhere.json"][0]
    (track / "health.json").write_text(json.dumps(HEALTH))  # the health check's record
    assert track / "health.json" not in lb.validate_dir(tmp_path / "boards")
    with pytest.raises(ClbenchError, match="no leaderboard directory"):
        lb.validate_dir(tmp_path / "missing")


def _board(tmp_path: Path) -> tuple[Path, Path]:
    """Three valid entries (one named with markup), one tampered entry."""
    boards = tmp_path / "boards"
    lb.submit(make_protocol_dir(tmp_path, "alpha_method", skill=0.7, general=True), boards)
    lb.submit(make_protocol_dir(tmp_path, "beta_method", skill=0.95, general=True), boards)
    lb.submit(make_protocol_dir(tmp_path, HOSTILE, skill=0.8), boards)
    bad = lb.submit(make_protocol_dir(tmp_path, "gamma_tampered", skill=0.99), boards)
    e = json.loads(bad.read_text())
    e["budget"]["trials_used"] = 40
    bad.write_text(json.dumps(e))
    lb.render(boards)
    return boards / "vision", bad


def test_render_ranks_valid_entries_by_acc_and_lists_rejected_ones(tmp_path: Path) -> None:
    track, bad = _board(tmp_path)
    readme = (track / "README.md").read_text()
    block = readme.split(lb.MARK_START)[1].split(lb.MARK_END)[0]
    rows = [line for line in block.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split(" | ")[1] for r in rows][0::2] == ["beta_method", "alpha_method"]
    assert "&lt;script&gt;" in rows[1] and "<script>" not in readme
    assert "| General retention |" in block and f"| {N}/{N} | - | kept_fraction 0.9 | 0, 1, 2 |" in rows[0]
    assert f"| 9 | {N}/{N} |" in rows[0]  # protocol cost: tuning 0 s + evaluation wall times 2 + 3 + 4 s
    assert "Every entry was produced from commit `111111111111`." in block
    assert "gamma_tampered.json" in block and "content_hash mismatch" in block
    assert not any("gamma_tampered" in r for r in rows)
    # a second render keeps the text around the markers and rewrites the block
    (track / "README.md").write_text("intro\n" + readme + "\nfooter\n")
    lb.render(tmp_path / "boards")
    again = (track / "README.md").read_text()
    assert again.startswith("intro\n") and again.endswith("footer\n") and again.count(lb.MARK_START) == 1


def test_render_html_is_self_contained_escaped_and_plots_valid_entries(tmp_path: Path) -> None:
    track, _ = _board(tmp_path)
    page = (track / "index.html").read_text()
    assert page.count("<script>") == 1 and "<script>document" not in page
    assert "&lt;script&gt;document.title=&#x27;PWNED&#x27;&lt;/script&gt;" in page
    assert "<img" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "Content-Security-Policy" in page
    assert page.count('<tr data-method="') == 3
    assert page.count('class="heatmap"') == 3 and 'id="plot-scatter"' in page
    assert 'id="plot-retention"' in page and page.count('<g class="bar"') == 2
    body = page.split('id="board"')[1].split("</table>")[0]
    assert "gamma_tampered" not in body and "gamma_tampered.json" in page


def test_cli_submit_validate_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    boards = str(tmp_path / "boards")
    assert main(["submit", str(make_protocol_dir(tmp_path)), "--leaderboards", boards]) == 0
    assert "vision/fixture_method.json" in capsys.readouterr().out
    assert main(["leaderboard", "validate", boards]) == 0
    assert "1 valid, 0 rejected" in capsys.readouterr().out
    f = tmp_path / "boards" / "vision" / "fixture_method.json"
    e = json.loads(f.read_text())
    e["budget"]["trials_used"] = 99
    f.write_text(json.dumps(_rehash(copy.deepcopy(e))))
    assert main(["leaderboard", "validate", boards]) == 1
    out = capsys.readouterr().out
    assert f"fixture_method.json: budget exceeded: 99 trials used > {N}" in out
    assert main(["leaderboard", "render", boards]) == 0
    assert "vision/index.html" in capsys.readouterr().out
    assert main(["leaderboard", "validate", str(tmp_path / "none")]) == 2


def test_run_dirs_recorded_before_the_protocol_folder_moved_are_found(tmp_path: Path) -> None:
    pdir = make_protocol_dir(tmp_path)
    record = json.loads((pdir / "protocol.json").read_text())
    record["evaluation"]["run_dirs"] = [f"runs/protocol/vision/x/{pdir.name}/{rd}"
                                        for rd in record["evaluation"]["run_dirs"]]
    (pdir / "protocol.json").write_text(json.dumps(record))
    assert lb.validate_entry(lb.entry_from_protocol(pdir, tmp_path / "boards")) == []


HEALTH = {"track": "vision", "passed": False, "git_commit": "abc123def4567890", "seeds": [0, 1, 2],
          "learners": {"lower": "naive", "upper": "joint"},
          "figures": {"lower": {"wall_time_s": {"mean": 3.0}}, "upper": {"wall_time_s": {"mean": 7.0}}},
          "criteria": [{"name": "learns", "rule": "plasticity(lower) >= 0.8 x ACC(upper)", "value": 0.98,
                        "threshold": 0.79, "passed": True},
                       {"name": "forgets", "rule": "forgetting(lower) >= threshold", "value": 0.029,
                        "threshold": 0.05, "passed": False}]}


def test_board_shows_the_track_health_and_skips_tracks_without_entries_or_health(tmp_path: Path) -> None:
    good = lb.submit(make_protocol_dir(tmp_path), tmp_path / "boards")
    (good.parent / "health.json").write_text(json.dumps(HEALTH))
    (tmp_path / "boards" / "declared_only").mkdir()  # a pending track: track.yaml, nothing else
    written = lb.render(tmp_path / "boards")
    assert not any("declared_only" in str(p) for p in written)
    readme = (good.parent / "README.md").read_text()
    assert "**Track health**" in readme and "commit `abc123def456`" in readme
    assert "| forgets | forgetting(lower) >= threshold | 0.029 | 0.050 | FAIL |" in readme
    assert "health.json" not in readme  # not listed as a rejected entry
    page = (good.parent / "index.html").read_text()
    assert "<h2>Track health: FAILS</h2>" in page and "<td>0.029</td><td>0.050</td><td>FAIL</td>" in page


def test_markdown_cells_escape_links_and_emphasis() -> None:
    from clbench.leaderboard.markdown import _md_cell

    cell = _md_cell("[click](http://evil.example) *bold* `code` a|b <b>")
    assert cell == r"\[click\]\(http://evil.example\) \*bold\* \`code\` a\|b &lt;b&gt;"


def test_a_huge_or_deeply_nested_file_is_rejected_without_stopping_the_board(tmp_path: Path) -> None:
    from clbench.leaderboard import validate as v

    good = lb.submit(make_protocol_dir(tmp_path), tmp_path / "boards")
    track = good.parent
    (track / "deep.json").write_text("[" * 100000 + "]" * 100000)  # past Python's recursion limit
    (track / "nested.json").write_text("[" * 40 + "]" * 40)
    (track / "huge.json").write_bytes(b" " * (v.MAX_ENTRY_BYTES + 1))
    out = lb.validate_dir(tmp_path / "boards")
    assert out[good] == []
    assert out[track / "deep.json"] == ["malformed JSON: nested too deeply"]
    assert out[track / "nested.json"] == [f"entry nests deeper than {v.MAX_ENTRY_DEPTH} levels"]
    assert "at most" in out[track / "huge.json"][0]
    assert lb.render(tmp_path / "boards")  # the board still renders


# ---------------------------------------------------------------------------------------------
# the typed entry


@pytest.mark.parametrize("path", COMMITTED, ids=[f"{p.parent.name}/{p.stem}" for p in COMMITTED])
def test_committed_entries_parse_round_trip_bit_identically_and_keep_their_hash(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    rec = lb.LeaderboardEntry.from_json(data, str(path))
    out = rec.to_json()
    assert out == data and lb.canonical_json(out) == lb.canonical_json(data)
    assert json.dumps(out, indent=2, ensure_ascii=False) + "\n" == text  # as `clbench submit` writes it
    assert lb.content_hash(out) == lb.content_hash(data) == rec.content_hash
    _validate(data, lb.json_schema())


def test_the_published_entry_schema_is_generated_from_the_record() -> None:
    assert json.loads(SCHEMA.read_text()) == lb.json_schema(), \
        "docs/leaderboard-entry.schema.json is stale: python -m clbench.leaderboard > docs/leaderboard-entry.schema.json"


def test_a_built_entry_round_trips_and_the_schema_rejects_what_the_record_rejects(tmp_path: Path) -> None:
    rec = lb.entry_from_protocol(make_protocol_dir(tmp_path, general=True), tmp_path / "boards")
    e = rec.to_json()
    assert lb.LeaderboardEntry.from_json(json.loads(json.dumps(e))) == rec
    _validate(e, lb.json_schema())
    for bad in ({**e, "extra": 1}, {**e, "kind": "other"}, {**e, "seeds": "0"},
                {**e, "budget": {**e["budget"], "n_trials": 1.5}}):
        with pytest.raises(AssertionError):
            _validate(bad, lb.json_schema())
        with pytest.raises(ClbenchError):
            lb.LeaderboardEntry.from_json(bad)


def _bad_type(e: dict[str, Any]) -> None:
    e["budget"]["n_trials"] = "8"


def _unknown_field(e: dict[str, Any]) -> None:
    e["tuning"]["note"] = "hand-added"


def _wrong_kind(e: dict[str, Any]) -> None:
    e["kind"] = "something-else"


def _nan_metric(e: dict[str, Any]) -> None:
    e["runs"][0]["metrics"]["bwt"] = float("nan")


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (_bad_type, "entry.budget.n_trials: expected an integer, got '8'"),
        (_unknown_field, "entry.tuning: unknown field(s) note"),
        (_wrong_kind, "entry: kind/schema_version 'something-else'/2; expected 'clbench-leaderboard-entry'/one of [1, 2]"),
        (_nan_metric, "entry.runs[0].metrics.bwt: non-finite number nan"),
    ],
)
def test_bad_input_gives_one_error_naming_field_and_value(tmp_path: Path, mutate: Any, reason: str) -> None:
    e = _entry(tmp_path)
    mutate(e)
    reasons = lb.validate_entry(e)
    assert len(reasons) == 1 and reason in reasons[0], reasons


def test_signatures_are_optional_but_must_verify_against_allowed_signers(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    boards = tmp_path / "boards"
    path = lb.submit(make_protocol_dir(tmp_path), boards)
    assert lb.validate_dir(boards) == {path: []}  # unsigned: fine
    key = tmp_path / "alice.pem"
    assert main(["leaderboard", "keygen", str(key), "--signer", "alice"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("alice ed25519 ") and oct(key.stat().st_mode & 0o777) == "0o600"
    assert main(["leaderboard", "sign", str(path), "--key", str(key), "--signer", "alice"]) == 0
    sig = path.with_name(path.name + ".sig")
    assert sig.is_file() and entry_files(boards, recursive=True) == [path]  # a .sig is no entry
    assert lb.validate_dir(boards)[path] == ["signed by 'alice', who is not in allowed_signers (empty)"]
    (boards / "allowed_signers").write_text(f"# who may sign\n{line}\n")
    assert lb.validate_dir(boards) == {path: []}
    e = json.loads(path.read_text())
    e["runs"][0]["R"][0][0] = 0.5  # a forger's edit, hash recomputed, signature kept
    path.write_text(json.dumps(_rehash(e)))
    assert any("signature by 'alice' does not verify" in r for r in lb.validate_dir(boards)[path])
    (boards / "allowed_signers").write_text("alice rsa AAAA\n")
    assert "expected '<name> ed25519 <base64 public key>'" in lb.validate_dir(boards)[path][-1]


def test_entries_of_one_track_come_from_one_commit(tmp_path: Path) -> None:
    boards = tmp_path / "boards"
    for method in ("alpha_method", "beta_method", "gamma_method"):
        lb.submit(make_protocol_dir(tmp_path, method), boards)
    assert all(r == [] for r in lb.validate_dir(boards).values())
    late = boards / "vision" / "gamma_method.json"
    e = json.loads(late.read_text())
    e["env"]["git_commit"] = "2" * 40  # made later, from another commit
    late.write_text(json.dumps(_rehash(e)))
    out = lb.validate_dir(boards)
    assert out[late] == [f"made at commit {'2' * 12}, but 2 of track 'vision''s 3 entries are from {'1' * 12}: "
                         "a board comes from one commit"]
    assert out[boards / "vision" / "alpha_method.json"] == []
    lb.render(boards)
    assert "gamma_method.json" in (boards / "vision" / "README.md").read_text().split("Rejected entries")[1]


def test_schema_2_summaries_hold_the_sample_std_and_a_t_interval(tmp_path: Path) -> None:
    import math

    from scipy import stats as st

    e = _entry(tmp_path)
    accs = [r["metrics"]["acc"] for r in e["runs"]]
    m, sd = sum(accs) / 3, math.sqrt(sum((a - sum(accs) / 3) ** 2 for a in accs) / 2)
    half = st.t.ppf(0.975, 2) * sd / math.sqrt(3)
    s = e["summary"]["acc"]
    assert s["std"] == pytest.approx(sd) and s["ci95"] == pytest.approx([m - half, m + half])


def test_the_board_shares_overlapping_ranks_tests_against_the_baseline_and_flags_grid_edges(tmp_path: Path) -> None:
    boards = tmp_path / "boards"
    lb.submit(make_protocol_dir(tmp_path, "naive", skill=0.5), boards)  # the health check's lower learner
    lb.submit(make_protocol_dir(tmp_path, "alpha_method", skill=0.9), boards)
    lb.submit(make_protocol_dir(tmp_path, "beta_method", skill=0.9, lr=0.1), boards)  # same R: overlapping CIs
    lb.render(boards)
    block = (boards / "vision" / "README.md").read_text().split(lb.MARK_START)[1]
    rows = {r.split(" | ")[1]: r for r in block.splitlines() if r.startswith("| ") and r[2].isdigit()}
    assert rows["alpha_method"].startswith("| 1= |") and rows["beta_method"].startswith("| 1= |")
    assert rows["naive"].startswith("| 3 |") and "| ACC [95 % CI] |" in block
    assert "| ΔACC vs naive (paired t) |" in block
    # the fixture's R decays with the seed by the same step for every method: a constant difference
    assert "| +0.361 \\(p 0\\) ▲ |" in rows["alpha_method"] and rows["naive"].count("| - |") == 2
    assert "trainer.lr=0.1 \\(max\\)" in rows["beta_method"] and "(max" not in rows["alpha_method"]
    page = (boards / "vision" / "index.html").read_text()
    assert 'class="ref"' in page and "chance 0.100" in page and "upper bound (joint) 0.900" in page
    assert page.count('class="colour-bar"') == 3


def test_render_exports_each_ranked_entrys_config_and_an_index_over_tracks(tmp_path: Path) -> None:
    from clbench.config import build_run_config, load_yaml

    track, _ = _board(tmp_path)
    cfg = build_run_config(load_yaml(track / "configs" / "beta_method.yaml"))
    entry = json.loads((track / "beta_method.json").read_text())
    assert (cfg.method, cfg.scenario, cfg.seed) == ("beta_method", entry["evaluation"]["scenario"], 0)
    assert cfg.trainer.lr == entry["hyperparameters"]["trainer.lr"] and cfg.method_options == {"strength": 0.5}
    assert dict(cfg.scenario_options) == entry["evaluation"]["options"]
    assert not (track / "configs" / "gamma_tampered.yaml").exists()  # rejected entries export nothing
    index = (tmp_path / "boards" / "index.html").read_text()
    assert '<a href="vision/index.html">vision</a>' in index and "beta_method (0.8" in index


def test_the_pareto_front_keeps_the_points_nothing_beats_on_both_axes(tmp_path: Path) -> None:
    from clbench.leaderboard.plots import pareto_front

    assert pareto_front([(0.9, 0.2), (0.5, 0.5), (0.4, 0.4), (0.2, 0.8), (0.2, 0.7)]) == [
        (0.2, 0.8), (0.5, 0.5), (0.9, 0.2)]
    track, _ = _board(tmp_path)
    page = (track / "index.html").read_text()
    assert 'id="plot-pareto"' in page and 'class="pareto"' in page


def test_reported_numbers_are_compared_only_where_a_track_matches_the_setting(tmp_path: Path) -> None:
    boards = tmp_path / "boards"
    lb.submit(make_protocol_dir(tmp_path, "alpha_method", skill=0.9), boards)
    (boards / "reported.yaml").write_text(
        "schema_version: 1\ntracks:\n"
        "  vision:\n"
        "    - {source: Paper A, setting: the same setting, matches: true, differs: seeds,\n"
        "       numbers: [{method: alpha_method, metric: acc, value: 0.75}, {method: beta_method, metric: acc, value: 0.5}]}\n"
        "    - {source: Paper B, setting: another setting, matches: false, differs: other data}\n")
    lb.render(boards)
    text = (boards / "REPORTED.md").read_text()
    assert "| alpha_method | acc | 0.750 | 0.803 [" in text and "| +0.053 |" in text
    assert "| beta_method | acc | 0.500 | no entry yet | - |" in text
    assert "**Paper B**: another setting. Not compared: other data" in text
    (boards / "reported.yaml").write_text("schema_version: 1\ntracks:\n  vision:\n"
                                          "    - {source: C, setting: s, matches: true}\n")
    with pytest.raises(ClbenchError, match="a matching setting \\(C\\) lists no numbers"):
        lb.render(boards)


def test_rejections_on_a_retired_board_are_listed_but_not_counted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    boards = tmp_path / "boards"
    path = lb.submit(make_protocol_dir(tmp_path), boards)
    e = json.loads(path.read_text())
    e["budget"]["trials_used"] = 99
    path.write_text(json.dumps(_rehash(e)))
    assert main(["leaderboard", "validate", str(boards)]) == 1
    monkeypatch.setitem(PROTOCOLS, "vision", dataclasses.replace(PROTOCOLS["vision"], retired=True))
    capsys.readouterr()
    assert main(["leaderboard", "validate", str(boards)]) == 0
    out = capsys.readouterr().out
    assert "fixture_method.json (retired board, not counted): budget exceeded" in out
    assert "0 valid, 0 rejected, 1 rejected on retired boards" in out
    lb.render(boards)
    assert "**Superseded:**" in (boards / "vision" / "README.md").read_text()


def test_an_entry_tuned_over_a_grid_its_track_widens_is_valid_there_and_stale_elsewhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    e = _entry(tmp_path)
    e["search_space"]["method.strength"]["values"].append(2.0)
    e["hyperparameters"]["method.strength"] = e["config"]["method.strength"] = 2.0
    _rehash(e)
    assert any("search space differs from fixture_method's registered grid" in r for r in lb.validate_entry(e))
    wide = dataclasses.replace(PROTOCOLS["vision"], search={"fixture_method": {"method.strength": (0.1, 0.5, 1.0, 2.0)}})
    monkeypatch.setitem(PROTOCOLS, "vision", wide)
    assert [r for r in lb.validate_entry(e) if "grid" in r or "search" in r] == []
    # the board says which grids the track widens
    assert "fixture_method `method.strength` to 0.1, 0.5, 1.0, 2.0" in lb.columns._protocol_line("vision", wide)

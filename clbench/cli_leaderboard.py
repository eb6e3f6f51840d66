"""Owns the leaderboard verbs of the command line: ``clbench submit`` and ``clbench leaderboard
validate|render|reproduce|keygen|sign`` (the leaderboard package is imported only when one of
them runs)."""

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
    reports = validate_dir(args.dir)
    for path, reasons in reports.items():
        if reasons:
            print(f"{path}: {'; '.join(reasons)}")
    bad = sum(1 for r in reports.values() if r)
    print(f"{len(reports) - bad} valid, {bad} rejected")
    return 1 if bad else 0


def _reproduce(args: argparse.Namespace) -> int:
    from clbench.leaderboard.reproduce import DEFAULT_ATOL, DEFAULT_RUNS_DIR, reproduce

    if args.dir == "leaderboards" or not Path(args.dir).is_file():
        raise ConfigError("entry", args.dir, "an entry file, e.g. leaderboards/vision_cil/naive.json")
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


def add_leaderboard_verbs(sub: Any) -> None:
    """``submit`` and ``leaderboard validate|render|reproduce`` on the CLI's subparsers."""
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

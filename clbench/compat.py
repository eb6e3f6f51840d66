"""Owns the method x data-parallel-mode compatibility table, written from test results.

``make compat`` runs the data-parallel integration tests (``tests/test_distributed.py``) with
``CLBENCH_COMPAT_OUT`` set: every test appends one JSON line (model, method, mode, its result,
and for runs that trained: the largest weight difference between 2 processes and 1 relative to
the weights' scale, the largest difference in R and the tolerances; for refused runs: the error
a user sees). ``python -m clbench.compat <file> README.md`` renders those lines into the README's
``compat`` block; the table is never written by hand.

The tests launch their runs in batches (``python -m clbench.compat runs <cases.json> <out dir>``,
under ``torchrun`` for 2 processes): one process (group) runs many ``clbench run`` command lines
in turn through the CLI, so the seconds of start-up (imports, process group) are paid once per
batch, not once per run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

# result -> its wording in the table
RESULTS = {"same": "same within tolerance", "differs": "DIFFERS", "refused": "refused",
           "not_comparable": "runs, not comparable"}


def compat_table(lines: list[dict[str, object]]) -> str:
    """Markdown: one row per (model, method, mode), the last measurement of each."""
    def label(r: dict[str, object]) -> str:  # the method and any non-default options it ran with
        options = " ".join(map(str, r.get("options") or []))  # type: ignore[call-overload]
        return f"{r['method']} ({options})" if options else str(r["method"])

    latest = {(str(r["model"]), label(r), str(r["mode"])): r for r in lines}
    rows = ["| model | method | mode | 2 vs 1 process: max abs(dw) / max abs(w) | max abs(dR) | result |",
            "|---|---|---|---|---|---|"]
    for (model, method, mode), r in sorted(latest.items()):
        result = str(r.get("result") or ("same" if r.get("passed") else "differs"))
        dw = "—" if r.get("rel_dw") is None else f"{float(r['rel_dw']):.2g} (tolerance {r['rtol']})"  # type: ignore[arg-type]
        dr = "—" if r.get("max_dR") is None else f"{float(r['max_dR']):.3g} (tolerance {r['atol_R']})"  # type: ignore[arg-type]
        verdict = RESULTS.get(result, result) + (f": {r['reason']}" if r.get("reason") else "")
        rows.append(f"| {model} | {method} | {mode} | {dw} | {dr} | {verdict.replace('|', '/')} |")
    return "\n".join(rows)


def run_cases(cases: list[dict[str, object]], out_dir: Path) -> None:
    """Run each case's ``clbench run`` overrides through the CLI, in order; append one JSON line
    per case (id, exit code, the CLI's error line, seconds) to ``<out_dir>/rank<r>.jsonl``.

    A ``ClbenchError`` (a refusal) is the CLI's exit code 2 and the batch goes on; any other
    exception ends the batch (under ``torchrun`` the other process is then stopped too).
    """
    from clbench.cli import main as cli

    out_dir.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    with open(out_dir / f"rank{rank}.jsonl", "a", encoding="utf-8") as fh:
        for case in cases:
            err, start = io.StringIO(), time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                rc = cli(["run", *map(str, case["args"])])  # type: ignore[call-overload]
            error = next((x for x in err.getvalue().splitlines() if x.startswith("clbench: error: ")), "")
            fh.write(json.dumps({"id": case["id"], "rc": rc, "error": error.removeprefix("clbench: error: "),
                                 "seconds": round(time.perf_counter() - start, 2)}) + "\n")
            fh.flush()


def main(argv: list[str]) -> int:
    from clbench.bench import embed

    if len(argv) == 3 and argv[0] == "runs":
        run_cases(json.loads(Path(argv[1]).read_text(encoding="utf-8")), Path(argv[2]))
        return 0
    if len(argv) != 2:
        print("usage: python -m clbench.compat <results.jsonl> <README.md>\n"
              "       python -m clbench.compat runs <cases.json> <out dir>", file=sys.stderr)
        return 2
    lines = [json.loads(x) for x in Path(argv[0]).read_text(encoding="utf-8").splitlines() if x.strip()]
    embed(Path(argv[1]), "compat", compat_table(lines), by="make compat")
    print(f"wrote the compat table ({len(lines)} measurements) into {argv[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

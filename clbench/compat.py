"""Owns the method x data-parallel-mode compatibility table, written from test results.

``make compat`` runs the data-parallel integration tests (``tests/test_distributed.py``) with
``CLBENCH_COMPAT_OUT`` set: every test appends one JSON line (method, mode, model, the largest
weight difference between 2 processes and 1 relative to the weights' scale, the largest
difference in R, the tolerances, pass/fail). ``python -m clbench.compat <file> README.md`` renders
those lines into the README's ``compat`` block; the table is never written by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def compat_table(lines: list[dict[str, object]]) -> str:
    """Markdown: one row per (method, mode, model), the last measurement of each."""
    latest = {(str(r["method"]), str(r["mode"]), str(r["model"])): r for r in lines}
    rows = ["| method | mode | model | 2 vs 1 process: max abs(dw) / max abs(w) | max abs(dR) | result |",
            "|---|---|---|---|---|---|"]
    for (method, mode, model), r in sorted(latest.items()):
        verdict = "same within tolerance" if r["passed"] else "DIFFERS"
        rows.append(f"| {method} | {mode} | {model} | {float(r['rel_dw']):.2g} (tolerance {r['rtol']}) | "  # type: ignore[arg-type]
                    f"{float(r['max_dR']):.3g} (tolerance {r['atol_R']}) | {verdict} |")  # type: ignore[arg-type]
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    from clbench.bench import embed

    if len(argv) != 2:
        print("usage: python -m clbench.compat <results.jsonl> <README.md>", file=sys.stderr)
        return 2
    lines = [json.loads(x) for x in Path(argv[0]).read_text(encoding="utf-8").splitlines() if x.strip()]
    embed(Path(argv[1]), "compat", compat_table(lines), by="make compat")
    print(f"wrote the compat table ({len(lines)} measurements) into {argv[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

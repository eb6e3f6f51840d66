"""Owns ``make bench`` and ``make compare``: fixed settings on the default suite, one table.

The settings are fixed so that every method is compared under the same budget; user overrides
(``key=value``) are applied on top and recorded in the run configs. Pairs a method cannot run
(declared capabilities) are skipped with the reason, never silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clbench.config import RunConfig, build_run_config
from clbench.errors import IncompatibleError
from clbench.records import RunRecord
from clbench.registry import METHODS
from clbench.report import aggregate_table, domain_error_table, summary_table
from clbench.runner import run
from clbench.tracks import get_track

BENCH_RUNS_DIR = "runs/bench"
COMPARE_RUNS_DIR = "runs/compare"
DEFAULT_TRACK = "vision_cil"
TEST_TIME_TRACK = "tta"
SOURCE_TRACK = "vision_ft"  # the vision track whose stream carries source data (and a foundation)


def default_track(method: str) -> str:
    """``tta`` for methods that only run on test-time streams, ``vision_ft`` for methods that
    need source data or a pretrained model (its foundation), else ``vision_cil``."""
    cls = METHODS.get(method)
    if set(cls.scenario_types) == {"test_time"}:
        return TEST_TIME_TRACK
    return SOURCE_TRACK if cls.needs_source_data or cls.needs_pretrained else DEFAULT_TRACK


def suite_for(track: str) -> dict[str, dict[str, Any]]:
    """A track's quick suite: its evaluation scenario with the fixed and reference settings
    (``leaderboards/<track>/track.yaml``)."""
    t = get_track(track)
    return {t.evaluate.name: t.run_values()}


def suite_configs(overrides: Mapping[str, Any], seeds: Sequence[int], runs_dir: str,
                  track: str = DEFAULT_TRACK) -> list[RunConfig]:
    """One validated RunConfig per (scenario, seed); overrides apply on top of the fixed settings.
    The runs are logged to the track's MLflow experiment (named as the track) unless
    ``tracking.experiment`` is given."""
    suite = suite_for(track)
    return [build_run_config({**fixed, "tracking.runs_dir": runs_dir, "tracking.experiment": track, **overrides,
                              "scenario": scenario, "seed": seed})
            for scenario, fixed in suite.items() for seed in seeds]


def run_all(configs: Sequence[RunConfig], resume: bool, ranked: bool = False) -> tuple[list[RunRecord], list[str]]:
    """Run every config; incompatible (method, scenario) pairs are skipped with the reason.
    ``ranked``: also skip what the tuning protocol would not rank (:func:`clbench.tuning.precheck`,
    e.g. a method that needs a pretrained model on one that starts untrained), as a board does."""
    from clbench.tuning import precheck

    results: list[RunRecord] = []
    skipped: list[str] = []
    checked: set[tuple[str, str]] = set()
    for cfg in configs:
        try:
            if ranked and (cfg.method, cfg.scenario) not in checked:
                precheck(cfg)
                checked.add((cfg.method, cfg.scenario))
            results.append(run(cfg, resume=resume, force=not resume))
        except IncompatibleError as exc:
            note = f"skipped {cfg.method} on {cfg.scenario}: {exc}"
            if note not in skipped:
                skipped.append(note)
    return results, skipped


def run_bench(overrides: Mapping[str, Any], seeds: Sequence[int] = (0, 1, 2), resume: bool = False,
              track: str = DEFAULT_TRACK) -> str:
    """Run the suite for ``overrides['method']`` and return the Markdown summary."""
    configs = suite_configs(overrides, seeds, BENCH_RUNS_DIR, track)  # validate all before running any
    results, skipped = run_all(configs, resume)
    if results and all(r.scenario.type == "test_time" for r in results):
        return "\n\n".join([domain_error_table(results), *skipped])
    parts = [aggregate_table(results)] if results else []
    if len(seeds) > 1 and results:
        parts.append("Per seed:\n\n" + summary_table(results))
    return "\n\n".join(parts + skipped)


def run_compare(seeds: Sequence[int] = (0, 1, 2), resume: bool = False,
                readme: Path | None = None, track: str = DEFAULT_TRACK,
                methods: Sequence[str] | None = None) -> str:
    """Methods (default: all registered) on a track's quick suite; the track's health table,
    then one table with the track's ranking and shown metrics and each method's mechanism figures.
    A method the track's board would not rank (not applicable) is listed as not run, with why.

    The text is written into ``readme`` between ``<!-- compare-<track>:start/end -->``.
    """
    from clbench.report import compare_tables, domain_error_table, tta_summary_table
    from clbench.tracks import health_path

    t = get_track(track)
    suite = suite_for(track)
    results: list[RunRecord] = []
    skipped: list[str] = []
    for method in methods or METHODS.names():
        r, s = run_all(suite_configs({"method": method}, seeds, COMPARE_RUNS_DIR, track), resume, ranked=True)
        results += r
        skipped += s
    parts = []
    health_md = health_path(t).with_suffix(".md")
    if health_md.is_file():
        parts.append(health_md.read_text().strip())
    sd = f"mean ± sd over seeds {', '.join(map(str, seeds))}"
    if results and all(r.test_time is not None for r in results):  # test-time track: per-domain errors
        parts.append(f"**{t.evaluate.name}** ({sd})\n\n" + tta_summary_table(results))
        parts.append("<details><summary>error % per domain</summary>\n\n"
                     + domain_error_table(results, per_seed=False) + "\n\n</details>")
    else:
        parts.append(compare_tables(results, list(suite), seeds, (t.rank_by, *t.shown)))
        if readme is not None and t.kind == "foundation" and results:  # ACC against retention
            from clbench.report import pareto_png

            png = health_path(t).with_name("pareto.png")
            pareto_png(results, png, f"{track}: ACC on the stream vs retention of general capability")
            parts.append(f"![ACC vs general retention, {track}]({png.relative_to(readme.parent.resolve())})"
                         if png.is_relative_to(readme.parent.resolve()) else f"Pareto plot: {png}")
    if skipped:
        parts.append(skip_notes(skipped))
    text = "\n\n".join(parts)
    if readme is not None:
        embed(readme, f"compare-{track}", text)
    return text


def skip_notes(skipped: Sequence[str]) -> str:
    """One line per distinct reason, naming every method it applies to."""
    by_reason: dict[str, list[str]] = {}
    for note in skipped:
        m = re.match(r"skipped (\S+) on (\S+): (.*)$", note, flags=re.S)
        if not m:
            by_reason.setdefault(note, [])
            continue
        reason = m.group(3).removeprefix(f"method '{m.group(1)}' ")
        by_reason.setdefault(f"on {m.group(2)}: {reason}", []).append(m.group(1))
    return "\n".join(f"- not run ({', '.join(ms)}) {reason}" if ms else f"- {reason}"
                      for reason, ms in by_reason.items())


def embed(path: Path, tag: str, text: str, by: str = "make compare") -> None:
    """Replace the block between ``<!-- tag:start -->`` and ``<!-- tag:end -->`` in ``path``."""
    doc = path.read_text()
    start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
    if start not in doc or end not in doc:
        raise ValueError(f"{path} has no {start} ... {end} block")
    block = f"{start}\n<!-- generated by `{by}`; do not edit by hand -->\n{text}\n{end}"
    path.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, doc, flags=re.S))

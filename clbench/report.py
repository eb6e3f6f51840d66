"""Owns text rendering of results: accuracy matrices and metric tables (Markdown)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from clbench.metrics import higher_is_better, metric_digits, metric_label
from clbench.records import RunRecord, as_json
from clbench.stats import finite, mean, sample_sd

SUMMARY_COLUMNS = tuple((k, metric_label(k)) for k in ("acc", "bwt", "fwt", "forgetting", "plasticity"))


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def matrix_table(R: Sequence[Sequence[float]], b: Sequence[float] | None = None) -> str:
    """R with a pre-training row (when ``b`` is given); rows = trained through, cols = tested on."""
    T = len(R[0]) if R else 0
    header = ["trained through \\ tested on"] + [f"exp {j}" for j in range(T)]
    rows: list[list[Any]] = []
    if b is not None:
        rows.append(["(pre-training)", *b])
    rows += [[f"exp {i}", *r] for i, r in enumerate(R)]
    return markdown_table(header, rows)


def method_of(r: RunRecord) -> str:
    """The registry name of the run's method (``config.method``)."""
    return r.method


def scenario_of(r: RunRecord) -> str:
    """The registry name of the run's scenario (``config.scenario``; ``scenario.name`` is the
    stream's own name, which a registered variant may share)."""
    return r.scenario_name


def summary_row(results: RunRecord) -> list[Any]:
    m, c = results.metrics, results.cost
    return [*(m.get(k) for k, _ in SUMMARY_COLUMNS), f"{c.wall_time_s:.1f}",
            f"{c.train_samples_per_s:.0f}"]


def summary_table(runs: Sequence[RunRecord]) -> str:
    """One row per run: method, scenario, seed, ACC, BWT, FWT, forgetting, plasticity, time."""
    header = ["method", "scenario", "seed", *(h for _, h in SUMMARY_COLUMNS), "time (s)", "train samples/s"]
    rows = [[method_of(r), scenario_of(r), r.seeds.seed, *summary_row(r)] for r in runs]
    return markdown_table(header, rows)


def aggregate_table(runs: Sequence[RunRecord]) -> str:
    """Mean ± std over seeds, one row per (method, scenario)."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in runs:
        groups.setdefault((method_of(r), scenario_of(r)), []).append(r)
    header = ["method", "scenario", "seeds", *(h for _, h in SUMMARY_COLUMNS), "time (s)"]
    rows = []
    for (method, scenario), rs in groups.items():
        cells = [mean_std([r.metrics[k] for r in rs], metric_digits(k)) for k, _ in SUMMARY_COLUMNS]
        rows.append([method, scenario, len(rs), *cells, mean_std([r.cost.wall_time_s for r in rs], 1)])
    return markdown_table(header, rows)


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± sd`` (sample standard deviation over seeds, ddof=1; 0 for one seed); ``n/a``
    when all values are NaN."""
    if not finite(values):
        return "n/a"
    return f"{mean(values):.{digits}f} ± {sample_sd(values, single=0.0):.{digits}f}"


def show(results: RunRecord) -> str:
    """Full text view of one run: header, R, metrics, cost."""
    head = (f"{method_of(results)} on {scenario_of(results)} (seed {results.seeds.seed}), scenario "
            f"v{results.scenario.version} {results.scenario.content_hash[:12]}, "
            f"device {results.env['device']}")
    metrics = markdown_table(["metric", "value"], list(results.metrics.items()))
    cost = markdown_table(["cost", "value"], list(as_json(results.cost).items()))
    return "\n\n".join([head, "Accuracy matrix R:\n" + matrix_table(results.R, results.R_pretrain),
                        metrics, cost])


COMPARE_COLUMNS = tuple((k, metric_label(k)) for k in ("acc", "bwt", "forgetting", "general_retention"))


def mechanism_cell(group: Sequence[RunRecord]) -> str:
    """The method's declared mechanism figures: mean over experiences and seeds (min-max over seeds)."""
    import numpy as np

    keys: list[str] = []
    for r in group:
        keys += [k for k in r.mechanism if k not in keys]
    parts = []
    for k in keys:
        per_seed = [float(np.mean(v)) for r in group
                    if (v := [x for x in r.mechanism.get(k, []) if x is not None])]
        if per_seed:
            parts.append(f"{k} {np.mean(per_seed):.3g}")
    return "; ".join(parts) or "-"


def _rank_value(group: Sequence[RunRecord], rank: str) -> float:
    """Sort key of a method's runs by the ranking metric: best first, no value last."""
    vals = [float(g.metrics.get(rank, float("nan"))) for g in group]
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return float("inf")
    return (-1.0 if higher_is_better(rank) else 1.0) * sum(vals) / len(vals)


def compare_tables(runs: Sequence[RunRecord], scenarios: Sequence[str], seeds: Sequence[int],
                   columns: Sequence[str] | None = None) -> str:
    """One Markdown table per scenario: methods as rows, mean ± std over seeds (ddof=1), the
    methods' mechanism figures and the wall time."""
    cols = [(k, metric_label(k)) for k in columns] if columns else list(COMPARE_COLUMNS)
    out = []
    for scenario in scenarios:
        rs = [r for r in runs if scenario_of(r) == scenario]
        if not rs:
            continue
        by_method = _by_method(rs)
        header = ["method", *(h for _, h in cols), "mechanism", "time (s)"]
        rank = cols[0][0]  # rows in the order of the ranking metric, best first
        ordered = sorted(by_method.items(), key=lambda kv: _rank_value(kv[1], rank))
        rows = [[m, *(mean_std([g.metrics.get(k, float("nan")) for g in group], metric_digits(k)) for k, _ in cols),
                 mechanism_cell(group), mean_std([g.cost.wall_time_s for g in group], 1)]
                for m, group in ordered]
        t = rs[0].trainer_settings
        settings = (f"model {rs[0].model.name}, {t['optimizer']} lr {t['lr']}, {t['epochs']} epochs, "
                    f"batch {t['batch_size']}, seeds {', '.join(map(str, seeds))}")
        out.append(f"**{scenario}** ({rs[0].scenario.type.replace('_', '-')}; {settings})\n\n"
                   + markdown_table(header, rows))
    return "\n\n".join(out)


def _by_method(runs: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs grouped by method, in the order the methods first appear."""
    out: dict[str, list[RunRecord]] = {}
    for r in runs:
        out.setdefault(method_of(r), []).append(r)
    return out


def domain_error_table(runs: Sequence[RunRecord], per_seed: bool = True) -> str:
    """Test-time runs: error (%) per domain, mean error and source accuracy after the stream.

    One row per (method, seed) unless ``per_seed`` is False, then a ``mean ± sd`` row per method
    (sample sd over seeds).
    """
    test_time = runs[0].test_time
    if test_time is None:
        raise ValueError(f"{runs[0].run_dir} is not a test-time run (no test_time record)")
    domains = list(test_time.domains)
    header = ["method", "seed", *(d.split("_")[0] + (f" p{d.rpartition('_pass')[2]}" if "_pass" in d else "")
                                  for d in domains), "mean", "source acc after"]
    rows: list[list[Any]] = []
    for method, group in _by_method(runs).items():
        for r in group if per_seed or len(group) == 1 else ():
            m = r.metrics
            rows.append([method, r.seeds.seed, *(f"{100 * m[f'error_{d}']:.1f}" for d in domains),
                         f"{100 * m['mean_error']:.1f}", f"{100 * m.get('source_acc_after', float('nan')):.1f}"])
        if len(group) > 1:
            cells = [mean_std([100 * r.metrics[f"error_{d}"] for r in group], 1) for d in domains]
            rows.append([f"**{method}**", "mean", *cells, mean_std([100 * r.metrics["mean_error"] for r in group], 1),
                         mean_std([100 * r.metrics.get("source_acc_after", float("nan")) for r in group], 1)])
    return markdown_table(header, rows)


def tta_summary_table(runs: Sequence[RunRecord]) -> str:
    """Test-time runs, one row per method: mean error, the first and the last pass over the
    domains (drift shows as a difference), source accuracy after, mechanism figures, time."""
    by_method = _by_method(runs)
    header = ["method", "mean error %", "first pass %", "last pass %", "source acc after %",
              "mechanism", "time (s)"]

    def pct(group: Sequence[RunRecord], key: str) -> str:
        return mean_std([100 * float(g.metrics.get(key, float("nan"))) for g in group], 1)

    def err(g: Sequence[RunRecord]) -> float:
        return sum(float(x.metrics["mean_error"]) for x in g) / len(g)

    rows = [[m, pct(g, "mean_error"), pct(g, "mean_error_first_pass"), pct(g, "mean_error_last_pass"),
             pct(g, "source_acc_after"), mechanism_cell(g), mean_std([x.cost.wall_time_s for x in g], 1)]
            for m, g in sorted(by_method.items(), key=lambda kv: err(kv[1]))]
    return markdown_table(header, rows)


def pareto_png(runs: Sequence[RunRecord], path: Any, title: str, x: str = "general_retention",
               y: str = "acc") -> Any:
    """Scatter of two metrics per method (mean over seeds, sample-sd error bars); the methods on
    the Pareto front (no other method at least as good on both and better on one) are joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pts = []
    for m, g in _by_method(runs).items():
        xs = np.array([float(r.metrics.get(x, np.nan)) for r in g])
        ys = np.array([float(r.metrics.get(y, np.nan)) for r in g])
        if np.isnan(xs).all() or np.isnan(ys).all():
            continue
        pts.append((m, float(np.nanmean(xs)), float(np.nanmean(ys)), sample_sd(xs, single=0.0), sample_sd(ys, single=0.0)))
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m, px, py, sx, sy in pts:
        ax.errorbar(px, py, xerr=sx, yerr=sy, fmt="o", capsize=2)
        ax.annotate(m, (px, py), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = sorted((p for p in pts if not any(q[1] >= p[1] and q[2] >= p[2] and (q[1], q[2]) != (p[1], p[2])
                                              for q in pts)), key=lambda p: p[1])
    if len(front) > 1:
        ax.plot([p[1] for p in front], [p[2] for p in front], "--", color="grey", lw=1, label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xlabel(metric_label(x))
    ax.set_ylabel(metric_label(y))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

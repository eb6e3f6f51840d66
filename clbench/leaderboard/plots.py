"""Owns the inline SVG plots: ACC vs forgetting, mean-R heatmaps, general-capability retention."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from clbench.leaderboard.columns import metric_mean, metric_std
from clbench.leaderboard.record import LeaderboardEntry

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
            "#bcbd22", "#7f7f7f")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _color(entries: Sequence[LeaderboardEntry], entry: LeaderboardEntry) -> str:
    """One colour per method, the same in every plot (by rank)."""
    return _PALETTE[list(entries).index(entry) % len(_PALETTE)]


def _points(entries: Sequence[LeaderboardEntry], *keys: str) -> list[tuple[LeaderboardEntry, list[float]]]:
    """(entry, [mean of each key]) for the entries that have every key."""
    out = []
    for e in entries:
        vals = [metric_mean(e, k) for k in keys]
        if all(v is not None for v in vals):
            out.append((e, [float(v or 0.0) for v in vals]))
    return out


def _axis(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """A padded range with round tick values (at most 6 intervals)."""
    lo, hi = min(lo, 0.0), max(hi * 1.05, lo + 0.1)
    step = next((s for s in (0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0) if (hi - lo) / s <= 6), 10.0)
    a, b = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    return a, b, [a + k * step for k in range(round((b - a) / step) + 1)]


Box = tuple[float, float, float, float]


def _free(box: Box, taken: Sequence[Box], w: float, h: float) -> bool:
    x0, y0, x1, y1 = box
    inside = x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h
    return inside and all(x1 <= a or x0 >= c or y1 <= b or y0 >= d for a, b, c, d in taken)


def _place_labels(points: Sequence[tuple[float, float, str]], w: float, h: float) -> list[tuple[float, float, str]]:
    """(x, y, text-anchor) per label: right of its point, else left, nudged up/down off others."""
    taken: list[Box] = [(x - 6, y - 6, x + 6, y + 6) for x, y, _ in points]
    out = []
    for x, y, text in points:
        tw, spot = 6.8 * len(text) + 2, None
        for dy in (-6, 16, -18, 28, -30, 40, -42, 52, -54, 64):
            for side in (1, -1):
                x0 = x + 8 if side == 1 else x - 8 - tw
                box = (x0, y + dy - 11, x0 + tw, y + dy + 3)
                if _free(box, taken, w, h):
                    spot = (x + 8 * side, y + dy, "start" if side == 1 else "end", box)
                    break
            if spot:
                break
        lx, ly, anchor, box = spot or (x + 8, y - 6, "start", (x + 8, y - 17, x + 8 + tw, y - 3))
        taken.append(box)
        out.append((lx, ly, anchor))
    return out


def scatter_svg(entries: Sequence[LeaderboardEntry], w: int = 460, h: int = 340, x_key: str = "forgetting",
                svg_id: str = "plot-scatter") -> str:
    """ACC (y) vs ``x_key`` (x: forgetting, or general retention for the Pareto plot), one
    labelled point per method with ± std whiskers; for retention, the Pareto front (no method
    better on both) is joined by a line."""
    pts = [(e, x, y) for e, (x, y) in _points(entries, x_key, "acc")]
    x_label = "Forgetting (lower is better)" if x_key == "forgetting" else "General retention (higher is better)"
    ml, mr, mt, mb = 52, 16, 14, 44
    xs = [x for _, x, _ in pts] or [0.0]
    x0, x1, xticks = _axis(min(xs), max(xs))
    y0, y1 = 0.0, 1.0

    def px(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * (w - ml - mr)

    def py(y: float) -> float:
        return h - mb - (y - y0) / (y1 - y0) * (h - mt - mb)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="{svg_id}" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" role="img" aria-label="ACC vs {_e(x_key)}">',
           f'<rect x="{ml}" y="{mt}" width="{w - ml - mr}" height="{h - mt - mb}" fill="#fafafa" stroke="#ccc"/>']
    for t in xticks:
        out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{mt}" y2="{h - mb}" stroke="#eee"/>'
                   f'<text x="{px(t):.1f}" y="{h - mb + 15}" font-size="11" text-anchor="middle">{t:.2f}</text>')
    for k in range(6):
        t = y0 + (y1 - y0) * k / 5
        out.append(f'<line x1="{ml}" x2="{w - mr}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>'
                   f'<text x="{ml - 6}" y="{py(t) + 4:.1f}" font-size="11" text-anchor="end">{t:.1f}</text>')
    out.append(f'<text x="{(ml + w - mr) / 2}" y="{h - 8}" font-size="12" text-anchor="middle">'
               f"{_e(x_label)}</text>"
               f'<text transform="translate(14 {(mt + h - mb) / 2}) rotate(-90)" font-size="12" '
               f'text-anchor="middle">ACC (higher is better)</text>')
    for name, level, colour in _reference_levels(entries):
        out.append(f'<line class="ref" x1="{ml}" x2="{w - mr}" y1="{py(level):.1f}" y2="{py(level):.1f}" '
                   f'stroke="{colour}" stroke-dasharray="5 3"/><text x="{w - mr - 4}" y="{py(level) - 4:.1f}" '
                   f'font-size="10" fill="{colour}" text-anchor="end">{_e(name)} {level:.3f}</text>')
    if x_key != "forgetting" and len(pts) > 1:
        front = pareto_front([(x, y) for _, x, y in pts])
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in front)
        out.append(f'<polyline class="pareto" points="{path}" fill="none" stroke="#555" stroke-width="1.2" '
                   f'stroke-dasharray="2 2"/>')
    labels = _place_labels([(px(x), py(y), _short(e.method, 26)) for e, x, y in pts], w, h)
    for (e, x, y), (lx, ly, anchor) in zip(pts, labels, strict=True):
        sx, sy = metric_std(e, x_key), metric_std(e, "acc")
        c, cx, cy = _color(entries, e), px(x), py(y)
        lead = (f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{lx:.1f}" y2="{ly - 4:.1f}" stroke="{c}" '
                f'stroke-width="0.6"/>' if abs(ly - cy) > 12 else "")
        out.append(f'<g class="point" data-method="{_e(e.method)}"><title>{_e(e.method)}: ACC '
                   f"{y:.3f}, {_e(x_key)} {x:.3f}</title>{lead}"
                   f'<line x1="{px(x - sx):.1f}" x2="{px(x + sx):.1f}" y1="{cy:.1f}" y2="{cy:.1f}" stroke="{c}"/>'
                   f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{py(y - sy):.1f}" y2="{py(y + sy):.1f}" stroke="{c}"/>'
                   f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{c}"/>'
                   f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="12" fill="{c}" text-anchor="{anchor}">'
                   f'{_e(_short(e.method, 26))}</text></g>')
    out.append("</svg>")
    return "".join(out)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates (higher is better on both), by x."""
    return sorted(p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points))


def _reference_levels(entries: Sequence[LeaderboardEntry]) -> list[tuple[str, float, str]]:
    """(label, ACC, colour) of the lines every ACC plot draws: chance (uniform guessing on the
    stream) and the track's upper reference learner from its health check."""
    out = []
    chance = next((e.chance_acc for e in entries if e.chance_acc is not None), None)
    if chance is not None:
        out.append(("chance", chance, "#999"))
    health = next((e.health for e in entries if e.health is not None and e.health.upper_acc is not None), None)
    if health is not None and health.upper_acc is not None:
        out.append((f"upper bound ({health.upper})", health.upper_acc, "#2ca02c"))
    return out


def mean_matrix(entry: LeaderboardEntry) -> list[list[float]]:
    """Element-wise mean of R over the entry's seeds (T x T, or 1 x D for one online pass)."""
    Rs = [r.R for r in entry.runs]
    rows, cols = len(Rs[0]), len(Rs[0][0]) if Rs[0] else 0
    return [[sum(R[i][j] for R in Rs) / len(Rs) for j in range(cols)] for i in range(rows)]


def _heat(v: float) -> str:
    """White (0) to dark blue (1)."""
    t = min(max(v, 0.0), 1.0)
    r, g, b = (int(247 + (8 - 247) * t), int(251 + (48 - 251) * t), int(255 + (107 - 255) * t))
    return f"rgb({r},{g},{b})"


def heatmap_svg(entry: LeaderboardEntry, cell: int = 34) -> str:
    """Mean R as a heatmap: rows = trained through experience i, columns = tested on j."""
    R = mean_matrix(entry)
    T, D, ml, mt = len(R), len(R[0]) if R else 0, 40, 34
    cell = max(12, min(cell, 340 // max(T, D, 1)))
    w, h = ml + D * cell + 48, mt + max(T * cell, 60) + 8
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="heatmap" data-method="{_e(entry.method)}" '
           f'width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="R heatmap">',
           f'<text x="{ml}" y="12" font-size="11">tested on →</text>',
           f'<text transform="translate(11 {mt + T * cell / 2}) rotate(-90)" font-size="11" '
           f'text-anchor="middle">trained through →</text>']
    for j in range(D):
        out.append(f'<text x="{ml + j * cell + cell / 2}" y="{mt - 5}" font-size="10" text-anchor="middle">{j}</text>')
    for i, row in enumerate(R):
        out.append(f'<text x="{ml - 5}" y="{mt + i * cell + cell / 2 + 4}" font-size="10" text-anchor="end">{i}</text>')
        for j, v in enumerate(row):
            x, y = ml + j * cell, mt + i * cell
            out.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{_heat(v)}">'
                       f"<title>R[{i},{j}] = {v:.3f}</title></rect>")
            if cell >= 26:
                out.append(f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" font-size="10" text-anchor="middle" '
                           f'fill="{"#fff" if v > 0.55 else "#222"}">{v:.2f}</text>')
    out.append(_colour_bar(ml + D * cell + 12, mt, max(T * cell, 60)))
    out.append("</svg>")
    return "".join(out)


def _colour_bar(x: float, y: float, height: float, steps: int = 10) -> str:
    """A vertical colour bar for :func:`_heat` from 0 (bottom) to 1 (top), labelled at both ends."""
    step = height / steps
    rects = "".join(f'<rect x="{x:.1f}" y="{y + (steps - 1 - k) * step:.1f}" width="10" height="{step + 0.5:.1f}" '
                    f'fill="{_heat((k + 0.5) / steps)}"/>' for k in range(steps))
    return (f'<g class="colour-bar">{rects}<text x="{x + 13:.1f}" y="{y + 8:.1f}" font-size="9">1</text>'
            f'<text x="{x + 13:.1f}" y="{y + height:.1f}" font-size="9">0</text></g>')


def retention_svg(entries: Sequence[LeaderboardEntry], w: int = 460) -> str:
    """Horizontal bars of general-capability retention (1.0 = nothing lost), ± std."""
    rows = [(e, v) for e, (v,) in _points(entries, "general_retention")]
    ml, mr, bar, gap, mt = 150, 60, 20, 8, 10
    h = mt + len(rows) * (bar + gap) + 30
    top = max(1.2, *(v + metric_std(e, "general_retention") for e, v in rows))

    def px(v: float) -> float:
        return ml + v / top * (w - ml - mr)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="plot-retention" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" role="img" aria-label="general-capability retention">']
    for k, (e, v) in enumerate(rows):
        y, sd = mt + k * (bar + gap), metric_std(e, "general_retention")
        out.append(f'<g class="bar" data-method="{_e(e.method)}"><title>{_e(e.method)}: {v:.3f}</title>'
                   f'<text x="{ml - 6}" y="{y + bar / 2 + 4}" font-size="12" text-anchor="end">{_e(_short(e.method, 19))}</text>'
                   f'<rect x="{ml}" y="{y}" width="{max(px(v) - ml, 0):.1f}" height="{bar}" fill="{_color(entries, e)}"/>'
                   f'<line x1="{px(v - sd):.1f}" x2="{px(v + sd):.1f}" y1="{y + bar / 2}" y2="{y + bar / 2}" stroke="#222"/>'
                   f'<text x="{px(v + sd) + 4:.1f}" y="{y + bar / 2 + 4}" font-size="11">{v:.3f}</text></g>')
    base = mt + len(rows) * (bar + gap)
    out.append(f'<line x1="{px(1.0):.1f}" x2="{px(1.0):.1f}" y1="{mt - 4}" y2="{base}" stroke="#888" '
               f'stroke-dasharray="4 3"/><text x="{px(1.0):.1f}" y="{base + 16}" font-size="11" '
               f'text-anchor="middle">1.0 = no loss</text></svg>')
    return "".join(out)

"""Owns the leaderboard package's public names: entries, validation, the rendered boards.

An entry is ``leaderboards/<track>/<method>.json``: one method's score under a track's fixed
tuning protocol (``clbench.tuning.PROTOCOLS``), machine-written by ``clbench submit`` from a
finished protocol run. ``clbench leaderboard render`` turns the entries that validate into
``<track>/README.md`` (a Markdown table between markers) and ``<track>/index.html`` (a static,
self-contained page: sortable table, inline SVG plots, no network). Entries that fail validation
are listed with their reasons and never ranked.

Modules, each importing only those above it:

- :mod:`~clbench.leaderboard.record`: the typed entry (:class:`LeaderboardEntry`), its JSON and
  JSON Schema, canonical JSON and content hash
- :mod:`~clbench.leaderboard.entry`: building an entry from a protocol run, entry files
- :mod:`~clbench.leaderboard.provenance`: what the repository can confirm: registered method and
  grid, budget arithmetic, summaries recomputed from the per-seed values
- :mod:`~clbench.leaderboard.validate`: why an entry may not be ranked
- :mod:`~clbench.leaderboard.columns`: rank order and the columns the boards show
- :mod:`~clbench.leaderboard.markdown`: the table block in ``<track>/README.md``
- :mod:`~clbench.leaderboard.plots`: the inline SVG plots
- :mod:`~clbench.leaderboard.html`: the ``<track>/index.html`` page (CSS/JS in ``static/``)
- :mod:`~clbench.leaderboard.publish`: ``submit`` and ``render``, which write the files
- :mod:`~clbench.leaderboard.reproduce`: re-running one seed of an entry and comparing R
- :mod:`~clbench.leaderboard.reported`: published numbers beside ours (``REPORTED.md``)
- :mod:`~clbench.leaderboard.signing`: optional Ed25519 signatures of entries

``python -m clbench.leaderboard > docs/leaderboard-entry.schema.json`` writes the published
JSON Schema of an entry.
"""

from __future__ import annotations

from clbench.leaderboard.entry import (
    RUN_METRICS,
    entry_filename,
    entry_from_protocol,
    summarize_metrics,
    summarize_runs,
)
from clbench.leaderboard.html import render_html
from clbench.leaderboard.markdown import MARK_END, MARK_START
from clbench.leaderboard.plots import heatmap_svg, mean_matrix, retention_svg, scatter_svg
from clbench.leaderboard.publish import render, submit
from clbench.leaderboard.record import (
    COST_KEYS,
    ENTRY_KIND,
    ENTRY_SCHEMA_VERSION,
    SUMMARY_COST,
    LeaderboardEntry,
    canonical_json,
    content_hash,
    json_schema,
)
from clbench.leaderboard.validate import (
    NEUTRAL_KEYS,
    check_entry,
    registered_scenario_versions,
    validate_dir,
    validate_entry,
    validate_file,
)

__all__ = [
    "COST_KEYS", "ENTRY_KIND", "ENTRY_SCHEMA_VERSION", "MARK_END", "MARK_START", "NEUTRAL_KEYS",
    "RUN_METRICS", "SUMMARY_COST", "LeaderboardEntry", "canonical_json", "check_entry", "content_hash",
    "entry_filename", "entry_from_protocol", "heatmap_svg", "json_schema", "mean_matrix",
    "registered_scenario_versions", "render", "render_html", "retention_svg", "scatter_svg", "submit",
    "summarize_metrics", "summarize_runs", "validate_dir", "validate_entry", "validate_file",
]

"""make bench / make compare on a patched tiny suite: tables, skips, README embedding."""

from __future__ import annotations

from pathlib import Path

import pytest

from clbench import bench, tracks
from clbench.protocol import Method
from clbench.records import RunRecord
from clbench.registry import METHODS
from clbench.testing import register_tiny, stub_record

TRACK_YAML = """schema_version: 1
name: vision_cil
title: tiny stand-in
status: active
kind: labelled
evaluate: {scenario: tiny}
fixed: {model: mlp, model.hidden: 16, trainer.epochs: 1, trainer.progress: false, tracking.mlflow: false}
reference: {trainer.lr: 0.05}
rank_by: acc
shown: [forgetting, plasticity]
health: {lower: naive, upper: joint}
"""


@pytest.fixture
def tiny_suite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The default track (vision_cil) declared on the tiny stream, in a temporary leaderboards/."""
    register_tiny()
    root = tmp_path / "boards"
    (root / "vision_cil").mkdir(parents=True)
    (root / "vision_cil" / "track.yaml").write_text(TRACK_YAML)
    (root / "vision_cil" / "health.md").write_text("Health of `vision_cil`: passes\n")
    monkeypatch.setattr(tracks, "tracks_root", lambda: root)


def test_bench_table_mean_std_and_per_seed(tiny_suite: None) -> None:
    text = bench.run_bench({"method": "naive"}, seeds=(0, 1))
    assert "| naive | tiny | 2 |" in text and " ± " in text
    assert "Per seed:" in text and "| naive | tiny | 1 |" in text


def test_bench_skips_incompatible_pairs_with_reason(tiny_suite: None) -> None:
    class DomainOnly(Method):
        """Only domain-incremental."""

        scenario_types = frozenset({"domain_incremental"})

    with METHODS.override("naive", DomainOnly):
        text = bench.run_bench({"method": "naive"}, seeds=(0,))
    assert text.startswith("skipped naive on tiny: method")
    assert "does not support class_incremental" in text


def test_compare_embeds_generated_table_in_readme(tiny_suite: None, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(METHODS, "names", lambda: ["joint", "naive"])
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- compare-vision_cil:start -->\nold\n<!-- compare-vision_cil:end -->\nrest\n")
    text = bench.run_compare(seeds=(0,), readme=readme)
    doc = readme.read_text()
    assert "old" not in doc and doc.startswith("intro\n") and doc.endswith("rest\n")
    assert text in doc and "**tiny**" in text and text.startswith("Health of `vision_cil`: passes")
    assert "| method | ACC | Forgetting | Plasticity | mechanism | time (s) |" in text
    assert "| joint |" in text and "| naive |" in text and "do not edit by hand" in doc
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    with pytest.raises(ValueError, match="compare-vision:start"):
        bench.embed(plain, "compare-vision", "t")


def test_pareto_plot_marks_the_front(tmp_path: Path) -> None:
    from clbench.report import pareto_png

    def r(m: str, acc: float, ret: float) -> RunRecord:
        return stub_record(m, metrics={"acc": acc, "general_retention": ret})

    runs = [r("a", 0.8, 0.5), r("a", 0.82, 0.52), r("b", 0.6, 0.9), r("c", 0.5, 0.4)]
    out = pareto_png(runs, tmp_path / "p.png", "t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000


def test_compare_orders_methods_best_first_in_the_ranking_metrics_direction() -> None:
    from clbench.report import compare_tables

    cfg = {"trainer": {"optimizer": "sgd", "lr": 0.1, "epochs": 1, "batch_size": 8}}
    runs = [stub_record(m, metrics={"acc": a, "forgetting": f}, config=cfg)
            for m, a, f in (("low_forgetting", 0.5, 0.1), ("high_acc", 0.9, 0.4), ("no_value", float("nan"), 0.2))]

    def order(columns: list[str]) -> list[str]:
        rows = [line for line in compare_tables(runs, ["tiny"], [0], columns).splitlines()
                if line.startswith("| ") and not line.startswith("| method")]
        return [r.split(" | ")[0][2:] for r in rows]

    assert order(["acc", "forgetting"]) == ["high_acc", "low_forgetting", "no_value"]  # higher is better
    assert order(["forgetting", "acc"]) == ["low_forgetting", "no_value", "high_acc"]  # lower is better


def test_compare_lists_a_method_the_board_would_not_rank_as_not_run(tiny_suite: None,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A method that needs a pretrained model, on the tiny suite's untrained MLP: not run, with why."""
    class AdaptsPretrained(Method):
        """Tunes modules of a frozen pretrained model."""

        needs_pretrained = True

    monkeypatch.setattr(METHODS, "names", lambda: ["joint", "naive"])
    with METHODS.override("naive", AdaptsPretrained):
        text = bench.run_compare(seeds=(0,))
    assert "| joint |" in text and "| naive |" not in text
    assert "- not run (naive) on tiny: tunes parameter-efficient modules of a frozen pretrained model" in text

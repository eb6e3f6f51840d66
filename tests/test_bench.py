"""make bench / make compare on a patched tiny suite: tables, skips, README embedding."""

from __future__ import annotations

from pathlib import Path

import pytest

from clbench import bench
from clbench.protocol import Method
from clbench.registry import METHODS
from clbench.testing import register_tiny

TINY = {"model": "mlp", "model.hidden": 16, "trainer.epochs": 1, "trainer.progress": False,
        "tracking.mlflow": False}


@pytest.fixture
def tiny_suite(monkeypatch: pytest.MonkeyPatch) -> None:
    register_tiny()
    monkeypatch.setattr(bench, "SUITE", {"tiny": TINY})


def test_bench_table_mean_std_and_per_seed(tiny_suite: None) -> None:
    text = bench.run_bench({"method": "naive"}, seeds=(0, 1))
    assert "| naive | tiny | 2 |" in text and " ± " in text
    assert "Per seed:" in text and "| naive | tiny | 1 |" in text


def test_bench_skips_incompatible_pairs_with_reason(tiny_suite: None, monkeypatch: pytest.MonkeyPatch) -> None:
    class DomainOnly(Method):
        """Only domain-incremental."""

        scenario_types = frozenset({"domain_incremental"})

    monkeypatch.setitem(METHODS._items, "naive", DomainOnly)
    text = bench.run_bench({"method": "naive"}, seeds=(0,))
    assert text.startswith("skipped naive on tiny: method")
    assert "does not support class_incremental" in text


def test_compare_embeds_generated_table_in_readme(tiny_suite: None, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(METHODS, "names", lambda: ["joint", "naive"])
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- compare-vision:start -->\nold\n<!-- compare-vision:end -->\nrest\n")
    text = bench.run_compare(seeds=(0,), readme=readme)
    doc = readme.read_text()
    assert "old" not in doc and doc.startswith("intro\n") and doc.endswith("rest\n")
    assert text in doc and "**tiny**" in text
    assert "| joint |" in text and "| naive |" in text and "do not edit by hand" in doc
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    with pytest.raises(ValueError, match="compare-vision:start"):
        bench.embed(plain, "compare-vision", "t")

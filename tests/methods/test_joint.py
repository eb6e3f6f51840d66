"""Joint training (the upper bound): union of the experiences so far, per-sample task ids."""

from __future__ import annotations

from pathlib import Path

from clbench.runner import run
from clbench.testing import tiny_config


def test_task_incremental_joint_masks_each_sample_by_its_own_task(tmp_path: Path) -> None:
    # before per-sample task ids, old tasks' samples were masked to the newest task's classes:
    # their true class had logit -inf and the loss was infinite at the second experience
    res = run(tiny_config(tmp_path, "joint", **{"scenario.scenario_type": "task_incremental",
                                                 "trainer.epochs": 3}))
    R = res.R
    assert len(R) == 3 and min(R[-1]) > 0.9  # every task solved after joint training on all three
    assert res.per_experience[2].train_samples == 3 * res.per_experience[0].train_samples

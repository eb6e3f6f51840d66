"""Foundation setting: cached pretraining, general capability, source data, method reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from clbench.errors import IncompatibleError
from clbench.protocol import Method
from clbench.registry import METHODS
from clbench.runner import run
from clbench.streams import Split
from clbench.testing import tiny_config, tiny_vit_config


def test_foundation_is_pretrained_once_then_loaded_from_cache(tmp_path: Path) -> None:
    first = run(tiny_vit_config(tmp_path / "a", "naive", **{"foundation.cache_dir": str(tmp_path / "c")}))
    second = run(tiny_vit_config(tmp_path / "b", "naive", **{"foundation.cache_dir": str(tmp_path / "c")}))
    assert first.foundation["cached"] is False and second.foundation["cached"] is True
    assert first.foundation["key"] == second.foundation["key"]
    assert first.model.init_hash == second.model.init_hash
    assert first.R == second.R
    other = run(tiny_vit_config(tmp_path / "d", "naive", **{"foundation.cache_dir": str(tmp_path / "c"),
                                                             "foundation.seed": 1}))
    assert other.foundation["key"] != first.foundation["key"]
    # the pretrained foundation is better than chance on the source test split
    assert first.general.before["tiny_source/acc"] > 1 / 6 + 0.1


def test_general_capability_before_and_after_each_experience(tmp_path: Path) -> None:
    res = run(tiny_vit_config(tmp_path, "naive", **{"tracking.mlflow": True}))
    before = res.general.before["tiny_source/acc"]
    after = [g["tiny_source/acc"] for g in res.general.after]
    assert len(after) == 3 and before > 0
    assert res.metrics["general_retention"] == pytest.approx(after[-1] / before)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = res.mlflow.run_id
    hist = client.get_metric_history(run_id, "general/tiny_source/acc")
    assert [m.step for m in hist] == [0, 1, 2] and [m.value for m in hist] == pytest.approx(after)
    ret = client.get_metric_history(run_id, "general/tiny_source/acc_retention")
    assert ret[-1].value == pytest.approx(after[-1] / before)
    exp_id = client.get_run(run_id).info.experiment_id
    found = client.search_runs([exp_id], "metrics.`general/tiny_source/acc_retention` > -1")
    assert [r.info.run_id for r in found] == [run_id]


def test_source_data_only_for_methods_that_declare_it(tmp_path: Path) -> None:
    seen: list[Split] = []

    class NeedsSource(Method):
        """Records the source data it receives."""

        needs_source_data = True

        def on_source_data(self, model: torch.nn.Module, source: Split) -> None:
            seen.append(source)

        def experience_report(self) -> dict[str, Any]:
            return {"frozen_fraction": 0.5, "chosen": ["a", "b"]}

    with METHODS.override("naive", NeedsSource):
        res = run(tiny_vit_config(tmp_path, "naive", **{"tracking.mlflow": True}))
        assert len(seen) == 1 and len(seen[0]) == 6 * 24  # the source train split, once
        assert res.per_experience[0].method == {"frozen_fraction": 0.5, "chosen": ["a", "b"]}
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        hist = client.get_metric_history(res.mlflow.run_id, "method_frozen_fraction")
        assert [m.step for m in hist] == [0, 1, 2]
        with pytest.raises(IncompatibleError, match="needs source data"):
            run(tiny_config(tmp_path / "nosrc", "naive"))


def test_augmented_pretraining_is_seeded_per_image_and_changes_the_recipe(tmp_path: Path) -> None:
    from clbench.foundation import random_affine

    x = torch.rand(6, 1, 8, 8)
    a = random_affine(x, 10.0, torch.Generator().manual_seed(0))
    b = random_affine(x, 10.0, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    assert not torch.allclose(a[0] - x[0], a[1] - x[1])  # each image gets its own transform
    plain = run(tiny_vit_config(tmp_path / "p", "naive"))
    aug = run(tiny_vit_config(tmp_path / "q", "naive", **{"foundation.augment_degrees": 10.0,
                                                            "foundation.cache_dir": str(tmp_path / "cache")}))
    assert aug.foundation["key"] != plain.foundation["key"]
    assert aug.foundation["recipe"]["augment_degrees"] == 10.0


def test_vit_conv_stem_option_keeps_the_default_model_unchanged() -> None:
    from clbench.streams import StreamInfo
    from clbench.vit import ViT, ViTConfig

    info = StreamInfo(name="x", scenario_type="class_incremental", n_experiences=1, num_classes=10,
                      input_shape=(1, 28, 28), classes_per_experience=(tuple(range(10)),))
    plain, stem = ViT(info), ViT(info, ViTConfig(stem=8))
    assert not any(k.startswith("stem.") for k in plain.state_dict())
    assert {k for k in stem.state_dict() if k.startswith("stem.")} == {"stem.0.weight", "stem.0.bias",
                                                                       "stem.2.weight", "stem.2.bias"}
    assert stem.patch_embed.in_channels == 8 and stem(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_foundation_does_not_depend_on_the_seed_of_the_run_that_pretrains_it(tmp_path: Path) -> None:
    a = run(tiny_vit_config(tmp_path / "a", "naive", seed=0))
    b = run(tiny_vit_config(tmp_path / "b", "naive", seed=3))  # its own cache (tmp/b/cache)
    assert a.foundation["key"] == b.foundation["key"] and a.foundation["cached"] is False
    assert b.foundation["cached"] is False and a.model.init_hash == b.model.init_hash

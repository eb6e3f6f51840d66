"""Owns language-model general capability: lm-eval on the in-memory model, plus offline tasks.

``lm_eval_scores`` runs lm-eval's ``simple_evaluate`` on a model object already in memory
(``HFLM(pretrained=model, tokenizer=tokenizer)``), so scores can be taken before training and
after every experience without saving checkpoints. Hub tasks (arc_easy, hellaswag, mmlu...) work
when their datasets can be downloaded; offline, the bundled local tasks below are written as
lm-eval YAML + JSONL into a cache folder and loaded with ``TaskManager(include_path=...)``.
With ``eval.backend=vllm`` the same tasks run through lm-eval's vLLM model on a saved copy of the
model (:func:`clbench.vllm_backend.lm_eval_scores_vllm`), sharing :func:`task_manager` and
:func:`scores_from_results` with :func:`lm_eval_scores`.

Bundled offline task (built from real text that every Python installation carries):
- ``clbench_pydoc_cloze``: LAMBADA-style last-word prediction as 4-way multiple choice over
  sentences of CPython's own documentation (``pydoc_data.topics``, PSF licence). The distractors
  are the last words of other sentences (seeded). Metric: ``acc`` (log-likelihood ranking).
  Easy: SmolLM2-135M-Instruct scores ~0.94, so it shows little that can be lost.

Local tasks built from the shared benchmark data (:mod:`clbench.lm_tasks`; written only when
named, and only when ``$CLBENCH_DATA_DIR`` or ``<repo>/../shared/data`` holds the O-LoRA copy):
``clbench_boolq``, ``clbench_rte``, ``clbench_cb``, ``clbench_copa``, ``clbench_wic``,
``clbench_sst2``: zero-shot multiple choice with lm-eval's own prompts, on the upstream
validation split (``test.json``). Naming one without the data raises one ``DataUnavailableError``
naming the task, the expected path and the alternatives (the bundled cloze; the lm-eval hub tasks
``boolq``, ``rte``, ``cb``, ``copa``, ``wic``, ``sst2`` keep their real lm-eval path when online).

:func:`chance_level` gives each task's chance accuracy (1 / number of choices).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from clbench.errors import ConfigError
from clbench.lm_tasks import DATA_TASKS, build_docs, missing_data_error, task_yaml

CLOZE_TASK = "clbench_pydoc_cloze"
DATA_TASK_NAMES = tuple(DATA_TASKS)
LOCAL_TASKS = (CLOZE_TASK, *DATA_TASK_NAMES)
#: Chance accuracy (1 / choices) of lm-eval hub multiple-choice tasks often used for general
#: capability (ARC: most questions have 4 options, a few 3 or 5).
HUB_CHANCE: dict[str, float] = {
    "boolq": 0.5, "rte": 0.5, "sglue_rte": 0.5, "cb": 1 / 3, "copa": 0.5, "wic": 0.5, "sst2": 0.5,
    "piqa": 0.5, "winogrande": 0.5, "arc_easy": 0.25, "arc_challenge": 0.25, "hellaswag": 0.25,
    "openbookqa": 0.25, "mmlu": 0.25, "sciq": 0.25,
}
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


def chance_level(task: str) -> float:
    """Accuracy of guessing uniformly among a task's choices (1 / number of choices).

    ``clbench_pydoc_cloze``: 0.25 (4 choices, the right one at a uniformly random position). A
    model that only knows word frequencies can beat it somewhat (the distractors are last words
    of other sentences, so all four are plausible sentence ends but not equally frequent).
    The data tasks' first documents are label-balanced, so there it is also the majority-class
    rate (CB: 5 of 56 documents are "Neither", so beyond the first 15 it is not).

    Raises:
        ConfigError: ``task`` is neither a local task nor in :data:`HUB_CHANCE`.
    """
    if task == CLOZE_TASK:
        return 0.25
    if task in DATA_TASKS:
        return 1.0 / DATA_TASKS[task].n_choices
    if task in HUB_CHANCE:
        return HUB_CHANCE[task]
    raise ConfigError("eval.lm_eval_tasks", task, [*LOCAL_TASKS, *HUB_CHANCE])


def suite_chance_level(tasks: Sequence[str]) -> float:
    """Mean chance level of ``tasks`` (compare with the mean of their ``<task>/acc`` scores)."""
    return sum(chance_level(t) for t in tasks) / len(tasks)


def _write_once(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically unless it already holds exactly that."""
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def local_task_dir(cache_dir: Path | None = None, tasks: Sequence[str] = (),
                   data_dir: Path | str | None = None) -> Path:
    """Write the local tasks (YAML + JSONL) into ``<cache>/lm_eval_tasks`` and return it.

    The bundled cloze is always written; data tasks (:data:`DATA_TASK_NAMES`) only when named in
    ``tasks``, built from ``data_dir`` (default ``$CLBENCH_DATA_DIR`` or ``<repo>/../shared/data``).
    A data file is named by its content hash and written once; ``<task>.info.json`` beside it
    records the split, document count, label counts and dropped overlaps.

    Raises:
        DataUnavailableError: a named data task's files are missing (one message naming the
            task, the expected path and the alternatives), corrupt or malformed.
    """
    from clbench.hf import default_cache_dir

    root = (cache_dir or default_cache_dir()) / "lm_eval_tasks"
    wanted = [t for t in dict.fromkeys(tasks) if t in DATA_TASKS]
    for name in wanted:  # check every one first: no partial writes when data is missing
        error = missing_data_error(name, data_dir)
        if error is not None:
            raise error
    docs = pydoc_cloze_docs()
    blob = "\n".join(json.dumps(d) for d in docs) + "\n"
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    data = root / f"pydoc_cloze-{digest}.jsonl"
    if not data.is_file():
        _write_once(data, blob)
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
    _write_once(root / "clbench_pydoc_cloze.yaml", yaml_text)
    for name in wanted:
        task_docs, info = build_docs(name, data_dir)
        blob = "\n".join(json.dumps(d) for d in task_docs) + "\n"
        data = root / f"{name.removeprefix('clbench_')}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.jsonl"
        if not data.is_file():
            _write_once(data, blob)
        _write_once(root / f"{name}.info.json", json.dumps(info, indent=1) + "\n")
        _write_once(root / f"{name}.yaml", task_yaml(name, data))
    return root


def local_task_info(task: str, cache_dir: Path | None = None) -> dict[str, Any]:
    """The record written beside data task ``task`` (split, n_docs, labels, dropped overlaps)."""
    from clbench.hf import default_cache_dir

    path = (cache_dir or default_cache_dir()) / "lm_eval_tasks" / f"{task}.info.json"
    return dict(json.loads(path.read_text()))


def prefix_token_id(tokenizer: Any) -> int | None:
    """The token lm-eval puts before a first word to score it, where the tokenizer has neither
    BOS nor EOS (its CLS, else its pad token); None otherwise (lm-eval's own choice)."""
    if tokenizer.bos_token_id is None and tokenizer.eos_token_id is None:
        return tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.pad_token_id
    return None


def task_manager(tasks: Sequence[str], cache_dir: Path | None = None,
                 data_dir: Path | str | None = None) -> Any:
    """lm-eval's ``TaskManager`` with the local tasks registered (:func:`local_task_dir`).

    Raises:
        DataUnavailableError: a named data task's files are missing (before any model work).
    """
    from lm_eval.tasks import TaskManager

    task_dir = local_task_dir(cache_dir, tasks, data_dir)
    # indexing lm-eval's own ~10k task YAMLs costs tens of seconds per call: skip it when every
    # task named is local
    return TaskManager(include_path=str(task_dir), include_defaults=not set(tasks) <= set(LOCAL_TASKS))


def evaluate(lm: Any, tasks: Sequence[str], limit: int | None, manager: Any) -> dict[str, float]:
    """lm-eval's ``simple_evaluate`` of the lm-eval model ``lm`` on ``tasks``, as
    :func:`scores_from_results` gives its results."""
    import lm_eval

    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=manager,
                                  log_samples=False, bootstrap_iters=0, verbosity="ERROR")
    return scores_from_results(out)


def scores_from_results(out: Mapping[str, Any] | None) -> dict[str, float]:
    """``{"<task>/<metric>": value}`` from lm-eval's results: numeric metrics only, the filter
    name after the comma dropped, no ``*_stderr``, ``alias`` or ``sample_len``."""
    scores: dict[str, float] = {}
    for task, metrics in (out or {}).get("results", {}).items():
        for key, value in metrics.items():
            name = key.split(",")[0]
            if isinstance(value, int | float) and not name.endswith("_stderr") and name not in ("alias", "sample_len"):
                scores[f"{task}/{name}"] = float(value)
    return scores


def lm_eval_scores(model: nn.Module, tokenizer: Any, tasks: Sequence[str], limit: int | None = None,
                   batch_size: int = 8, cache_dir: Path | None = None,
                   data_dir: Path | str | None = None) -> dict[str, float]:
    """lm-eval scores of the in-memory causal LM as ``{"<task>/<metric>": value}``.

    Args:
        tasks: lm-eval task names; bundled offline ones (:data:`LOCAL_TASKS`) are registered
            automatically (data tasks from ``data_dir``), hub tasks need their datasets to be
            downloadable.
        limit: evaluate only the first ``limit`` documents of each task (cost control).

    Raises:
        DataUnavailableError: a named data task's files are missing (before any model work).
    """
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(tasks, cache_dir, data_dir)
    was_training = model.training  # HFLM switches the model to eval mode
    device = str(next(model.parameters()).device)
    # lm-eval needs a token to score a first word: prefix_token_id gives one when there is no BOS/EOS
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device,
              prefix_token_id=prefix_token_id(tokenizer))
    model.eval()
    try:
        return evaluate(lm, tasks, limit, manager)
    finally:
        model.train(was_training)

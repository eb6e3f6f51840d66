"""Owns the data-backed local lm-eval tasks: zero-shot multiple choice from the O-LoRA benchmark copy.

Each task is written as lm-eval YAML + JSONL (by :func:`clbench.general.local_task_dir`) from the
O-LoRA ``CL_Benchmark`` copy in the shared data directory (``$CLBENCH_DATA_DIR`` or
``<repo>/../shared/data``, as ``scenarios/text_data.py`` resolves it; ``../shared/data/
o-lora-cl-benchmark/README.md`` gives its source, commit and licence). Prompts and answer
choices mirror lm-eval's own hub tasks (``super_glue/{boolq,cb,copa,wic}``, ``glue/{rte,sst2}``
default.yaml); the model is scored by log-likelihood over the choices (metric ``acc``).

Documents:
- split: the task's ``test.json`` (upstream: the GLUE / SuperGLUE validation split, the one
  lm-eval's hub tasks score; O-LoRA's ``dev.json`` is the same file). A CL stream trains only on
  ``train.json`` (its validation is carved from train), so no document here is a training example
  of the stream. Stricter still, a test document is dropped when one of its input fields (BoolQ
  passage, RTE/CB premise or hypothesis, WiC sentence, COPA premise, SST-2 sentence) also occurs
  in the same task's ``train.json`` (BoolQ and RTE share passages and premises across their
  upstream splits); :func:`build_docs` reports how many.
- order: label-interleaved (round-robin over the labels; within a label ranked by
  ``sha256(seed, label, text)``), so the first ``limit`` documents that lm-eval scores are
  label-balanced as far as the counts allow: chance (1 / #choices) is then also the rate of
  always answering the majority label. In file order BoolQ's first 100 are 70 % "yes".

Caveat: these tasks are also tasks of the Long Sequence benchmark (protocol section 2). On a track
whose stream trains on e.g. BoolQA, ``clbench_boolq`` measures the trained task (in-domain gain),
not retained general capability: pick general tasks outside the stream.

Differences from lm-eval's hub prompts, forced by O-LoRA's format: WiC names the word's lemma (the
copy keeps no character spans, lm-eval quotes the surface form from sentence 1); COPA joins
premise and choice with one space (lm-eval's ``utils.py`` prefixes a space that its default
target delimiter doubles).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clbench.errors import DataUnavailableError

OLORA_FOLDER = "o-lora-cl-benchmark"
OLORA_SOURCE = "github.com/cmnfriend/O-LoRA@07117e1fc4a5f5ad9308a815a42cee8f46502dc8"
ORDER_SEED = 0
SPLIT = "test.json"

Fields = dict[str, str]


def shared_data_dir() -> Path:
    """``$CLBENCH_DATA_DIR`` or ``<repo>/../shared/data`` (as ``scenarios.mnist.shared_data_dir``)."""
    env = os.environ.get("CLBENCH_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _pair(key1: str, key2: str, tag1: str, tag2: str) -> Callable[[str], Fields]:
    pattern = re.compile(rf"^{tag1}: (.*?)\n{tag2}: (.*)$", re.S)

    def parse(sentence: str) -> Fields:
        m = pattern.match(sentence)
        if m is None:
            raise ValueError(f"expected '{tag1}: ...\\n{tag2}: ...'")
        return {key1: m.group(1).strip(), key2: m.group(2).strip()}

    return parse


def _wic(sentence: str) -> Fields:
    lines = sentence.split("\n")
    if len(lines) != 3 or not lines[0].startswith("word: "):
        raise ValueError("expected 'word: <w>\\n<sentence 1>\\n<sentence 2>'")
    return {"word": lines[0][len("word: "):].strip(), "sentence1": lines[1].strip(),
            "sentence2": lines[2].strip()}


_COPA = re.compile(r'^Which sentence is the (cause|effect) of "(.*)"\? Choose one between A and B\.'
                   r"\nA: (.*)\nB: (.*)$", re.S)


def _copa(sentence: str) -> Fields:
    m = _COPA.match(sentence)
    if m is None:
        raise ValueError('expected \'Which sentence is the cause|effect of "..."? ...\\nA: ...\\nB: ...\'')
    question, premise, a, b = (g.strip() for g in m.groups())
    connector = {"cause": "because", "effect": "therefore"}[question]

    def lower_first(s: str) -> str:
        return s[:1].lower() + s[1:]

    # lm-eval super_glue/copa/utils.py: premise without its final period + connector; choices
    # with a lower-cased first letter
    return {"premise": premise, "context": f"{premise[:-1]} {connector}",
            "choice1": lower_first(a), "choice2": lower_first(b)}


def _sst2(sentence: str) -> Fields:
    if not sentence.startswith("Text: "):
        raise ValueError("expected 'Text: <sentence>'")
    return {"sentence": sentence[len("Text: "):].strip()}


@dataclass(frozen=True)
class DataTask:
    """One local task: where its data lies, how a record is parsed and how lm-eval prompts it."""

    name: str
    folder: str  # under CL_Benchmark/
    hub: str  # the lm-eval hub task whose prompt it mirrors
    parse: Callable[[str], Fields]
    labels: Mapping[str, int]  # O-LoRA label string -> choice index
    doc_to_text: str  # jinja over the parsed fields
    choices: tuple[str, ...] | None  # fixed choices; None: per document (COPA's choice1/choice2)
    overlap_fields: tuple[str, ...]  # a test doc sharing one of these with train is dropped

    @property
    def n_choices(self) -> int:
        return len(self.choices) if self.choices is not None else 2


DATA_TASKS: dict[str, DataTask] = {t.name: t for t in (
    DataTask("clbench_boolq", "BoolQA/BoolQA", "boolq", _pair("question", "passage", "question", "passage"),
             {"False": 0, "True": 1}, "{{passage}}\nQuestion: {{question}}?\nAnswer:", ("no", "yes"),
             ("passage",)),
    DataTask("clbench_rte", "NLI/RTE", "rte", _pair("premise", "hypothesis", "sentence 1", "sentence 2"),
             {"entailment": 0, "contradiction": 1},
             "{{premise}}\nQuestion: {{hypothesis}} True or False?\nAnswer:", ("True", "False"),
             ("premise", "hypothesis")),
    DataTask("clbench_cb", "NLI/CB", "cb", _pair("premise", "hypothesis", "sentence 1", "sentence 2"),
             {"entailment": 0, "contradiction": 1, "neutral": 2},
             "{{premise}}\nQuestion: {{hypothesis}}. True, False, or Neither?\nAnswer:",
             ("True", "False", "Neither"), ("premise", "hypothesis")),
    DataTask("clbench_copa", "COPA/COPA", "copa", _copa, {"A": 0, "B": 1}, "{{context}}", None,
             ("premise",)),
    DataTask("clbench_wic", "WiC/WiC", "wic", _wic, {"False": 0, "True": 1},
             "Sentence 1: {{sentence1}}\nSentence 2: {{sentence2}}\nQuestion: Is the word '{{word}}' "
             "used in the same way in the two sentences above?\nAnswer:", ("no", "yes"),
             ("sentence1", "sentence2")),
    DataTask("clbench_sst2", "SC/SST-2", "sst2", _sst2, {"Bad": 0, "Good": 1},
             "{{sentence}}\nQuestion: Is this sentence positive or negative?\nAnswer:",
             ("negative", "positive"), ("sentence",)),
)}


def olora_base(data_dir: Path | str | None = None) -> Path:
    """The folder holding ``CL_Benchmark/``: ``data_dir`` itself or ``data_dir/o-lora-cl-benchmark``.

    Returns the expected ``<data_dir>/o-lora-cl-benchmark`` when neither holds it.
    """
    top = Path(data_dir) if data_dir is not None else shared_data_dir()
    for cand in (top, top / OLORA_FOLDER):
        if (cand / "CL_Benchmark").is_dir():
            return cand
    return top / OLORA_FOLDER


def task_files(name: str, data_dir: Path | str | None = None) -> tuple[Path, Path]:
    """(test file, train file) that task ``name`` is built from."""
    folder = olora_base(data_dir) / "CL_Benchmark" / DATA_TASKS[name].folder
    return folder / SPLIT, folder / "train.json"


def missing_data_error(name: str, data_dir: Path | str | None = None) -> DataUnavailableError | None:
    """The error to raise when task ``name``'s files are absent, else ``None``."""
    test, train = task_files(name, data_dir)
    absent = [p for p in (test, train) if not p.is_file()]
    if not absent:
        return None
    hub = DATA_TASKS[name].hub
    return DataUnavailableError(
        f"lm-eval task {name!r} is built from the O-LoRA CL_Benchmark copy, but "
        f"{' and '.join(str(p) for p in absent)} {'is' if len(absent) == 1 else 'are'} missing "
        f"(it reads {test} and, to drop overlaps, {train}). Set CLBENCH_DATA_DIR to the folder "
        f"holding {OLORA_FOLDER}/ (see ../shared/data/README.md), or use instead the bundled "
        f"offline task 'clbench_pydoc_cloze' or the lm-eval hub task {hub!r} (needs the hub or a "
        "local Hugging Face datasets cache)")


def _verified(path: Path, sums: Mapping[str, str], base: Path) -> bytes:
    data = path.read_bytes()
    want = sums.get(path.relative_to(base).as_posix())
    got = hashlib.sha256(data).hexdigest()
    if want is not None and want != got:
        raise DataUnavailableError(f"checksum mismatch for {path}: SHA256SUMS lists {want}, the file "
                                   f"has {got}; copy it again from {OLORA_SOURCE}")
    return data


def _records(path: Path, sums: Mapping[str, str], base: Path) -> list[dict[str, Any]]:
    rows = json.loads(_verified(path, sums, base))
    if not isinstance(rows, list) or not all(
            isinstance(r, dict) and isinstance(r.get("sentence"), str) and isinstance(r.get("label"), str)
            for r in rows):
        raise DataUnavailableError(f"{path}: expected a JSON array of {{'sentence': str, 'label': str}}")
    return rows


def _checksums(base: Path) -> dict[str, str]:
    sums = base / "SHA256SUMS"
    out: dict[str, str] = {}
    if sums.is_file():
        for line in sums.read_text(encoding="utf-8").splitlines():
            if line.strip():
                digest, rel = line.split(None, 1)
                out[rel.strip().lstrip("*").removeprefix("./")] = digest.lower()
    return out


def build_docs(name: str, data_dir: Path | str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Task ``name``'s lm-eval documents (label-interleaved) and a record of how they were made.

    Raises:
        DataUnavailableError: the files are missing, a checksum differs or a record is malformed.
    """
    error = missing_data_error(name, data_dir)
    if error is not None:
        raise error
    task = DATA_TASKS[name]
    base = olora_base(data_dir)
    sums = _checksums(base)
    test_path, train_path = task_files(name, data_dir)

    def parsed(path: Path) -> list[tuple[str, str, Fields]]:
        out = []
        for i, r in enumerate(_records(path, sums, base)):
            try:
                out.append((r["sentence"], r["label"], task.parse(r["sentence"])))
            except ValueError as e:
                raise DataUnavailableError(f"{path}[{i}]: {e}; got {r['sentence'][:80]!r}") from None
        return out

    train = parsed(train_path)
    seen_text = {s for s, _, _ in train}
    seen_field = {f[k] for _, _, f in train for k in task.overlap_fields}
    by_label: dict[int, list[tuple[bytes, dict[str, Any]]]] = {i: [] for i in sorted(set(task.labels.values()))}
    dropped = {"same_text_in_train": 0, "shared_field_in_train": 0, "label_not_in_task": 0}
    for sentence, label, fields in parsed(test_path):
        if sentence in seen_text:
            dropped["same_text_in_train"] += 1
        elif any(fields[k] in seen_field for k in task.overlap_fields):
            dropped["shared_field_in_train"] += 1
        elif label not in task.labels:
            dropped["label_not_in_task"] += 1
        else:
            rank = hashlib.sha256(f"{ORDER_SEED}\x00{label}\x00{sentence}".encode()).digest()
            by_label[task.labels[label]].append((rank, {**fields, "label": task.labels[label]}))
    queues = [[d for _, d in sorted(v, key=lambda x: x[0])] for v in by_label.values()]
    docs: list[dict[str, Any]] = []
    for i in range(max((len(q) for q in queues), default=0)):
        docs += [q[i] for q in queues if i < len(q)]
    info = {"task": name, "mirrors": f"lm-eval {task.hub}", "source": OLORA_SOURCE,
            "split": f"CL_Benchmark/{task.folder}/{SPLIT}", "n_docs": len(docs),
            "labels": {lab: sum(d["label"] == i for d in docs) for lab, i in task.labels.items()},
            "dropped": dropped, "order": f"label-interleaved, sha256 rank seed {ORDER_SEED}",
            "chance": 1.0 / task.n_choices}
    return docs, info


def task_yaml(name: str, data_file: Path) -> str:
    """The lm-eval YAML of task ``name`` reading ``data_file`` (JSONL)."""
    task = DATA_TASKS[name]
    choice = json.dumps(list(task.choices)) if task.choices is not None else '"{{[choice1, choice2]}}"'
    return (
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data_file))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        f"doc_to_text: {json.dumps(task.doc_to_text)}\n"
        f"doc_to_choice: {choice}\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n"
    )

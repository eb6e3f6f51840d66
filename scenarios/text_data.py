"""Text CL benchmark loaders as plain Python data: LFPT5, O-LoRA CL_Benchmark, TRACE, hub.

This module owns reading the language-model CL benchmarks from disk into ``TextTask`` records
(text + label strings per split); tokenizing and building clbench Streams happen elsewhere.

Provenance (see each data folder's README.md; files are read in place and never copied):
- LFPT5 few-shot text classification (Qin & Joty, ICLR 2022), github.com/qcwthu/
  Lifelong-Fewshot-Language-Learning @ cf7d17c, ``Classification/textclassificationdata/
  <task>_csv/<seed>/{train,valid,test}.txt``, TSV ``text<TAB>label``; 16 examples per class in
  train and valid, 100 in test; seed folders ``0_42``, ``1_142``, ``2_242``. Label strings are
  kept as shipped, including dbpedia's ``thlete`` (sic, "athlete") and yahoo's
  ``entertainment and Music``.
- O-LoRA ``CL_Benchmark`` (Wang et al., EMNLP 2023 Findings), github.com/cmnfriend/O-LoRA @ 07117e1,
  ``CL_Benchmark/<family>/<task>/{train,dev,test}.json`` (arrays of ``{"sentence","label"}``) +
  ``labels.json`` + ``configs/instruction_config.json``. ``dev.json`` is byte-identical to
  ``test.json`` there, so it is never read: validation is carved from train
  (``carve_validation``). Quirk kept as shipped: MNLI test holds 131 examples labelled ``"-"``
  (not in ``labels.json``), counted in ``provenance["off_label"]``.
- TRACE (Wang et al., arXiv 2310.06762), github.com/BeyonderXX/TRACE @ 4fc6233,
  ``LLM-CL_Benchmark/<Task>/{train,eval,test}.json`` (arrays of ``{"prompt","answer"}``);
  ``TextExample.text`` is the prompt, ``label`` the answer.
- ``from_hub``: any Hugging Face dataset with a text and a label column, through ``datasets``.

Every file read is checked against the ``SHA256SUMS`` of its dataset folder when one is present
(``<hash>  ./relative/path`` lines); a mismatch raises ``DataUnavailableError``.
Task orders (``STANDARD_ORDERS``, ``LONG_ORDERS``) follow O-LoRA ``scripts/order_{1,2,3}.sh`` and
MIGU ``scripts/full_tuning/order_{4,5,6}.sh`` (specs/protocol.md section 2).

VERSION history: 1 = initial (LFPT5, O-LoRA, TRACE layouts; hash-ranked stratified validation).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clbench.errors import ConfigError, DataUnavailableError
from scenarios._common import DATA_SEED
from scenarios.mnist import shared_data_dir

VERSION = "1"
PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class TextExample:
    """One example: input text (TRACE: the full prompt) and its target string (TRACE: answer)."""

    text: str
    label: str


@dataclass(frozen=True)
class TextTask:
    """One task of a text CL benchmark, with its three splits as plain data.

    Attributes:
        name: lower_snake task name used in the orders (``dbpedia``, ``sst2``, ``fomc``).
        family: the O-LoRA task family (``TC``, ``SC``, ``NLI``...), ``TRACE`` or ``hub``.
        labels: the label strings in the dataset's own order; ``()`` for open-ended answers.
        instruction: the family instruction that ``olora_prompt`` puts first (may be empty).
        train: training examples (validation examples removed when carved from train).
        val: validation examples; never a copy of test.
        test: test examples.
        provenance: source, upstream repository/commit, files read with their sha256,
            where validation came from, and data quirks (``off_label`` counts).
    """

    name: str
    family: str
    labels: tuple[str, ...]
    instruction: str
    train: tuple[TextExample, ...] = field(repr=False)
    val: tuple[TextExample, ...] = field(repr=False)
    test: tuple[TextExample, ...] = field(repr=False)
    provenance: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def label_counts(examples: Iterable[TextExample]) -> dict[str, int]:
    """Examples per label, most frequent first."""
    return dict(Counter(e.label for e in examples).most_common())


STANDARD_ORDERS: dict[int, tuple[str, ...]] = {
    1: ("dbpedia", "amazon", "yahoo", "agnews"),
    2: ("dbpedia", "amazon", "agnews", "yahoo"),
    3: ("yahoo", "amazon", "agnews", "dbpedia"),
}
LONG_ORDERS: dict[int, tuple[str, ...]] = {
    4: ("mnli", "cb", "wic", "copa", "qqp", "boolqa", "rte", "imdb", "yelp", "amazon", "sst2",
        "dbpedia", "agnews", "multirc", "yahoo"),
    5: ("multirc", "boolqa", "wic", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst2", "dbpedia",
        "agnews", "yelp", "amazon", "yahoo"),
    6: ("yelp", "amazon", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst2", "dbpedia", "agnews",
        "yahoo", "multirc", "boolqa", "wic"),
}


def order_tasks(order: int) -> list[str]:
    """Task names of a Standard (1-3) or Long Sequence (4-6) order, first task first."""
    orders = {**STANDARD_ORDERS, **LONG_ORDERS}
    if order not in orders:
        raise ConfigError("scenario.order", order, sorted(orders))
    return list(orders[order])


# --------------------------------------------------------------------------- shared helpers


class _Checksums:
    """The SHA256SUMS of one dataset folder; ``read`` verifies each file against it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.expected: dict[str, str] = {}
        sums = base / "SHA256SUMS"
        if sums.is_file():
            for line in sums.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    digest, name = line.split(None, 1)
                    self.expected[name.strip().lstrip("*").removeprefix("./")] = digest.lower()

    def read(self, path: Path, files: dict[str, str]) -> bytes:
        """The file's bytes, after checking its sha256; adds ``{relpath: sha256}`` to ``files``."""
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        rel = path.relative_to(self.base).as_posix()
        want = self.expected.get(rel)
        if want is not None and want != digest:
            raise DataUnavailableError(
                f"checksum mismatch for {path}: SHA256SUMS lists {want}, the file has {digest}; "
                "the copy is corrupt or a different version: copy it again from its source")
        files[rel] = digest
        return data

    def provenance(self, files: dict[str, str]) -> dict[str, Any]:
        """``files`` read and whether every one of them was listed (and matched) in SHA256SUMS."""
        return {"files": files, "sha256_verified": all(f in self.expected for f in files)}


def _find_base(root: PathLike | None, folder: str, marker: str, expected: str) -> Path:
    """The dataset folder: ``root`` itself or ``root/folder``, whichever holds ``marker``."""
    top = Path(root) if root is not None else shared_data_dir()
    for cand in (top, top / folder):
        if (cand / marker).is_dir():
            return cand
    raise DataUnavailableError(
        f"no {folder} data under {top} (looked for {top / marker} and {top / folder / marker}); "
        f"expected {expected}. Point scenario.data_dir=<dir> at a copy, or set CLBENCH_DATA_DIR")


def _lookup(name: str, table: Mapping[str, Any], field_name: str) -> str:
    key = name.lower().replace("-", "")
    if key not in table:
        raise ConfigError(field_name, name, sorted(table))
    return key


def _n_val(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(fraction * n)))


def carve_validation(examples: Sequence[TextExample], fraction: float = 0.1,
                     seed: int = DATA_SEED) -> tuple[tuple[TextExample, ...], tuple[TextExample, ...]]:
    """Split ``examples`` into (train, val), stratified by label and deterministic.

    Per label, the distinct texts are ranked by ``sha256(seed, label, text)`` and the first
    ``round(fraction * n)`` (at least 1 and at most n-1 when n >= 2) go to validation, so the
    result depends neither on file order nor on Python's RNG. Every copy of a chosen text goes to
    validation: train and val never share a text. Both keep the input order.

    Args:
        examples: the training examples.
        fraction: share of each label's distinct texts moved to validation, in [0, 1).
        seed: the data seed (fixed by default, independent of the run seed).

    Returns:
        (train, val).
    """
    if not 0 <= fraction < 1:
        raise ConfigError("scenario.val_fraction", fraction, "a number in [0, 1)")
    by_label: dict[str, dict[str, None]] = {}
    for ex in examples:
        by_label.setdefault(ex.label, {})[ex.text] = None
    chosen: set[str] = set()
    for label, texts in by_label.items():
        ranked = sorted(texts, key=functools.partial(_rank, seed, label))
        chosen.update(ranked[: _n_val(len(ranked), fraction)])
    train = tuple(e for e in examples if e.text not in chosen)
    return train, tuple(e for e in examples if e.text in chosen)


def _rank(seed: int, label: str, text: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{label}\x00{text}".encode()).digest()


def _off_label(labels: Sequence[str], splits: Mapping[str, Sequence[TextExample]]) -> dict[str, int]:
    known = set(labels)
    counts = {s: sum(e.label not in known for e in ex) for s, ex in splits.items()}
    return {s: n for s, n in counts.items() if n}


# --------------------------------------------------------------------------- LFPT5

LFPT5_REPO = "github.com/qcwthu/Lifelong-Fewshot-Language-Learning@cf7d17ce7de6a707d929d0542b3d5e639569855f"
_LFPT5_SUB = "Classification/textclassificationdata"
#: name -> (folder, family, labels in the Zhang et al. 2015 class-index order, as shipped).
LFPT5_TASKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "agnews": ("ag_news_csv", "TC", ("world", "sports", "business", "science")),
    "amazon": ("amazon_review_full_csv", "SC", ("terrible", "bad", "middle", "good", "wonderful")),
    "dbpedia": ("dbpedia_csv", "TC", (
        "company", "educationalinstitution", "artist", "thlete", "officeholder",
        "meanoftransportation", "building", "naturalplace", "village", "animal", "plant", "album",
        "film", "writtenwork")),
    "yahoo": ("yahoo_answers_csv", "TC", (
        "society and culture", "science", "health", "education and reference",
        "computers and internet", "sports", "business", "entertainment and Music",
        "family and relationships", "politics and government")),
}
#: Instructions for LFPT5 tasks, worded as O-LoRA's ``instruction_config.json`` for TC / SC so that
#: ``olora_prompt`` gives both copies of the Standard benchmark the same prompt format.
LFPT5_INSTRUCTIONS: dict[str, str] = {
    "TC": "What is the topic of the following paragraph? Choose one from the option.\n",
    "SC": "What is the sentiment of the following paragraph? Choose one from the option.\n",
}


def load_lfpt5(root: PathLike | None, tasks: Sequence[str], seed: str = "0_42",
               instructions: Mapping[str, str] | None = None) -> list[TextTask]:
    """LFPT5 few-shot tasks (train/valid/test files as shipped), in the order of ``tasks``.

    Args:
        root: the ``lfpt5-fewshot-textcls`` folder or the folder holding it;
            ``None``: ``$CLBENCH_DATA_DIR`` or ``<repo>/../shared/data``.
        tasks: names among ``agnews``, ``amazon``, ``dbpedia``, ``yahoo``.
        seed: the sampling-seed folder (``0_42``, ``1_142``, ``2_242``).
        instructions: family -> instruction; default ``LFPT5_INSTRUCTIONS``.

    Raises:
        DataUnavailableError: the folder or a split file is missing, a line is malformed, a label
            is unknown, or a checksum does not match.
    """
    base = _find_base(root, "lfpt5-fewshot-textcls", _LFPT5_SUB,
                      f"{_LFPT5_SUB}/<task>_csv/<seed>/{{train,valid,test}}.txt")
    sums, instr = _Checksums(base), dict(instructions or LFPT5_INSTRUCTIONS)
    return [_lfpt5_task(base, sums, _lookup(t, LFPT5_TASKS, "scenario.tasks"), seed, instr)
            for t in tasks]


def _lfpt5_task(base: Path, sums: _Checksums, name: str, seed: str,
                instructions: Mapping[str, str]) -> TextTask:
    folder, family, labels = LFPT5_TASKS[name]
    files: dict[str, str] = {}
    splits = {}
    for split, fname in (("train", "train"), ("val", "valid"), ("test", "test")):
        path = base / _LFPT5_SUB / folder / seed / f"{fname}.txt"
        if not path.is_file():
            raise DataUnavailableError(f"LFPT5 file {path} is missing (task {name}, seed {seed}); "
                                       "expected TSV lines text<TAB>label")
        splits[split] = _parse_tsv(sums.read(path, files).decode("utf-8"), path, labels)
    prov = {"source": "lfpt5", "repository": LFPT5_REPO, "seed": seed,
            "val_source": "valid.txt (shipped)", **sums.provenance(files)}
    return TextTask(name, family, labels, instructions.get(family, ""), splits["train"],
                    splits["val"], splits["test"], prov)


def _parse_tsv(content: str, path: Path, labels: Sequence[str]) -> tuple[TextExample, ...]:
    out = []
    for i, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit("\t", 1)
        if len(parts) != 2 or parts[1] not in labels:
            raise DataUnavailableError(f"{path}:{i}: expected text<TAB>label with a label in "
                                       f"{list(labels)}, got {line[-60:]!r}")
        out.append(TextExample(parts[0], parts[1]))
    return tuple(out)


# --------------------------------------------------------------------------- O-LoRA

OLORA_REPO = "github.com/cmnfriend/O-LoRA@07117e1fc4a5f5ad9308a815a42cee8f46502dc8"
#: name -> ``<family>/<task>`` folder under ``CL_Benchmark``.
OLORA_TASKS: dict[str, str] = {
    "mnli": "NLI/MNLI", "cb": "NLI/CB", "rte": "NLI/RTE", "wic": "WiC/WiC", "copa": "COPA/COPA",
    "qqp": "QQP/QQP", "boolqa": "BoolQA/BoolQA", "multirc": "MultiRC/MultiRC", "imdb": "SC/IMDB",
    "yelp": "SC/yelp", "amazon": "SC/amazon", "sst2": "SC/SST-2", "dbpedia": "TC/dbpedia",
    "agnews": "TC/agnews", "yahoo": "TC/yahoo",
}
_REQUIRED = ("train", "test")  # dev.json is a copy of test.json upstream: never read


def load_olora(root: PathLike | None, tasks: Sequence[str], *, val_fraction: float = 0.1,
               seed: int = DATA_SEED) -> tuple[list[TextTask], list[str]]:
    """O-LoRA ``CL_Benchmark`` tasks found on disk, and what is missing.

    A task is returned only when ``train.json``, ``test.json`` and ``labels.json`` are present;
    validation is carved from train (``carve_validation``), never taken from ``dev.json``.

    Args:
        root: the ``o-lora-cl-benchmark`` folder (holding ``CL_Benchmark/`` and ``configs/``) or
            the folder holding it; ``None``: the shared data dir.
        tasks: names from ``OLORA_TASKS`` (``sst-2``/``SST2`` accepted), or ``Family/Task``.
        val_fraction: share of each label's training texts used for validation.
        seed: the data seed of the validation carve.

    Returns:
        (tasks found in the order asked, missing entries): ``"yahoo"`` when no split file of the
        task is present, ``"dbpedia:train"`` for one missing split (or ``labels.json``).
    """
    base = _find_base(root, "o-lora-cl-benchmark", "CL_Benchmark",
                      "CL_Benchmark/<family>/<task>/{train,test}.json + labels.json and "
                      "configs/instruction_config.json")
    sums = _Checksums(base)
    instructions = _olora_instructions(base, sums)
    found, missing = [], []
    for t in tasks:
        name, rel = _olora_folder(t)
        task, gaps = _olora_task(base, sums, name, rel, instructions, val_fraction, seed)
        missing += gaps
        found += [task] if task else []
    return found, missing


def _olora_folder(task: str) -> tuple[str, str]:
    """(name, ``<family>/<task>`` folder) of a task name or of an explicit ``Family/Task``."""
    if "/" in task:
        return task.split("/")[-1].lower().replace("-", ""), task
    key = _lookup(task, OLORA_TASKS, "scenario.tasks")
    return key, OLORA_TASKS[key]


def _olora_instructions(base: Path, sums: _Checksums) -> dict[str, str]:
    """Family -> first zero-shot instruction (O-LoRA's "single" instruction strategy)."""
    path = base / "configs" / "instruction_config.json"
    if not path.is_file():
        raise DataUnavailableError(f"{path} is missing: O-LoRA's per-family instructions "
                                   "(configs/instruction_config.json of the O-LoRA repository)")
    config = json.loads(sums.read(path, {}))
    return {fam: next((e["instruction"] for e in entries if e["instruction_type"] == "zero-shot"), "")
            for fam, entries in config.items()}


def _olora_task(base: Path, sums: _Checksums, name: str, rel: str, instructions: Mapping[str, str],
                val_fraction: float, seed: int) -> tuple[TextTask | None, list[str]]:
    folder = base / "CL_Benchmark" / rel
    present = [s for s in _REQUIRED if (folder / f"{s}.json").is_file()]
    if not present:
        return None, [name]
    gaps = [f"{name}:{s}" for s in _REQUIRED if s not in present]
    gaps += [] if (folder / "labels.json").is_file() else [f"{name}:labels.json"]
    if gaps:
        return None, gaps
    files: dict[str, str] = {}
    labels = tuple(json.loads(sums.read(folder / "labels.json", files)))
    full_train = _parse_records(sums, folder / "train.json", files, "sentence", "label")
    test = _parse_records(sums, folder / "test.json", files, "sentence", "label")
    train, val = carve_validation(full_train, val_fraction, seed)
    family = rel.split("/")[0]
    prov = {"source": "olora", "repository": OLORA_REPO, "folder": f"CL_Benchmark/{rel}",
            "val_source": f"carved from train.json (fraction={val_fraction}, seed={seed}); "
                          "dev.json not read (identical to test.json upstream)",
            "off_label": _off_label(labels, {"train": train, "test": test}),
            **sums.provenance(files)}
    return TextTask(name, family, labels, instructions.get(family, ""), train, val, test, prov), []


def _parse_records(sums: _Checksums, path: Path, files: dict[str, str], text_key: str,
                   label_key: str) -> tuple[TextExample, ...]:
    rows = json.loads(sums.read(path, files))
    if not isinstance(rows, list) or not all(
            isinstance(r, dict) and isinstance(r.get(text_key), str)
            and isinstance(r.get(label_key), str) for r in rows):
        raise DataUnavailableError(
            f"{path}: expected a JSON array of {{{text_key!r}: str, {label_key!r}: str}} objects")
    return tuple(TextExample(r[text_key], r[label_key]) for r in rows)


def load_probe_task(root: PathLike | None, task: str, per_class: int, n_query: int, *,
                    seed: int = DATA_SEED) -> tuple[TextTask | None, list[str]]:
    """A small labelled probe of one O-LoRA task: ``train`` = support, ``test`` = query.

    Support: ``per_class`` distinct training texts per label, ranked by
    ``sha256(seed, label, text)``. Query: ``n_query`` texts of ``test.json``, or, where the copy
    lacks it (IMDB, Yelp), of the training texts not in the support set, ranked the same way
    (label ``"query"``). Off-label examples are left out. Deterministic and order-independent.

    Returns:
        (the probe or None, missing entries in ``load_olora``'s format).
    """
    base = _find_base(root, "o-lora-cl-benchmark", "CL_Benchmark",
                      "CL_Benchmark/<family>/<task>/train.json + labels.json")
    sums = _Checksums(base)
    name, rel = _olora_folder(task)
    folder = base / "CL_Benchmark" / rel
    gaps = [f"{name}:{f}" for f in ("train.json", "labels.json") if not (folder / f).is_file()]
    if gaps:
        return None, gaps
    files: dict[str, str] = {}
    labels = tuple(json.loads(sums.read(folder / "labels.json", files)))
    rows = _parse_records(sums, folder / "train.json", files, "sentence", "label")
    train = [e for e in rows if e.label in labels]
    support = [e for lab in labels
               for e in sorted({x.text: x for x in train if x.label == lab}.values(),
                               key=lambda x: _rank(seed, x.label, x.text))[:per_class]]
    if (folder / "test.json").is_file():
        pool, source = [e for e in _parse_records(sums, folder / "test.json", files, "sentence", "label")
                        if e.label in labels], "test.json"
    else:
        taken = {e.text for e in support}
        pool, source = [e for e in train if e.text not in taken], "train.json minus the support texts"
    query = sorted(pool, key=lambda x: _rank(seed, "query", x.text))[:n_query]
    prov = {"source": "olora", "repository": OLORA_REPO, "folder": f"CL_Benchmark/{rel}",
            "query_source": source, **sums.provenance(files)}
    return TextTask(name, rel.split("/")[0], labels, "", tuple(support), (), tuple(query), prov), []


def olora_prompt(task: TextTask, example: TextExample) -> str:
    """The O-LoRA input text of ``example`` (the model must generate ``example.label``).

    Format (O-LoRA ``src/uie_dataset_lora.py``; ``instruction`` ends with a newline upstream):
    ``instruction + "Option: " + ", ".join(labels) + " \\n" + text + "\\nAnswer:"``.
    With an empty instruction (O-LoRA's COPA, whose sentence already states the choice, and which
    has no entry in ``instruction_config.json``) it is ``text + "\\nAnswer:"``.
    """
    if not task.instruction:
        return f"{example.text}\nAnswer:"
    return f"{task.instruction}Option: {', '.join(task.labels)} \n{example.text}\nAnswer:"


# --------------------------------------------------------------------------- TRACE

TRACE_REPO = "github.com/BeyonderXX/TRACE@4fc6233a28879f16a2f97d4cfe8970ba21e7fa77"
#: name -> (folder, TRACE metric, closed answer set?), in the TRACE paper's task order.
TRACE_TASKS: dict[str, tuple[str, str, bool]] = {
    "c_stance": ("C-STANCE", "accuracy", True), "fomc": ("FOMC", "accuracy", True),
    "meetingbank": ("MeetingBank", "rouge_l", False), "py150": ("Py150", "edit_similarity", False),
    "scienceqa": ("ScienceQA", "accuracy", True), "numglue_cm": ("NumGLUE-cm", "accuracy", False),
    "numglue_ds": ("NumGLUE-ds", "accuracy", False), "20minuten": ("20Minuten", "sari", False),
}
ValFrom = Literal["auto", "eval", "train"]


def load_trace(root: PathLike | None, tasks: Sequence[str] = tuple(TRACE_TASKS), *,
               val_from: ValFrom = "auto", val_fraction: float = 0.1,
               seed: int = DATA_SEED) -> tuple[list[TextTask], list[str]]:
    """TRACE tasks found on disk (text = prompt, label = answer), and what is missing.

    Args:
        root: the ``trace-partial`` folder (holding ``LLM-CL_Benchmark/``) or the folder holding it.
        tasks: names from ``TRACE_TASKS`` (``C-STANCE``/``c_stance`` both accepted).
        val_from: ``eval``: validation = ``eval.json``; ``train``: carved from train;
            ``auto`` (default): ``eval.json`` unless it is identical to ``test.json`` (as in the
            upstream FOMC files) or absent, then carved from train, so validation is never test.
        val_fraction: share of each answer's training texts carved for validation.
        seed: the data seed of the carve.

    Returns:
        (tasks, missing) with the same missing-entry format as ``load_olora``. ``labels`` is the
        sorted set of training answers for closed-answer tasks (C-STANCE, FOMC, ScienceQA), else ().
    """
    if val_from not in ("auto", "eval", "train"):
        raise ConfigError("scenario.val_from", val_from, ("auto", "eval", "train"))
    base = _find_base(root, "trace-partial", "LLM-CL_Benchmark",
                      "LLM-CL_Benchmark/<Task>/{train,eval,test}.json")
    sums = _Checksums(base)
    found, missing = [], []
    for t in tasks:
        key = t.lower().replace("-", "_")
        if key not in TRACE_TASKS:
            raise ConfigError("scenario.tasks", t, sorted(TRACE_TASKS))
        task, gaps = _trace_task(base, sums, key, val_from, val_fraction, seed)
        missing += gaps
        found += [task] if task else []
    return found, missing


def _trace_task(base: Path, sums: _Checksums, name: str, val_from: ValFrom, val_fraction: float,
                seed: int) -> tuple[TextTask | None, list[str]]:
    folder_name, metric, closed = TRACE_TASKS[name]
    folder = base / "LLM-CL_Benchmark" / folder_name
    needed = _REQUIRED + (("eval",) if val_from == "eval" else ())
    present = [s for s in ("train", "eval", "test") if (folder / f"{s}.json").is_file()]
    if not present:
        return None, [name]
    gaps = [f"{name}:{s}" for s in needed if s not in present]
    if gaps:
        return None, gaps
    files: dict[str, str] = {}
    read = {s: _parse_records(sums, folder / f"{s}.json", files, "prompt", "answer") for s in present}
    train, test, evals = read["train"], read["test"], read.get("eval")
    why = ("val_from=train" if val_from == "train" else "no eval.json" if evals is None
           else "eval.json equals test.json" if val_from == "auto" and evals == test else "")
    if not why and evals is not None:
        val, source = evals, "eval.json"
    else:
        train, val = carve_validation(train, val_fraction, seed)
        source = f"carved from train.json ({why}; fraction={val_fraction}, seed={seed})"
    labels = tuple(sorted({e.label for e in read["train"]})) if closed else ()
    prov = {"source": "trace", "repository": TRACE_REPO, "folder": f"LLM-CL_Benchmark/{folder_name}",
            "metric": metric, "val_source": source, **sums.provenance(files)}
    return TextTask(name, "TRACE", labels, "", train, val, test, prov), []


# --------------------------------------------------------------------------- orders


def load_standard_cl(root: PathLike | None = None, order: int = 1, source: str = "lfpt5", *,
                     lfpt5_seed: str = "0_42", val_fraction: float = 0.1,
                     seed: int = DATA_SEED) -> tuple[list[TextTask], list[str]]:
    """The 4-task Standard CL benchmark in ``order`` (1-3) from the LFPT5 or the O-LoRA copy.

    Args:
        root: the shared data folder or the dataset folder itself; ``None``: the default.
        order: 1, 2 or 3 (``STANDARD_ORDERS``).
        source: ``lfpt5`` (few-shot, complete) or ``olora`` (1,000 per class; partial here).
        lfpt5_seed: LFPT5 sampling-seed folder.
        val_fraction: O-LoRA validation carve (LFPT5 ships its own valid split).
        seed: data seed of the carve.

    Returns:
        (tasks in order, missing entries; always empty for LFPT5, which raises instead).
    """
    if order not in STANDARD_ORDERS:
        raise ConfigError("scenario.order", order, sorted(STANDARD_ORDERS))
    names = STANDARD_ORDERS[order]
    if source == "lfpt5":
        return load_lfpt5(root, names, seed=lfpt5_seed), []
    if source == "olora":
        return load_olora(root, names, val_fraction=val_fraction, seed=seed)
    raise ConfigError("scenario.source", source, ("lfpt5", "olora"))


def load_long_sequence(root: PathLike | None = None, order: int = 4, *, val_fraction: float = 0.1,
                       seed: int = DATA_SEED) -> tuple[list[TextTask], list[str]]:
    """The 15-task Long Sequence benchmark in ``order`` (4-6) from the O-LoRA layout.

    Returns:
        (tasks found, in order; missing entries as in ``load_olora``).
    """
    if order not in LONG_ORDERS:
        raise ConfigError("scenario.order", order, sorted(LONG_ORDERS))
    return load_olora(root, LONG_ORDERS[order], val_fraction=val_fraction, seed=seed)


# --------------------------------------------------------------------------- hub


def _hub_offline() -> bool:
    flags = (os.environ.get(v, "").lower() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f in ("1", "true", "yes", "on") for f in flags)


def from_hub(dataset_id: str, config: str | None = None, *, text_field: str = "text",
             label_field: str = "label", name: str | None = None, family: str = "hub",
             instruction: str = "", val_fraction: float = 0.1, seed: int = DATA_SEED) -> TextTask:
    """One task from a Hugging Face dataset with ``train`` and ``test`` splits (needs network).

    Validation is the ``validation``/``valid``/``dev`` split when there is one, else carved from
    train. Integer labels are mapped to their ``ClassLabel`` names.

    Raises:
        DataUnavailableError: offline (``HF_HUB_OFFLINE=1``), ``datasets`` missing, or any loading
            failure; the message names the dataset and the local-directory alternative.
    """
    hint = ("use a local copy instead: scenario.data_dir=<dir> pointing at a folder in the LFPT5, "
            "O-LoRA CL_Benchmark or TRACE layout (see scenarios/text_data.py)")
    if _hub_offline():
        raise DataUnavailableError(f"cannot load {dataset_id!r} from the Hugging Face hub: "
                                   f"HF_HUB_OFFLINE is set; {hint}")
    try:
        ds = importlib.import_module("datasets").load_dataset(dataset_id, config)
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        detail = " ".join(str(exc).split())[:200]
        raise DataUnavailableError(f"cannot load {dataset_id!r} from the Hugging Face hub "
                                   f"({type(exc).__name__}: {detail}); {hint}") from exc
    if "train" not in ds or "test" not in ds:
        raise DataUnavailableError(f"{dataset_id!r} has splits {list(ds)}; needs train and test")
    names = getattr(getattr(ds["train"], "features", {}).get(label_field), "names", None)
    conv = {s: _hub_rows(ds[s], text_field, label_field, names) for s in ds}
    val_split = next((s for s in ("validation", "valid", "dev") if s in conv), None)
    train, val = (conv["train"], conv[val_split]) if val_split else \
        carve_validation(conv["train"], val_fraction, seed)
    labels = tuple(names) if names else tuple(sorted({e.label for e in conv["train"]}))
    prov = {"source": "hub", "dataset_id": dataset_id, "config": config,
            "val_source": val_split or f"carved from train (fraction={val_fraction}, seed={seed})"}
    return TextTask(name or dataset_id.split("/")[-1].lower(), family, labels, instruction, train,
                    val, conv["test"], prov)


def _hub_rows(rows: Iterable[Mapping[str, Any]], text_field: str, label_field: str,
              names: Sequence[str] | None) -> tuple[TextExample, ...]:
    def label(v: Any) -> str:
        return names[v] if names is not None and isinstance(v, int) and 0 <= v < len(names) else str(v)

    return tuple(TextExample(str(r[text_field]), label(r[label_field])) for r in rows)

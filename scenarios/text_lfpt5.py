"""Owns reading LFPT5 few-shot text classification and the Standard CL benchmark built on it.

LFPT5 (Qin & Joty, ICLR 2022) ships train/valid/test TSV files per task and sampling seed; the
Standard CL benchmark (orders 1-3) reads them, or the O-LoRA copy (``scenarios.text_olora``).
Layout and provenance: ``scenarios/text_data.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from clbench.errors import ConfigError, DataUnavailableError
from scenarios._common import (
    DATA_SEED,
    Checksums,
    PathLike,
    TextExample,
    TextTask,
    find_base,
    lookup,
)
from scenarios.text_olora import load_olora

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
    base = find_base(root, "lfpt5-fewshot-textcls", _LFPT5_SUB,
                     f"{_LFPT5_SUB}/<task>_csv/<seed>/{{train,valid,test}}.txt")
    sums, instr = Checksums(base), dict(instructions or LFPT5_INSTRUCTIONS)
    return [_lfpt5_task(base, sums, lookup(t, LFPT5_TASKS, "scenario.tasks"), seed, instr)
            for t in tasks]


def _lfpt5_task(base: Path, sums: Checksums, name: str, seed: str,
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


# --------------------------------------------------------------------------- Standard CL

STANDARD_ORDERS: dict[int, tuple[str, ...]] = {
    1: ("dbpedia", "amazon", "yahoo", "agnews"),
    2: ("dbpedia", "amazon", "agnews", "yahoo"),
    3: ("yahoo", "amazon", "agnews", "dbpedia"),
}


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


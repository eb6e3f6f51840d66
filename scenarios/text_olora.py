"""Owns reading the O-LoRA ``CL_Benchmark`` layout: its tasks, the Long Sequence benchmark, probes.

O-LoRA (Wang et al., EMNLP 2023 Findings) ships train/dev/test JSON per task; validation is carved
from train (``dev.json`` equals ``test.json`` there). The Long Sequence benchmark (orders 4-6), the
O-LoRA copy of Standard CL and the general-capability probe tasks read it; ``olora_prompt`` is the
O-LoRA input format. Layout and provenance: ``scenarios/text_data.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from clbench.errors import ConfigError, DataUnavailableError
from scenarios._common import (
    DATA_SEED,
    REQUIRED_SPLITS,
    Checksums,
    PathLike,
    TextExample,
    TextTask,
    carve_validation,
    find_base,
    lookup,
    off_label_counts,
    parse_records,
    text_rank,
)

OLORA_REPO = "github.com/cmnfriend/O-LoRA@07117e1fc4a5f5ad9308a815a42cee8f46502dc8"
#: name -> ``<family>/<task>`` folder under ``CL_Benchmark``.
OLORA_TASKS: dict[str, str] = {
    "mnli": "NLI/MNLI", "cb": "NLI/CB", "rte": "NLI/RTE", "wic": "WiC/WiC", "copa": "COPA/COPA",
    "qqp": "QQP/QQP", "boolqa": "BoolQA/BoolQA", "multirc": "MultiRC/MultiRC", "imdb": "SC/IMDB",
    "yelp": "SC/yelp", "amazon": "SC/amazon", "sst2": "SC/SST-2", "dbpedia": "TC/dbpedia",
    "agnews": "TC/agnews", "yahoo": "TC/yahoo",
}
LONG_ORDERS: dict[int, tuple[str, ...]] = {
    4: ("mnli", "cb", "wic", "copa", "qqp", "boolqa", "rte", "imdb", "yelp", "amazon", "sst2",
        "dbpedia", "agnews", "multirc", "yahoo"),
    5: ("multirc", "boolqa", "wic", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst2", "dbpedia",
        "agnews", "yelp", "amazon", "yahoo"),
    6: ("yelp", "amazon", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst2", "dbpedia", "agnews",
        "yahoo", "multirc", "boolqa", "wic"),
}


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
    base = find_base(root, "o-lora-cl-benchmark", "CL_Benchmark",
                     "CL_Benchmark/<family>/<task>/{train,test}.json + labels.json and "
                     "configs/instruction_config.json")
    sums = Checksums(base)
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
    key = lookup(task, OLORA_TASKS, "scenario.tasks")
    return key, OLORA_TASKS[key]


def _olora_instructions(base: Path, sums: Checksums) -> dict[str, str]:
    """Family -> first zero-shot instruction (O-LoRA's "single" instruction strategy)."""
    path = base / "configs" / "instruction_config.json"
    if not path.is_file():
        raise DataUnavailableError(f"{path} is missing: O-LoRA's per-family instructions "
                                   "(configs/instruction_config.json of the O-LoRA repository)")
    config = json.loads(sums.read(path, {}))
    return {fam: next((e["instruction"] for e in entries if e["instruction_type"] == "zero-shot"), "")
            for fam, entries in config.items()}


def _olora_task(base: Path, sums: Checksums, name: str, rel: str, instructions: Mapping[str, str],
                val_fraction: float, seed: int) -> tuple[TextTask | None, list[str]]:
    folder = base / "CL_Benchmark" / rel
    present = [s for s in REQUIRED_SPLITS if (folder / f"{s}.json").is_file()]
    if not present:
        return None, [name]
    gaps = [f"{name}:{s}" for s in REQUIRED_SPLITS if s not in present]
    gaps += [] if (folder / "labels.json").is_file() else [f"{name}:labels.json"]
    if gaps:
        return None, gaps
    files: dict[str, str] = {}
    labels = tuple(json.loads(sums.read(folder / "labels.json", files)))
    full_train = parse_records(sums, folder / "train.json", files, "sentence", "label")
    test = parse_records(sums, folder / "test.json", files, "sentence", "label")
    train, val = carve_validation(full_train, val_fraction, seed)
    family = rel.split("/")[0]
    prov = {"source": "olora", "repository": OLORA_REPO, "folder": f"CL_Benchmark/{rel}",
            "val_source": f"carved from train.json (fraction={val_fraction}, seed={seed}); "
                          "dev.json not read (identical to test.json upstream)",
            "off_label": off_label_counts(labels, {"train": train, "test": test}),
            **sums.provenance(files)}
    return TextTask(name, family, labels, instructions.get(family, ""), train, val, test, prov), []


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
    base = find_base(root, "o-lora-cl-benchmark", "CL_Benchmark",
                     "CL_Benchmark/<family>/<task>/train.json + labels.json")
    sums = Checksums(base)
    name, rel = _olora_folder(task)
    folder = base / "CL_Benchmark" / rel
    gaps = [f"{name}:{f}" for f in ("train.json", "labels.json") if not (folder / f).is_file()]
    if gaps:
        return None, gaps
    files: dict[str, str] = {}
    labels = tuple(json.loads(sums.read(folder / "labels.json", files)))
    rows = parse_records(sums, folder / "train.json", files, "sentence", "label")
    train = [e for e in rows if e.label in labels]
    support = [e for lab in labels
               for e in sorted({x.text: x for x in train if x.label == lab}.values(),
                               key=lambda x: text_rank(seed, x.label, x.text))[:per_class]]
    if (folder / "test.json").is_file():
        pool, source = [e for e in parse_records(sums, folder / "test.json", files, "sentence", "label")
                        if e.label in labels], "test.json"
    else:
        taken = {e.text for e in support}
        pool, source = [e for e in train if e.text not in taken], "train.json minus the support texts"
    query = sorted(pool, key=lambda x: text_rank(seed, "query", x.text))[:n_query]
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


# --------------------------------------------------------------------------- Long Sequence


def load_long_sequence(root: PathLike | None = None, order: int = 4, *, val_fraction: float = 0.1,
                       seed: int = DATA_SEED) -> tuple[list[TextTask], list[str]]:
    """The 15-task Long Sequence benchmark in ``order`` (4-6) from the O-LoRA layout.

    Returns:
        (tasks found, in order; missing entries as in ``load_olora``).
    """
    if order not in LONG_ORDERS:
        raise ConfigError("scenario.order", order, sorted(LONG_ORDERS))
    return load_olora(root, LONG_ORDERS[order], val_fraction=val_fraction, seed=seed)


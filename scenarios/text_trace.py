"""Owns reading the TRACE ``LLM-CL_Benchmark`` layout (prompt/answer tasks, open or closed answers).

TRACE (Wang et al., arXiv 2310.06762): ``TextExample.text`` is the prompt, ``label`` the answer;
validation is ``eval.json`` unless it equals ``test.json``. Layout and provenance:
``scenarios/text_data.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from clbench.errors import ConfigError
from scenarios._common import (
    DATA_SEED,
    REQUIRED_SPLITS,
    Checksums,
    PathLike,
    TextTask,
    carve_validation,
    find_base,
    parse_records,
)

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
    base = find_base(root, "trace-partial", "LLM-CL_Benchmark",
                     "LLM-CL_Benchmark/<Task>/{train,eval,test}.json")
    sums = Checksums(base)
    found, missing = [], []
    for t in tasks:
        key = t.lower().replace("-", "_")
        if key not in TRACE_TASKS:
            raise ConfigError("scenario.tasks", t, sorted(TRACE_TASKS))
        task, gaps = _trace_task(base, sums, key, val_from, val_fraction, seed)
        missing += gaps
        found += [task] if task else []
    return found, missing


def _trace_task(base: Path, sums: Checksums, name: str, val_from: ValFrom, val_fraction: float,
                seed: int) -> tuple[TextTask | None, list[str]]:
    folder_name, metric, closed = TRACE_TASKS[name]
    folder = base / "LLM-CL_Benchmark" / folder_name
    needed = REQUIRED_SPLITS + (("eval",) if val_from == "eval" else ())
    present = [s for s in ("train", "eval", "test") if (folder / f"{s}.json").is_file()]
    if not present:
        return None, [name]
    gaps = [f"{name}:{s}" for s in needed if s not in present]
    if gaps:
        return None, gaps
    files: dict[str, str] = {}
    read = {s: parse_records(sums, folder / f"{s}.json", files, "prompt", "answer") for s in present}
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


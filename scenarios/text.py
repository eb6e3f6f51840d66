"""Text-classification CL streams (Standard CL / Long Sequence) over token-id tensors.

Each task of the chosen order becomes one experience. The global label space is the concatenation
of the tasks' label sets (a label string shared by two tasks, e.g. "science" in Yahoo and AG News,
gives two distinct classes). ``scenario.setting``: ``task_incremental`` (default): the task id is
given at train and test time and logits are masked to the task's own labels;
``class_incremental``: one head over every class of the stream, no task id (every experience has
task id 0), nothing masked, classification mode only. Data come from :mod:`scenarios.text_data`
(LFPT5 few-shot copy by default, or O-LoRA's copy); tasks missing from a local copy are reported
in ``meta["missing"]`` and as a warning, never silently dropped. Inputs are tokenized with
``scenario.tokenizer`` (it must be the model's tokenizer; the runner checks).

Every stream also carries calibration-only source data (``SourceData(probe=False)``): 256
passages of CPython's documentation (``pydoc_data``, always installed), tokenized like the task
inputs. Methods that declare ``needs_source_data`` (importance calibration on what the pretrained
model knows) use it; no general-capability score is computed on it and no other method sees it.
Examples whose label is outside their task's label set (MNLI's "-") are left out and counted per
task and split in ``meta["dropped_off_label"]`` (stored in results.json).

``meta["label_names"]`` verbalises each global class as a short text (``LABEL_TEMPLATES``; e.g.
"A question about science." vs "A news article about science."), for label-embedding heads.
``scenario.probe_tasks`` (default none) attaches general-capability probes
(:class:`~clbench.streams.ProbeTask`): O-LoRA tasks outside the stream, ``probe_support``
examples per class and ``probe_query`` query examples each, scored by nearest class centroid on
the model's frozen embeddings before and after every experience (:mod:`clbench.probes`).

VERSION history: 1 = initial; 2 = calibration source added, dropped examples counted (the
labelled experiences are unchanged). Unchanged since by ``setting`` (its default is the stream
as before; the class-incremental variant differs in task ids and type, hence in content hash),
``label_names`` (meta only) and probes (none by default; hashed when present).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch

from clbench.errors import ConfigError, DataUnavailableError
from clbench.hf import MINILM_ID
from clbench.objectives import CausalLMObjective, GenerationObjective, Objective
from clbench.protocol import Scenario
from clbench.registry import register_scenario
from clbench.streams import Experience, ProbeTask, SourceData, Split, Stream
from scenarios._common import DATA_SEED
from scenarios.text_data import (
    TextExample,
    TextTask,
    load_long_sequence,
    load_standard_cl,
    olora_prompt,
)

VERSION = "2"
CALIBRATION_PASSAGES = 256


@dataclass(frozen=True)
class TextCLConfig:
    # standard: Standard CL (4 tasks, orders 1-3); long: Long Sequence (15 tasks, orders 4-6);
    # trace: the TRACE benchmark's tasks
    benchmark: Literal["standard", "long", "trace"] = "standard"
    # trace: task names (() = all 8; missing ones are reported); long: a subset of the 15 tasks,
    # in the given order (the LM tuning protocol tunes on tasks disjoint from Standard CL's)
    tasks: tuple[str, ...] = ()
    order: int = 1  # task order: 1-3 for standard, 4-6 for long (O-LoRA / MIGU scripts)
    source: Literal["lfpt5", "olora"] = "lfpt5"  # data copy of standard; long reads the O-LoRA layout
    data_dir: str = ""  # folder of the local data copies; "" = $CLBENCH_DATA_DIR or ../shared/data
    lfpt5_seed: str = "0_42"  # LFPT5 sampling-seed folder (source=lfpt5)
    tokenizer: str = MINILM_ID  # hub id; must be the model's tokenizer (the runner checks)
    max_length: int = 128  # tokens per input (padded or truncated)
    max_train_per_task: int = 0  # train (and val) examples per task: 0 = all, else a seeded subset (same every run)
    max_test_per_task: int = 0  # test examples per task: 0 = all, else a seeded subset (same every run)
    # classification: token ids for a classifier head; generation: prompt + answer for a causal LM
    mode: Literal["classification", "generation"] = "classification"
    # task_incremental: task id at train and test, logits masked to the task's labels;
    # class_incremental: one head over every class, no task id (classification only)
    setting: Literal["task_incremental", "class_incremental"] = "task_incremental"
    # general-capability probes: O-LoRA task names disjoint from the stream's (e.g. sst2, imdb)
    probe_tasks: tuple[str, ...] = ()
    probe_support: int = 64  # support examples per class (the class centroids)
    probe_query: int = 200  # query examples per probe task

    def __post_init__(self) -> None:
        if self.setting == "class_incremental" and self.mode != "classification":
            raise ConfigError("scenario.setting", self.setting,
                              "task_incremental (class_incremental needs mode=classification)")
        if self.probe_tasks and self.mode != "classification":
            raise ConfigError("scenario.probe_tasks", ",".join(self.probe_tasks),
                              "() (probes embed classification inputs: mode=classification)")
        if self.probe_support < 1 or self.probe_query < 1:
            raise ConfigError("scenario.probe_support/probe_query",
                              (self.probe_support, self.probe_query), "positive integers")


@register_scenario("text_cl")
class TextCL(Scenario):
    """Text classification CL (LFPT5/O-LoRA Standard CL 1-3, Long Sequence 4-6), task- or class-IL."""

    Config = TextCLConfig
    VERSION = VERSION
    default_model = "hf_encoder"

    def __init__(self, config: TextCLConfig | None = None) -> None:
        super().__init__(config)
        if self.config.mode == "generation":
            self.default_model = "hf_causal_lm"  # type: ignore[misc]
    def build(self) -> Stream:
        c: TextCLConfig = self.config
        root = c.data_dir or None
        if c.benchmark == "standard":
            tasks, missing = load_standard_cl(root, c.order, c.source, lfpt5_seed=c.lfpt5_seed)
        elif c.benchmark == "long" and c.tasks:
            from scenarios.text_data import LONG_ORDERS, load_olora

            unknown = [t for t in c.tasks if t not in LONG_ORDERS[4]]
            if unknown:
                raise ConfigError("scenario.tasks", ", ".join(unknown), sorted(LONG_ORDERS[4]))
            tasks, missing = load_olora(root, c.tasks)
        elif c.benchmark == "long":
            tasks, missing = load_long_sequence(root, c.order)
        else:
            tasks, missing = _trace(root, c)
        if missing:
            warnings.warn(f"text_cl order {c.order}: missing from the local copy: {', '.join(missing)}",
                          stacklevel=2)
        if not tasks:
            raise DataUnavailableError(f"text_cl order {c.order}: no task found ({', '.join(missing)})")
        return tasks_to_stream(tasks, c, missing)


def _split(examples: tuple[TextExample, ...], ids: dict[str, int], c: TextCLConfig, cap: int,
           task: TextTask, open_class: int | None = None) -> Split:
    """Inputs + global labels; examples whose label is not in the task's set (MNLI's "-") are left out.

    classification: token ids (N, L); generation: packed (N, 2, L) [O-LoRA prompt + " label",
    answer mask] for a causal LM.
    """
    from clbench.text_models import pack_answers, tokenize

    # open-ended tasks keep every example (one pseudo-class per task); closed ones leave out
    # off-label examples (their count is in meta["dropped_off_label"])
    ex = list(examples) if open_class is not None else [e for e in examples if e.label in ids]
    if cap and cap < len(ex):  # a seeded random subset (files are often sorted by label)
        keep = torch.randperm(len(ex), generator=torch.Generator().manual_seed(DATA_SEED))[:cap]
        ex = [ex[i] for i in sorted(keep.tolist())]
    y = torch.tensor([ids[e.label] if open_class is None else open_class for e in ex], dtype=torch.long)
    if c.mode == "generation":
        prompts = [_prompt(task, e) for e in ex]
        return Split(pack_answers(prompts, [" " + e.label for e in ex], c.tokenizer, c.max_length), y)
    return Split(tokenize([e.text for e in ex], c.tokenizer, c.max_length), y)


def _trace(root: str | None, c: TextCLConfig) -> tuple[list[TextTask], list[str]]:
    """TRACE tasks, prompts as shipped. Closed-answer tasks (C-STANCE, FOMC, ScienceQA) work in
    both modes; open-ended ones (MeetingBank, Py150, NumGLUE, 20Minuten) need ``mode=generation``
    and are judged on greedy generations with TRACE's metric (ROUGE-L, edit similarity, SARI,
    exact match)."""
    from scenarios.text_data import TRACE_TASKS, load_trace

    tasks, missing = load_trace(root, c.tasks or tuple(TRACE_TASKS))
    open_ended = [t.name for t in tasks if not t.labels]
    if open_ended and c.mode != "generation":
        raise ConfigError("scenario.mode", c.mode,
                          f"generation (open-ended TRACE tasks {', '.join(open_ended)} are judged on generated text)")
    return tasks, missing


def _prompt(task: TextTask, example: TextExample) -> str:
    """O-LoRA's prompt for classification families; TRACE prompts are used as shipped."""
    return example.text if task.family.lower() == "trace" else olora_prompt(task, example)


def _verbaliser(tasks: list[TextTask], tokenizer_id: str) -> dict[str, Any]:
    """First answer token per global class; labels of one task must start with distinct tokens."""
    from clbench.text_models import first_tokens, load_tokenizer

    firsts: list[int] = []
    for t in tasks:
        ids = first_tokens(list(t.labels), tokenizer_id)
        if len(set(ids)) != len(ids):
            raise ConfigError("scenario.mode", "generation",
                              f"labels of task {t.name!r} with distinct first tokens under {tokenizer_id}")
        firsts += ids
    return {"first_tokens": firsts, "pad_id": int(load_tokenizer(tokenizer_id).pad_token_id)}


def tasks_to_stream(tasks: list[TextTask], c: TextCLConfig, missing: list[str]) -> Stream:
    """Tokenize each task's splits; labels get global ids in task order."""
    exps, offset, dropped = [], 0, {}
    class_il = c.setting == "class_incremental"
    for i, task in enumerate(tasks):
        open_class = None if task.labels else offset
        dropped[task.name] = {split: 0 if open_class is not None else
                              sum(e.label not in task.labels for e in getattr(task, split))
                              for split in ("train", "val", "test")}
        ids = {label: offset + k for k, label in enumerate(task.labels)}
        classes = tuple(ids.values()) if open_class is None else (open_class,)
        exps.append(Experience(i, 0 if class_il else i, classes,
                               _split(task.train, ids, c, c.max_train_per_task, task, open_class),
                               _split(task.val, ids, c, c.max_train_per_task, task, open_class),
                               _split(task.test, ids, c, c.max_test_per_task, task, open_class)))
        offset += len(classes)
    meta: dict[str, Any] = {"tokenizer": c.tokenizer, "tasks": [t.name for t in tasks],
                            "missing": list(missing), "labels": [list(t.labels) for t in tasks],
                            "dropped_off_label": dropped, "label_names": label_names(tasks)}
    probes, probe_missing = _probes(c, [t.name for t in tasks])
    if c.probe_tasks:
        meta.update(probe_tasks=[p.name for p in probes], probe_missing=probe_missing)
    objective = Objective()
    if c.mode == "generation" and any(not t.labels for t in tasks):
        meta.update(objective=GenerationObjective.name, **_generation_meta(tasks, c))
        objective = GenerationObjective(meta["pad_id"], meta["eos_id"], c.tokenizer, meta["task_metrics"],
                                        meta["max_new_tokens"])
    elif c.mode == "generation":
        meta.update(objective=CausalLMObjective.name, **_verbaliser(tasks, c.tokenizer))
        objective = CausalLMObjective(torch.as_tensor(meta["first_tokens"], dtype=torch.long), meta["pad_id"])
    return Stream("text_cl", VERSION, c.setting, tuple(exps), offset, "text classification CL",
                  source=calibration_source(c), meta=meta, probes=probes, objective=objective)


#: How a class reads as text: per-task templates, else per-family, else the label alone
#: (``{}``: the label; ``{a}``: the label after "a"/"an").
LABEL_TEMPLATES: dict[str, str] = {
    "dbpedia": "An encyclopedia article about {a}.", "amazon": "A product review: {}.",
    "yahoo": "A question about {}.", "agnews": "A news article about {}.",
    "yelp": "A {} restaurant review.", "imdb": "A {} movie review.", "sst2": "A {} movie review.",
    "TC": "A text about {}.", "SC": "A {} review.",
}
#: LFPT5's glued/misspelt label strings as words ("thlete" is LFPT5's own typo for athlete).
LABEL_WORDS: dict[str, str] = {
    "thlete": "athlete", "educationalinstitution": "educational institution",
    "meanoftransportation": "means of transportation", "naturalplace": "natural place",
    "officeholder": "office holder", "writtenwork": "written work", "middle": "average",
}


def label_names(tasks: list[TextTask]) -> list[str]:
    """One verbalised text per global class (open-ended tasks: the task name)."""
    out = []
    for t in tasks:
        template = LABEL_TEMPLATES.get(t.name, LABEL_TEMPLATES.get(t.family, "{}"))
        words = [LABEL_WORDS.get(lab, lab).lower() for lab in t.labels]
        out += [template.format(w, a=("an " if w[:1] in "aeiou" else "a ") + w) for w in words] or [t.name]
    return out


def _probes(c: TextCLConfig, stream_tasks: list[str]) -> tuple[tuple[ProbeTask, ...], list[str]]:
    """The general-capability probe tasks (tokenized like the stream) and the missing ones."""
    from clbench.text_models import tokenize
    from scenarios.text_data import load_probe_task

    clash = sorted({t.lower().replace("-", "") for t in c.probe_tasks} & set(stream_tasks))
    if clash:
        raise ConfigError("scenario.probe_tasks", ",".join(c.probe_tasks),
                          f"tasks outside the stream (not {', '.join(clash)})")
    probes, missing = [], []
    for name in c.probe_tasks:
        try:
            task, gaps = load_probe_task(c.data_dir or None, name, c.probe_support, c.probe_query)
        except DataUnavailableError as exc:
            task, gaps = None, [f"{name} ({exc})"]
        missing += gaps
        if task is not None:
            ids = {label: k for k, label in enumerate(task.labels)}
            probes.append(ProbeTask(task.name, *(
                Split(tokenize([e.text for e in ex], c.tokenizer, c.max_length),
                      torch.tensor([ids[e.label] for e in ex], dtype=torch.long))
                for ex in (task.train, task.test))))
    if missing:
        warnings.warn(f"text_cl probes missing from the local copy: {'; '.join(missing)}", stacklevel=3)
    return tuple(probes), missing


def _generation_meta(tasks: list[TextTask], c: TextCLConfig) -> dict[str, Any]:
    """Per-task metric (TRACE's; exact match for closed answers) and generation budget.

    The budget of a task is its longest *training* answer in tokens plus one (never a test length).
    """
    from clbench.text_models import load_tokenizer
    from scenarios.text_data import TRACE_TASKS

    tok = load_tokenizer(c.tokenizer)
    budget = [1 + max((len(tok(" " + e.label, add_special_tokens=False)["input_ids"]) for e in t.train), default=8)
              for t in tasks]
    metrics = [TRACE_TASKS[t.name][1] if t.name in TRACE_TASKS else "accuracy" for t in tasks]
    return {"task_metrics": metrics, "max_new_tokens": budget, "pad_id": int(tok.pad_token_id),
            "eos_id": tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id}


def calibration_source(c: TextCLConfig) -> SourceData:
    """Calibration-only source text (CPython docs), in the same input format as the tasks."""
    from scenarios.text_domains import blocks, pydoc_text

    if c.mode == "generation":
        x = blocks(pydoc_text(), c.tokenizer, c.max_length, CALIBRATION_PASSAGES, DATA_SEED).x
    else:
        from clbench.text_models import tokenize

        passages = [p for p in pydoc_text().split("\n\n") if len(p.split()) >= 20]
        keep = torch.randperm(len(passages), generator=torch.Generator().manual_seed(DATA_SEED))
        x = tokenize([passages[i] for i in sorted(keep[:CALIBRATION_PASSAGES].tolist())],
                     c.tokenizer, c.max_length)
    split = Split(x, torch.zeros(len(x), dtype=torch.long))
    empty = split.subset(torch.arange(0))
    return SourceData("python_docs_calibration", split, empty, empty, probe=False)

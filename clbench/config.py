"""Owns the typed run configuration: frozen dataclasses, YAML loading and dotted overrides (the
value checks live in :mod:`clbench.options`).

Overrides are ``key=value`` strings. ``method=<name>`` picks the method, ``method.<field>=v`` sets a
field of that method's own config dataclass (the same for ``scenario.`` and ``model.``), and
``trainer.lr=0.1`` sets a field of :class:`TrainerConfig`. Values are parsed with
``yaml.safe_load`` and then checked against the dataclass field's type; a bad key or value raises
:class:`~clbench.errors.ConfigError` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from clbench.errors import ConfigError
from clbench.options import coerce, flatten, non_negative, positive, replace_checked, to_plain
from clbench.yamlio import read_yaml


@dataclass(frozen=True)
class TrainerConfig:
    """How the one training loop runs (identical for every method)."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    # learning rate of the model's output head (its ``head`` submodule, or the parameters its
    # ``head_parameter_names()`` lists); 0 = ``lr`` (one parameter group)
    head_lr: float = 0.0
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 disables
    grad_accum: int = 1  # micro-batches per optimizer step
    shuffle: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on CUDA
    progress: bool = True
    # learning-rate schedule within each experience: linear warmup over warmup_ratio of its
    # optimizer steps, then constant, linear decay to 0 or cosine decay to 0; or multistep: the
    # rate times gamma at each of the milestones (epochs of the experience), no warmup
    scheduler: Literal["constant", "linear", "cosine", "multistep"] = "constant"
    warmup_ratio: float = 0.0
    milestones: tuple[int, ...] = ()  # multistep only: strictly increasing epochs >= 1
    gamma: float = 0.1  # multistep only: the factor at each milestone
    no_decay_norms_biases: bool = False  # weight decay 0 for norms and biases (1-D parameters)
    gradient_checkpointing: bool = False  # recompute activations in backward (Hugging Face models)
    # also checkpoint within an experience every this many optimizer steps (0 = at experience
    # boundaries only); --resume then continues from that step and gives the same R
    checkpoint_every: int = 0
    # data parallel under `torchrun` / `accelerate launch` (WORLD_SIZE > 1): PyTorch DDP
    distributed: Literal["none", "ddp", "fsdp"] = "none"

    def __post_init__(self) -> None:
        positive(self, "trainer", ("epochs", "batch_size", "grad_accum"))
        non_negative(self, "trainer", ("lr", "head_lr", "momentum", "weight_decay", "grad_clip", "checkpoint_every"))
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("trainer.warmup_ratio", self.warmup_ratio, "a fraction in [0, 1)")
        self._check_multistep()

    def _check_multistep(self) -> None:
        if self.scheduler != "multistep":
            if self.milestones:
                raise ConfigError("trainer.milestones", list(self.milestones), "[] unless trainer.scheduler=multistep")
            if self.gamma != 0.1:
                raise ConfigError("trainer.gamma", self.gamma, "0.1 (the default) unless trainer.scheduler=multistep")
            return
        m = self.milestones
        if not m or m[0] < 1 or any(b <= a for a, b in zip(m, m[1:], strict=False)):
            raise ConfigError("trainer.milestones", list(m),
                              "a non-empty, strictly increasing list of epochs >= 1 (e.g. [35, 45])")
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ConfigError("trainer.gamma", self.gamma, "a finite factor > 0 (0.1: MultiStepLR's decay)")
        if self.warmup_ratio:
            raise ConfigError("trainer.warmup_ratio", self.warmup_ratio, "0 with trainer.scheduler=multistep")


@dataclass(frozen=True)
class EvalConfig:
    """How the accuracy matrix is filled."""

    batch_size: int = 1024
    validation: bool = True  # also fill R_val on the validation splits (used for tuning)
    # general capability of language models (models exposing ``lm_eval_handle``): lm-eval tasks
    # scored before training and after each experience; limit = documents per task (0 = all)
    lm_eval_tasks: tuple[str, ...] = ("clbench_pydoc_cloze",)
    lm_eval_limit: int = 200
    # score general capability after every k-th experience (and always before the stream and
    # after the last experience); 0 = only before and after the stream
    general_every: int = 1
    # what runs lm-eval general capability and the greedy generation of generation-judged
    # objectives: "hf" (the in-memory Hugging Face model) or "vllm" (optional: the vllm package
    # and a CUDA GPU; not yet run on a GPU, see clbench.vllm_backend)
    backend: str = "hf"
    BACKENDS: ClassVar[tuple[str, ...]] = ("hf", "vllm")  # the choices of ``backend``

    def __post_init__(self) -> None:
        positive(self, "eval", ("batch_size",))
        non_negative(self, "eval", ("general_every",))
        if self.backend not in self.BACKENDS:
            raise ConfigError("eval.backend", self.backend, self.BACKENDS)


@dataclass(frozen=True)
class FoundationConfig:
    """How the foundation model is obtained when a scenario declares a source distribution.

    The model is pretrained on the source train split with these settings (seeded), cached on
    disk under a key of (model, source content hash, these settings), and reloaded afterwards.
    ``cache_dir`` empty = ``$CLBENCH_CACHE`` or ``~/.cache/clbench``.
    """

    pretrain: bool = True
    epochs: int = 8
    batch_size: int = 64
    lr: float = 0.002
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    weight_decay: float = 0.01
    seed: int = 0
    cache_dir: str = ""
    # random affine augmentation of image batches during pretraining (per image: rotation within
    # +-augment_degrees, scale 0.9-1.1, shift up to 10 %); 0 = none
    augment_degrees: float = 0.0

    def __post_init__(self) -> None:
        positive(self, "foundation", ("epochs", "batch_size"))
        non_negative(self, "foundation", ("augment_degrees",))


#: The tracking backends ``tracking.backends`` selects from (:mod:`clbench.trackers`).
TRACKING_BACKENDS = ("mlflow", "tensorboard", "csv", "wandb")


@dataclass(frozen=True)
class TrackingConfig:
    """Where results go. An empty ``uri`` means MLFLOW_TRACKING_URI, else ./mlflow.db.

    No field here enters ``RunConfig.key()`` (the whole section is left out), so adding one
    never changes a recorded run's key.
    """

    runs_dir: str = "runs"
    mlflow: bool = True  # false removes mlflow from ``backends``
    uri: str = ""
    # the MLflow experiment (W&B project); bench and protocol runs use their track's name
    experiment: str = "clbench"
    parent_run_id: str = ""  # nest this run under an MLflow parent run (tuning protocol)
    run_name: str = ""  # "" = <method>-<scenario>-s<seed>
    # where metrics go: any of mlflow, tensorboard, csv, wandb (a list or a comma-separated string)
    backends: tuple[str, ...] = ("mlflow",)
    # log the training loss (``train_step_loss``) and the memory high-water mark
    # (``train_step_peak_mem_mb``) every this many optimizer steps; 0 = off
    loss_every: int = 0

    def __post_init__(self) -> None:
        names = tuple(dict.fromkeys(n.strip() for b in self.backends for n in b.split(",") if n.strip()))
        bad = [n for n in names if n not in TRACKING_BACKENDS]
        if bad:
            raise ConfigError("tracking.backends", ",".join(bad), f"a list of {', '.join(TRACKING_BACKENDS)}")
        object.__setattr__(self, "backends", names)
        non_negative(self, "tracking", ("loss_every",))

    def selected(self) -> tuple[str, ...]:
        """The backends in use: ``backends`` without mlflow when ``mlflow`` is false."""
        return tuple(b for b in self.backends if b != "mlflow" or self.mlflow)


@dataclass(frozen=True)
class RunConfig:
    """One run: a method on a scenario with a model and a seed.

    ``method_options``/``scenario_options``/``model_options`` hold the raw overrides of the
    plug-in's own config dataclass; :func:`clbench.runner.resolve` validates them.
    """

    method: str = ""  # required: a registered method name
    scenario: str = "split_mnist"
    model: str = "auto"
    seed: int = 0
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    foundation: FoundationConfig = field(default_factory=FoundationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    method_options: Mapping[str, Any] = field(default_factory=dict)
    scenario_options: Mapping[str, Any] = field(default_factory=dict)
    model_options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable nested dict."""
        return to_plain(self)

    def key(self) -> str:
        """Short stable hash of everything that changes the result (not tracking/progress).

        A field added to a section after runs were recorded is left out while it holds its
        default (:data:`KEY_NEUTRAL_DEFAULTS`), so existing run directories keep their keys and
        ``--resume`` / ``compare --resume`` still find them."""
        d = self.to_dict()
        d.pop("tracking")
        d["trainer"].pop("progress")
        d["trainer"].pop("checkpoint_every")  # when checkpoints are taken does not change the result
        d["trainer"].pop("distributed")  # how many processes share a batch does not either (up to float sums)
        d["foundation"].pop("cache_dir")
        for section, names in LOCATION_OPTIONS.items():  # where an input is, not what it is
            for name in names:
                d[f"{section}_options"].pop(name, None)
        for dotted, default in KEY_NEUTRAL_DEFAULTS.items():
            section, name = dotted.split(".", 1)
            if d[section].get(name, default) == default:
                d[section].pop(name, None)
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


#: Plug-in options that only say *where* an input is (a data folder, a weights file): left out of
#: ``RunConfig.key()``, so the same run keeps its key wherever the files are (``clbench.tracks``'
#: location overrides).
LOCATION_OPTIONS: dict[str, tuple[str, ...]] = {"scenario": ("root", "data_dir"), "model": ("weights",)}


#: Section fields added after runs were recorded, with their defaults: ``RunConfig.key()`` leaves
#: them out while at the default. A new field of TrainerConfig/EvalConfig/FoundationConfig goes
#: here, or every recorded run's key changes (tests/test_config.py pins two keys).
KEY_NEUTRAL_DEFAULTS: dict[str, Any] = {"trainer.scheduler": "constant", "trainer.warmup_ratio": 0.0,
                                         "trainer.no_decay_norms_biases": False,
                                         "trainer.gradient_checkpointing": False, "eval.general_every": 1,
                                         "eval.backend": "hf",
                                         # as to_dict() writes them: a tuple is a list there
                                         "trainer.milestones": [], "trainer.gamma": 0.1}


_PLUGIN_SECTIONS = ("method", "scenario", "model")
_SECTIONS = {"trainer": TrainerConfig, "eval": EvalConfig, "foundation": FoundationConfig,
             "tracking": TrackingConfig}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML run config (safe loader) into dotted keys."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config", str(path), "an existing YAML file")
    data = read_yaml(p, "config") or {}
    if not isinstance(data, Mapping):
        raise ConfigError("config", str(path), "a YAML mapping at top level")
    return flatten(data)


def build_run_config(values: Mapping[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Apply dotted ``values`` on top of ``base`` (defaults when None) and validate."""
    base = base or RunConfig()
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    plugin: dict[str, dict[str, Any]] = {name: dict(getattr(base, f"{name}_options")) for name in _PLUGIN_SECTIONS}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if head in _PLUGIN_SECTIONS and rest in ("", "name"):
            top[head] = value
        elif head in _PLUGIN_SECTIONS:
            plugin[head][rest] = value
        elif head in _SECTIONS and rest:
            sections[head][rest] = value
        elif head == "seed" and not rest:
            top["seed"] = value
        else:
            allowed = ["method", "scenario", "model", "seed"] + [
                f"{s}.<field>" for s in (*_SECTIONS, *_PLUGIN_SECTIONS)
            ]
            raise ConfigError("override key", key, allowed)
    kwargs: dict[str, Any] = {}
    for name in _SECTIONS:
        kwargs[name] = replace_checked(getattr(base, name), sections[name], name)
    for name in ("method", "scenario", "model"):
        kwargs[name] = coerce(f"{name}", top.get(name, getattr(base, name)), str)
    kwargs["seed"] = coerce("seed", top.get("seed", base.seed), int)
    if not 0 <= kwargs["seed"] < 2**63:
        raise ConfigError("seed", kwargs["seed"], "an integer in [0, 2**63)")
    for name in _PLUGIN_SECTIONS:
        # plain values (tuples as lists), as YAML and the command line give them: a config read
        # back from its own dump (or declared in a track) is then equal, not only of equal key()
        kwargs[f"{name}_options"] = {k: to_plain(v) for k, v in plugin[name].items()}
    return RunConfig(**kwargs)

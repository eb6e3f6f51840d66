"""Owns the plug-in contracts: the Method base class (no-op hooks), Scenario base, capability checks.

Hook order for one run (tested in ``tests/test_contract.py``)::

    setup
    on_source_data            (only for methods declaring needs_source_data)
    for each experience:
        on_experience_start -> train_data -> optimizer
        for each batch: transform_batch -> loss -> [on_after_backward -> (step) -> on_after_step]
        on_experience_end -> experience_report
        (evaluation: predict, or adapt for test-time methods)

Before ``setup`` the runner sets ``method.objective`` to the stream's objective (see
``clbench/objectives.py``), so a method that needs the base loss outside ``loss`` (an importance
pass, distillation on token outputs) computes it exactly as the trainer does.

A hook receives what it needs and returns what it changes; none receives the trainer. Methods
never step the optimizer: ``on_after_backward`` may edit gradients in place, that is all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clbench.config import TrainerConfig
from clbench.errors import IncompatibleError
from clbench.objectives import OBJECTIVES, Objective
from clbench.search import BASE_SPACE, Grid
from clbench.streams import SCENARIO_TYPES, Batch, Experience, Split, Stream, StreamInfo


@dataclass(frozen=True)
class NoOptions:
    """A plug-in without options."""


class Method:
    """Base class of every CL method; all hooks are no-ops.

    Capabilities (class attributes) are checked against the scenario and model before training.
    """

    Config: ClassVar[type] = NoOptions
    scenario_types: ClassVar[frozenset[str]] = frozenset(SCENARIO_TYPES)
    model_families: ClassVar[frozenset[str]] = frozenset({"any"})
    needs_source_data: ClassVar[bool] = False
    # the method tunes parameter-efficient modules of a frozen pretrained model, so its claim
    # presumes pretrained weights: the tuning protocol (and so every board) refuses it on a model
    # that starts untrained (no pretrained weights, no foundation pretrained on a source split);
    # a plain ``clbench run`` still allows it (an ablation on purpose)
    needs_pretrained: ClassVar[bool] = False
    adapts_at_test_time: ClassVar[bool] = False
    objectives: ClassVar[frozenset[str]] = frozenset(OBJECTIVES)
    registry_name: ClassVar[str] = ""
    # hyperparameters the tuning protocol searches (dotted override key -> Grid); see clbench/search.py
    search_space: ClassVar[dict[str, Grid]] = BASE_SPACE
    # keys of :meth:`experience_report` that show the method's mechanism acting (frozen fraction,
    # kept ranks, updated fraction...); their per-experience values go to results.json under
    # ``mechanism`` and into the compare tables, so a reader can see that the mechanism acted
    mechanism_figures: ClassVar[tuple[str, ...]] = ()
    # runs on FSDP-sharded parameters (trainer.distributed=fsdp): acts only through the loss and
    # the data, never reads or edits a whole weight or gradient tensor, never copies the model
    shardable: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()
        self.objective: Objective = Objective()  # set by the runner before setup

    def setup(self, model: nn.Module, stream_info: StreamInfo) -> nn.Module:
        """Called once before the first experience; may wrap the model or inject modules."""
        return model

    def on_source_data(self, model: nn.Module, source: Split) -> None:
        """Called once before the first experience with the scenario's source train split.

        Only methods declaring ``needs_source_data`` receive it (e.g. importance calibration).
        """

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        """Called before an experience's optimizer is built: freeze/select parameters, heads."""

    def train_data(self, exp: Experience, seen: Sequence[Experience]) -> Split:
        """The training split for ``exp``; ``seen`` are the experiences so far (``exp`` last)."""
        return exp.train

    def optimizer(self, params: list[nn.Parameter], cfg: TrainerConfig) -> torch.optim.Optimizer | None:
        """Return an optimizer only if the method *is* one; ``None`` = the trainer's default."""
        return None

    def transform_batch(self, batch: Batch) -> Batch:
        """Change a training batch before the forward pass (e.g. add replayed samples)."""
        return batch

    def loss(self, model: nn.Module, batch: Batch, outputs: Tensor, base_loss: Tensor) -> Tensor:
        """Return the loss to minimise; ``base_loss`` is cross-entropy on ``outputs``."""
        return base_loss

    def on_after_backward(self, model: nn.Module) -> None:
        """Edit gradients in place (masks) before clipping and the optimizer step."""

    def on_after_step(self, model: nn.Module) -> None:
        """Called after each optimizer step (EMA, proximal updates)."""

    def on_experience_end(self, exp: Experience, model: nn.Module) -> None:
        """Consolidate after training on ``exp`` (importance, buffers, teachers, merging)."""

    def experience_report(self) -> dict[str, Any]:
        """What the method selected in the experience just trained (frozen fractions, kept ranks).

        Numbers are logged to MLflow as ``method_<key>`` with the experience as step; everything
        is stored under ``per_experience[i]["method"]`` in results.json.
        """
        return {}

    def artifacts(self, out_dir: Path) -> list[Path]:
        """Files (plots) the method writes into ``out_dir`` when the run ends; logged to MLflow."""
        return []

    def predict(self, model: nn.Module, batch: Batch) -> Tensor:
        """Inference path; ``batch.y`` is always None here."""
        return model(batch.x)

    def adapt(self, model: nn.Module, batch: Batch) -> Tensor:
        """Test-time adaptation on an unlabeled batch; returns logits for it."""
        return self.predict(model, batch)

    def state_dict(self) -> dict[str, Any]:
        """Everything the method needs to resume (tensors, numbers, strings, containers),
        including its position within a running experience (step counters, schedules): with
        ``trainer.checkpoint_every`` it is also saved between optimizer steps."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`. Called before ``on_experience_start`` when a run resumes
        at an experience boundary, and after it (on the same starting model) when it resumes
        within an experience: it must then restore the running state and keep what
        ``on_experience_start`` set up (hooks, modules)."""


class Scenario:
    """Base class of scenario builders. ``build`` returns a :class:`Stream`, which declares its
    own ``scenario_type`` (one scenario can build class-, task- or domain-incremental streams)."""

    Config: ClassVar[type] = NoOptions
    VERSION: ClassVar[str] = "1"
    default_model: ClassVar[str] = ""  # what model=auto resolves to ("" = the global default)
    registry_name: ClassVar[str] = ""

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()
        self.objective: Objective = Objective()  # set by the runner before setup

    def build(self) -> Stream:
        raise NotImplementedError


def check_compatible(method: type[Method], stream: Stream, model_family: str) -> None:
    """Refuse illegal (method, scenario, model) combinations before any training.

    Raises:
        IncompatibleError: naming the method, the mismatching capability and what it supports.
    """
    name = method.registry_name or method.__name__
    if stream.scenario_type not in method.scenario_types:
        raise IncompatibleError(
            f"method {name!r} does not support {stream.scenario_type} scenarios "
            f"(scenario {stream.name!r}); it supports: {', '.join(sorted(method.scenario_types))}"
        )
    if stream.scenario_type == "test_time" and not method.adapts_at_test_time:
        raise IncompatibleError(
            f"method {name!r} does not declare adapts_at_test_time; test_time scenario "
            f"{stream.name!r} needs a test-time adaptation method (or a no-adaptation baseline)"
        )
    objective = stream.objective.name
    if objective not in method.objectives:
        raise IncompatibleError(
            f"method {name!r} does not support the {objective} objective of scenario "
            f"{stream.name!r}; it supports: {', '.join(sorted(method.objectives))}"
        )
    if method.needs_source_data and stream.source is None:
        raise IncompatibleError(
            f"method {name!r} needs source data but scenario {stream.name!r} declares none"
        )
    families = method.model_families
    if "any" not in families and model_family not in families:
        raise IncompatibleError(
            f"method {name!r} does not support model family {model_family!r}; "
            f"it supports: {', '.join(sorted(families))}"
        )


def check_inputs(model: nn.Module, stream: Stream) -> None:
    """Refuse a model whose tokenizer differs from the one the stream was tokenized with."""
    want, have = stream.meta.get("tokenizer"), getattr(model, "tokenizer_id", None)
    if want is not None and have is not None and want != have:
        raise IncompatibleError(
            f"scenario {stream.name!r} was tokenized with {want!r} but the model uses {have!r}; "
            f"set scenario.tokenizer={have} or model.model_id={want}"
        )


def trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad]

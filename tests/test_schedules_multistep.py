"""trainer.scheduler=multistep: MultiStepLR's decay at epoch milestones, per experience, resumable;
its options are checked and leave the keys of runs that do not use them unchanged."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch

from clbench.config import RunConfig, TrainerConfig, build_run_config
from clbench.errors import ConfigError
from clbench.models import MLP, MLPConfig
from clbench.options import parse_overrides
from clbench.param_groups import param_groups
from clbench.protocol import Method
from clbench.streams import Experience
from clbench.testing import params_equal, tiny_stream
from clbench.trainer import Trainer, build_optimizer

LR = 0.05


class Recorder(Method):
    """Records the rate of every parameter group at each optimizer step (before the schedule's update)."""

    def __init__(self) -> None:
        super().__init__()
        self.lrs: list[list[float]] = []
        self.opt: torch.optim.Optimizer | None = None

    def on_experience_start(self, exp: Experience, model: torch.nn.Module) -> None:
        self.model = model

    def optimizer(self, params: list[torch.nn.Parameter], cfg: TrainerConfig) -> torch.optim.Optimizer:
        self.opt = build_optimizer(param_groups(self.model, params, cfg), cfg)  # the trainer's own groups
        return self.opt

    def on_after_step(self, model: torch.nn.Module) -> None:
        assert self.opt is not None
        self.lrs.append([g["lr"] for g in self.opt.param_groups])


def _model() -> MLP:
    torch.manual_seed(0)
    return MLP(tiny_stream().info(), MLPConfig(hidden=16, layers=1))


def _cfg(**kw: Any) -> TrainerConfig:
    base: dict[str, Any] = {"epochs": 5, "batch_size": 8, "lr": LR, "momentum": 0.9, "progress": False,
                            "scheduler": "multistep", "milestones": (2, 4), "gamma": 0.5}
    return TrainerConfig(**{**base, **kw})


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_the_rate_drops_by_gamma_at_each_milestone_epoch_and_restarts_per_experience(grad_accum: int) -> None:
    exp = tiny_stream().experiences[0]
    cfg = _cfg(grad_accum=grad_accum)
    per_epoch = math.ceil(math.ceil(len(exp.train) / 8) / grad_accum)
    trainer, rec = Trainer(cfg, torch.device("cpu")), Recorder()
    stats = trainer.train_experience(_model(), rec, exp, [exp], torch.Generator().manual_seed(0))
    assert stats.optimizer_steps == 5 * per_epoch
    # epochs 1-2 at lr, 3-4 at lr * 0.5, 5 at lr * 0.25 (Mammoth: scheduler.step() after each epoch)
    want = [LR * 0.5 ** sum(t // per_epoch >= m for m in (2, 4)) for t in range(5 * per_epoch)]
    assert [r[0] for r in rec.lrs] == pytest.approx(want)
    again = Recorder()  # the next experience, same trainer: a fresh optimizer and schedule
    trainer.train_experience(_model(), again, exp, [exp], torch.Generator().manual_seed(0))
    assert again.lrs == rec.lrs


def test_every_parameter_group_decays_and_late_milestones_never_apply() -> None:
    exp = tiny_stream().experiences[0]
    rec = Recorder()
    Trainer(_cfg(epochs=2, milestones=(1, 7), head_lr=0.2), torch.device("cpu")).train_experience(
        _model(), rec, exp, [exp], torch.Generator())
    per_epoch = len(rec.lrs) // 2
    assert rec.lrs[:per_epoch] == [[LR, 0.2]] * per_epoch  # the body, the head
    assert rec.lrs[per_epoch:] == [[LR * 0.5, 0.2 * 0.5]] * per_epoch  # milestone 7: past epoch 2, never


def test_a_resumed_experience_continues_the_schedule() -> None:
    """A step checkpoint written mid-epoch 3 (after the first milestone) and reloaded as the
    step checkpoints are (weights_only): the remaining rates and the weights are those of the
    uninterrupted experience."""
    exp = tiny_stream().experiences[0]
    cfg = _cfg(checkpoint_every=1)
    saved: list[bytes] = []

    def save(state: dict[str, Any]) -> None:  # written at once, as a step checkpoint is
        buf = io.BytesIO()
        torch.save(state, buf)
        saved.append(buf.getvalue())

    whole, rec = _model(), Recorder()
    Trainer(cfg, torch.device("cpu")).train_experience(
        whole, rec, exp, [exp], torch.Generator().manual_seed(1), save_step=save)
    per_epoch = len(rec.lrs) // 5
    k = 2 * per_epoch + per_epoch // 2  # steps done when the checkpoint was written
    state = torch.load(io.BytesIO(saved[k - 1]), weights_only=True)
    resumed, rest = _model(), Recorder()
    Trainer(cfg, torch.device("cpu")).train_experience(
        resumed, rest, exp, [exp], torch.Generator().manual_seed(1), resume=state)
    assert rest.lrs[0] == [LR * 0.5] and k % per_epoch  # mid-epoch, after the first milestone
    assert rest.lrs == rec.lrs[k:] and params_equal(resumed, whole)


@pytest.mark.parametrize(("overrides", "field", "value", "fragment"), [
    ({"trainer.milestones": "[45, 35]"}, "trainer.milestones", [45, 35], "strictly increasing"),
    ({"trainer.milestones": "[35, 35]"}, "trainer.milestones", [35, 35], "strictly increasing"),
    ({"trainer.milestones": "[-1, 35]"}, "trainer.milestones", [-1, 35], "epochs >= 1"),
    ({"trainer.milestones": "[0, 35]"}, "trainer.milestones", [0, 35], "epochs >= 1"),
    ({"trainer.milestones": "[]"}, "trainer.milestones", [], "non-empty"),
    ({"trainer.milestones": "[3.5]"}, "trainer.milestones", 3.5, "an integer"),
    ({"trainer.milestones": "[35]", "trainer.gamma": "0"}, "trainer.gamma", 0.0, "> 0"),
    ({"trainer.milestones": "[35]", "trainer.warmup_ratio": "0.1"}, "trainer.warmup_ratio", 0.1, "multistep"),
])
def test_bad_multistep_options_name_field_value_and_choices(overrides: dict[str, str], field: str, value: object,
                                                            fragment: str) -> None:
    items = ["trainer.scheduler=multistep"] + [f"{k}={v}" for k, v in overrides.items()]
    with pytest.raises(ConfigError) as err:
        build_run_config(parse_overrides(items))
    assert (err.value.field, err.value.value) == (field, value) and fragment in err.value.allowed


def test_multistep_options_are_refused_with_another_schedule() -> None:
    with pytest.raises(ConfigError, match="trainer.milestones.*unless trainer.scheduler=multistep"):
        build_run_config(parse_overrides(["trainer.scheduler=cosine", "trainer.milestones=[35, 45]"]))
    with pytest.raises(ConfigError, match="trainer.gamma.*unless trainer.scheduler=multistep"):
        TrainerConfig(gamma=0.2)


def test_the_new_fields_keep_existing_keys_and_enter_the_key_when_used() -> None:
    cfg = build_run_config({"method": "naive"})
    explicit = build_run_config({"method": "naive", "trainer.milestones": [], "trainer.gamma": 0.1})
    assert explicit.key() == cfg.key() == RunConfig(method="naive").key()
    one = build_run_config(parse_overrides(["method=naive", "trainer.scheduler=multistep", "trainer.milestones=35"]))
    assert one.trainer.milestones == (35,) and one.trainer.gamma == 0.1  # a single epoch is a list of one
    two = build_run_config(parse_overrides(["method=naive", "trainer.scheduler=multistep",
                                            "trainer.milestones=[35, 45]"]))
    assert len({cfg.key(), one.key(), two.key()}) == 3
    as_yaml = {"method": "naive", "trainer.scheduler": "multistep", "trainer.milestones": [35, 45]}  # a list
    assert build_run_config(as_yaml).key() == two.key()

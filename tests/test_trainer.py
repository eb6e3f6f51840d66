"""The one training loop: parity with plain PyTorch, accumulation, clipping, determinism."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clbench.config import TrainerConfig
from clbench.errors import ConfigError
from clbench.evaluation import Evaluator
from clbench.models import MLP, MLPConfig
from clbench.param_groups import param_groups
from clbench.protocol import Method
from clbench.runner import run
from clbench.streams import Batch
from clbench.testing import params_equal, tiny_config, tiny_stream
from clbench.trainer import Trainer, build_optimizer, task_class_mask


def _model(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(tiny_stream().info(), MLPConfig(hidden=32, layers=1))


def _plain_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, bs: int,
                lr: float, gen: torch.Generator | None, clip: float = 0.0) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen) if gen is not None else torch.arange(len(y))
        for i in range(0, len(y), bs):
            idx = order[i : i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            opt.zero_grad(set_to_none=True)


def _trainer(**kw: object) -> Trainer:
    base: dict[str, object] = {"epochs": 2, "batch_size": 8, "lr": 0.05, "momentum": 0.9, "progress": False}
    cfg = TrainerConfig(**{**base, **kw})  # type: ignore[arg-type]
    return Trainer(cfg, torch.device("cpu"))


def test_parity_with_plain_pytorch_loop_bitwise() -> None:
    exp = tiny_stream().experiences[0]
    ours, ref = _model(), _model()
    stats = _trainer().train_experience(ours, Method(), exp, [exp], torch.Generator().manual_seed(5))
    _plain_loop(ref, exp.train.x, exp.train.y, 2, 8, 0.05, torch.Generator().manual_seed(5))
    assert params_equal(ours, ref)
    assert stats.optimizer_steps == 2 * len(exp.train) // 8
    assert stats.train_samples == 2 * len(exp.train)


def test_gradient_accumulation_equals_larger_batch() -> None:
    exp = tiny_stream().experiences[0]
    ours, ref = _model(), _model()
    stats = _trainer(batch_size=4, grad_accum=2, shuffle=False).train_experience(
        ours, Method(), exp, [exp], torch.Generator())
    _plain_loop(ref, exp.train.x, exp.train.y, 2, 8, 0.05, None)
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert stats.optimizer_steps == 2 * len(exp.train) // 8


def test_gradient_clipping_matches_plain_loop() -> None:
    exp = tiny_stream().experiences[0]
    ours, ref = _model(), _model()
    _trainer(grad_clip=0.01, shuffle=False).train_experience(ours, Method(), exp, [exp], torch.Generator())
    _plain_loop(ref, exp.train.x, exp.train.y, 2, 8, 0.05, None, clip=0.01)
    assert params_equal(ours, ref)


def test_frozen_parameters_get_no_optimizer_state_and_stay_fixed() -> None:
    exp = tiny_stream().experiences[0]
    model = _model()
    model.features[1].weight.requires_grad_(False)
    before = copy.deepcopy(model.features[1].weight)
    _trainer(weight_decay=0.1).train_experience(model, Method(), exp, [exp], torch.Generator())
    assert torch.equal(before, model.features[1].weight)


def test_same_seed_same_R_and_different_seed_differs(tmp_path: Path) -> None:
    a = run(tiny_config(tmp_path / "a", "naive"))
    b = run(tiny_config(tmp_path / "b", "naive"))
    c = run(tiny_config(tmp_path / "c", "naive", seed=1))
    assert a.R == b.R and a.R_pretrain == b.R_pretrain
    assert a.R != c.R


def test_task_incremental_masks_logits_to_task_classes() -> None:
    stream = tiny_stream(scenario_type="task_incremental")
    exp0 = stream.experiences[0]  # classes (0, 1)

    class Constant(torch.nn.Module):  # always prefers class 5, then class 1
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(len(x), stream.num_classes)
            out[:, 5], out[:, 1] = 3.0, 2.0
            return out

    seen_tasks: list[torch.Tensor | None] = []

    class Spy(Method):
        def predict(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
            seen_tasks.append(batch.task)
            assert batch.y is None
            return model(batch.x)

    aware = Evaluator(torch.device("cpu"), 16, task_class_mask(stream.experiences, stream.num_classes))
    blind = Evaluator(torch.device("cpu"), 16, None)
    frac_1 = float((exp0.test.y == 1).float().mean())
    assert aware.row(Constant(), Spy(), [exp0])[0] == frac_1
    assert seen_tasks[-1] is not None and bool((seen_tasks[-1] == 0).all())
    assert blind.row(Constant(), Spy(), [exp0])[0] == 0.0
    assert seen_tasks[-1] is None  # task ids hidden outside task-incremental streams


def test_head_lr_gives_the_head_its_own_param_group() -> None:
    model = _model()
    params = list(model.parameters())
    cfg = TrainerConfig(lr=0.01, head_lr=0.5, optimizer="adamw", weight_decay=0.01)
    opt = build_optimizer(param_groups(model, params, cfg), cfg)
    body, head = opt.param_groups
    assert (body["lr"], head["lr"]) == (0.01, 0.5) and head["weight_decay"] == body["weight_decay"] == 0.01
    assert {id(p) for p in head["params"]} == {id(p) for p in model.head.parameters()}
    assert len(body["params"]) + len(head["params"]) == len(params)
    # default: one group at trainer.lr, the parameter list untouched
    plain = TrainerConfig(lr=0.01)
    assert param_groups(model, params, plain) is params
    assert len(build_optimizer(param_groups(model, params, plain), plain).param_groups) == 1
    # a model naming its head explicitly; a model without a head is refused
    model.head_parameter_names = lambda: ["features.1.bias"]  # type: ignore[assignment]
    groups = param_groups(model, params, cfg)
    assert [len(g["params"]) for g in groups] == [len(params) - 1, 1]  # type: ignore[index]
    with pytest.raises(ConfigError, match="trainer.head_lr"):
        param_groups(torch.nn.Sequential(torch.nn.Linear(2, 2)), params, cfg)
    with pytest.raises(ConfigError, match="trainer.head_lr"):
        TrainerConfig(head_lr=-1.0)


def test_head_lr_trains_only_the_head_when_lr_is_zero() -> None:
    exp = tiny_stream().experiences[0]
    model = _model()
    before = copy.deepcopy(model)
    _trainer(lr=0.0, head_lr=0.1, momentum=0.0).train_experience(model, Method(), exp, [exp],
                                                                 torch.Generator().manual_seed(0))
    assert params_equal(model.features, before.features)
    assert not torch.equal(model.head.weight, before.head.weight)

    class OwnOptimizer(Method):  # a method that is an optimizer keeps its own groups
        def optimizer(self, params, cfg):  # type: ignore[no-untyped-def]
            return torch.optim.SGD(params, lr=0.0)

    _trainer(lr=0.0, head_lr=0.1).train_experience(before, OwnOptimizer(), exp, [exp], torch.Generator())
    assert params_equal(before, _model())  # lr 0 everywhere: head_lr did not reach its optimizer


def test_schedules_follow_warmup_then_constant_linear_or_cosine_decay_per_experience() -> None:
    """The learning rate of each optimizer step, recorded by a method, against the formulas."""
    import math

    class Recorder(Method):
        def __init__(self) -> None:
            super().__init__()
            self.lrs: list[float] = []
            self.opt: torch.optim.Optimizer | None = None

        def optimizer(self, params: list[torch.nn.Parameter], cfg: TrainerConfig) -> torch.optim.Optimizer:
            self.opt = build_optimizer(params, cfg)
            return self.opt

        def on_after_step(self, model: torch.nn.Module) -> None:
            assert self.opt is not None
            self.lrs.append(self.opt.param_groups[0]["lr"])

    exp = tiny_stream().experiences[0]
    steps = 2 * math.ceil(len(exp.train) / 8)  # 2 epochs of batch 8
    warm = round(0.25 * steps)

    def expected(kind: str, t: int) -> float:  # the rate used at step t (0-based)
        if t < warm:
            return 0.05 * t / warm
        frac = (t - warm) / (steps - warm)
        return 0.05 * {"constant": 1.0, "linear": 1.0 - frac, "cosine": 0.5 * (1 + math.cos(math.pi * frac))}[kind]

    for kind in ("constant", "linear", "cosine"):
        rec = Recorder()
        _trainer(scheduler=kind, warmup_ratio=0.25).train_experience(_model(), rec, exp, [exp], torch.Generator())
        # on_after_step runs before the scheduler's update: it sees the rate step t used
        assert rec.lrs == pytest.approx([expected(kind, t) for t in range(steps)]), kind
        again = Recorder()  # the next experience starts its own schedule
        _trainer(scheduler=kind, warmup_ratio=0.25).train_experience(_model(), again, exp, [exp], torch.Generator())
        assert again.lrs == rec.lrs
    plain = Recorder()
    _trainer().train_experience(_model(), plain, exp, [exp], torch.Generator())
    assert set(plain.lrs) == {0.05}
    with pytest.raises(ConfigError, match="trainer.warmup_ratio"):
        TrainerConfig(warmup_ratio=1.0)


def test_no_decay_norms_biases_puts_1d_parameters_in_a_group_without_weight_decay() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model.head = torch.nn.Linear(4, 2)  # type: ignore[assignment]
    params = list(model.parameters())
    cfg = TrainerConfig(optimizer="adamw", weight_decay=0.1, no_decay_norms_biases=True, head_lr=0.5)
    groups = build_optimizer(param_groups(model, params, cfg), cfg).param_groups
    shapes = [([tuple(p.shape) for p in g["params"]], g["weight_decay"], g["lr"]) for g in groups]
    assert shapes == [([(4, 4)], 0.1, 0.01), ([(4,), (4,), (4,)], 0.0, 0.01),
                      ([(2, 4)], 0.1, 0.5), ([(2,)], 0.0, 0.5)]


def test_gradient_checkpointing_gives_the_same_gradients_on_a_hugging_face_model() -> None:
    from clbench.schedules import enable_gradient_checkpointing
    from clbench.tiny_models import TINY_VOCAB, tiny_llama

    ids = torch.randint(0, TINY_VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        model = tiny_llama(seed=0).train()
        if checkpointing:
            assert enable_gradient_checkpointing(model) == 1 and model.is_gradient_checkpointing
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])
    with pytest.raises(ConfigError, match="trainer.gradient_checkpointing"):
        enable_gradient_checkpointing(_model())

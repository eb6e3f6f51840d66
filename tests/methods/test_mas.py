"""MAS: output-norm importance, penalty arithmetic, alpha decay, task heads, LM path, state."""

from __future__ import annotations

import io

import pytest
import torch
from torch import Tensor, nn

from clbench.errors import ConfigError
from clbench.objectives import LanguageModelingObjective
from clbench.options import build_dataclass
from clbench.streams import Batch, Experience, Split, StreamInfo
from methods.mas import MAS, MASConfig, squared_output_norm


def _linear(seed: int = 0, n_out: int = 3) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(4, n_out)


def _exp(index: int = 0, n: int = 10, classes: tuple[int, ...] = (0, 1, 2), seed: int = 0) -> Experience:
    g = torch.Generator().manual_seed(seed)
    split = Split(torch.randn(n, 4, generator=g), torch.tensor(classes).repeat(n)[:n])
    return Experience(index, 0, classes, split, split, split)


def _batch() -> Batch:
    return Batch(torch.ones(2, 4), torch.tensor([0, 1]))


def test_importance_is_the_mean_absolute_gradient_of_the_squared_output_norm() -> None:
    exp, model = _exp(n=10), _linear()
    mas = MAS(MASConfig(importance_batch_size=4))
    mas.on_experience_end(exp, model)
    # y = W x + b, mean_i ||y_i||^2: dW = 2/n sum_i y_i x_i^T, db = 2/n sum_i y_i, per batch
    w_imp, b_imp = torch.zeros(3, 4), torch.zeros(3)
    starts = range(0, 10, 4)
    with torch.no_grad():
        for i in starts:
            x = exp.train.x[i : i + 4]
            y = model(x)
            w_imp += (2 * y.T @ x / len(x)).abs() / len(starts)
            b_imp += (2 * y.mean(0)).abs() / len(starts)
    torch.testing.assert_close(mas.importance["weight"], w_imp)
    torch.testing.assert_close(mas.importance["bias"], b_imp)
    assert all((v >= 0).all() for v in mas.importance.values())
    assert float(mas.importance["weight"].sum()) > 0
    for n, p in model.named_parameters():
        torch.testing.assert_close(mas.saved_params[n], p.detach())


def test_importance_needs_no_labels() -> None:
    exp, model = _exp(), _linear()
    relabelled = Experience(0, 0, exp.classes, Split(exp.train.x, exp.train.y.flip(0)), exp.val, exp.test)
    a, b = MAS(), MAS()
    a.on_experience_end(exp, model)
    b.on_experience_end(relabelled, model)
    for n in a.importance:
        assert torch.equal(a.importance[n], b.importance[n])


def test_penalty_is_zero_at_the_anchor_and_hand_computed_elsewhere() -> None:
    mas, model = MAS(MASConfig(lambda_reg=2.0)), _linear()
    base = torch.tensor(0.5)
    assert mas.loss(model, _batch(), model(_batch().x), base) is base  # no importance yet
    mas.on_experience_end(_exp(), model)
    loss = mas.loss(model, _batch(), model(_batch().x), base)
    assert float(loss.detach()) == 0.5 and float(mas.penalty(model).detach()) == 0.0
    with torch.no_grad():
        model.weight[0, 0] += 0.5
        model.bias[2] -= 1.0
    omega = mas.importance
    expected = 2.0 * (float(omega["weight"][0, 0]) * 0.25 + float(omega["bias"][2]) * 1.0)
    loss = mas.loss(model, _batch(), model(_batch().x), base)
    assert float(loss.detach()) == pytest.approx(0.5 + expected, rel=1e-5)
    loss.backward()
    assert model.weight.grad is not None
    # d/dw00 of 2 * omega00 * (w00 - w00*)^2 = 4 * omega00 * 0.5
    assert float(model.weight.grad[0, 0]) == pytest.approx(2.0 * float(omega["weight"][0, 0]), rel=1e-5)


def test_importance_accumulates_with_alpha_decay() -> None:
    model = _linear()
    mas, single = MAS(MASConfig(alpha=0.3)), MAS()
    e0, e1 = _exp(0, seed=0), _exp(1, seed=1)
    mas.on_experience_end(e0, model)
    first = {n: t.clone() for n, t in mas.importance.items()}
    with torch.no_grad():
        model.weight.add_(0.2)
    mas.on_experience_end(e1, model)
    single.on_experience_end(e1, model)
    for n, t in mas.importance.items():
        torch.testing.assert_close(t, 0.3 * first[n] + 0.7 * single.importance[n])
        torch.testing.assert_close(mas.saved_params[n], dict(model.named_parameters())[n].detach())


def test_a_frozen_parameter_gets_no_new_importance_and_decays() -> None:
    model, mas = _linear(), MAS(MASConfig(alpha=0.5))
    model.bias.requires_grad_(False)
    mas.on_experience_end(_exp(0), model)
    assert set(mas.importance) == {"weight"}  # frozen: nothing to protect
    model.bias.requires_grad_(True)
    model.weight.requires_grad_(False)
    fresh = MAS()
    fresh.on_experience_end(_exp(1, seed=1), model)
    old_w = mas.importance["weight"].clone()
    mas.on_experience_end(_exp(1, seed=1), model)
    torch.testing.assert_close(mas.importance["weight"], 0.5 * old_w)  # Avalanche: new importance 0
    torch.testing.assert_close(mas.importance["bias"], 0.5 * fresh.importance["bias"])


def test_importance_pass_leaves_grads_mode_and_weights_alone() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mas = MAS()
    mas.loss(model, Batch(torch.ones(3, 4), torch.zeros(3, dtype=torch.long)), torch.zeros(3, 3),
             torch.tensor(0.0))  # batch size 3 inferred
    mas.on_experience_end(_exp(), model)
    again = MAS(MASConfig(importance_batch_size=3))
    again.on_experience_end(_exp(), model)  # eval mode: dropout off, so the pass is deterministic
    assert all(torch.equal(mas.importance[n], again.importance[n]) for n in mas.importance)
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_task_incremental_norm_covers_the_experience_classes_only() -> None:
    model = _linear(n_out=6)
    mas = MAS()
    mas.setup(model, StreamInfo("t", "task_incremental", 2, 6, (4,), ((0, 1, 2), (3, 4, 5))))
    mas.on_experience_end(_exp(classes=(3, 4, 5)), model)
    assert float(mas.importance["weight"][:3].abs().sum()) == 0.0  # other task's head rows
    assert float(mas.importance["weight"][3:].abs().sum()) > 0.0


def test_token_outputs_norm_covers_the_positions_the_loss_covers() -> None:
    outputs = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    ids = torch.zeros(2, 4, dtype=torch.long)
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 1]])
    x = torch.stack([ids, mask], dim=1)
    # covered next tokens: (0, 1), (0, 2), (1, 3) -> logits at positions (0, 0), (0, 1), (1, 2)
    rows = [outputs[0, 0], outputs[0, 1], outputs[1, 2]]
    expected = sum(float(r.pow(2).sum()) for r in rows) / 3
    assert float(squared_output_norm(outputs, x, token_outputs=True)) == pytest.approx(expected)
    logits = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert float(squared_output_norm(logits, x, token_outputs=False)) == pytest.approx((25 + 1) / 2)


def test_language_model_importance_runs_on_packed_token_inputs() -> None:
    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.emb = nn.Embedding(7, 5)
            self.out = nn.Linear(5, 7)

        def forward(self, x: Tensor) -> Tensor:
            return self.out(self.emb(x[:, 0]))

    ids = torch.randint(0, 7, (4, 6), generator=torch.Generator().manual_seed(0))
    x = torch.stack([ids, torch.ones_like(ids)], dim=1)
    exp = Experience(0, 0, (), Split(x, torch.zeros(4, dtype=torch.long)), Split(x, torch.zeros(4)),
                     Split(x, torch.zeros(4)))
    mas, model = MAS(), TinyLM()
    mas.objective = LanguageModelingObjective()
    mas.on_experience_end(exp, model)
    assert set(mas.importance) == {"emb.weight", "out.weight", "out.bias"}
    unused = sorted(set(range(7)) - set(ids[:, :-1].flatten().tolist()))  # last column predicts nothing
    assert all(float(mas.importance["emb.weight"][t].abs().sum()) == 0.0 for t in unused)
    assert float(mas.importance["out.weight"].sum()) > 0


def test_state_dict_round_trips_through_weights_only_load() -> None:
    model = _linear()
    mas = MAS(MASConfig(lambda_reg=3.0))
    mas.on_experience_end(_exp(), model)
    with torch.no_grad():
        model.weight.mul_(1.5)
    buf = io.BytesIO()
    torch.save(mas.state_dict(), buf)
    buf.seek(0)
    restored = MAS(MASConfig(lambda_reg=3.0))
    restored.load_state_dict(torch.load(buf, weights_only=True))
    out, base = model(_batch().x), torch.tensor(0.0)
    penalty = float(restored.loss(model, _batch(), out, base).detach())
    assert penalty == float(mas.loss(model, _batch(), out, base).detach()) > 0
    assert restored.experience_report() == mas.experience_report()
    assert mas.experience_report()["mean_importance"] > 0


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="lambda_reg"):
        build_dataclass(MASConfig, {"lambda_reg": -1.0}, "method")
    with pytest.raises(ValueError, match="alpha"):
        MASConfig(alpha=1.5)
    with pytest.raises(ValueError, match="importance_batch_size"):
        MASConfig(importance_batch_size=-1)

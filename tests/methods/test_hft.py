"""HFT: category-level draws per block, frozen = no update and no optimizer state, resets, fallback."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from clbench.config import TrainerConfig
from clbench.errors import ConfigError
from clbench.models import MLP, MLPConfig
from clbench.options import build_dataclass
from clbench.protocol import Method
from clbench.runner import run
from clbench.streams import Experience
from clbench.testing import tiny_stream, tiny_vit_config
from clbench.trainer import Trainer, build_optimizer
from clbench.vit import ViT, ViTConfig
from methods.hft import HFT, HFTConfig

STREAM = tiny_stream(n_experiences=3, image=True)
EXPS = STREAM.experiences


def _vit(depth: int = 4) -> Any:  # Any: attribute access to submodules without casts
    torch.manual_seed(0)
    return ViT(STREAM.info(), ViTConfig(patch=2, dim=16, depth=depth, heads=2))


def _frozen(module: Any) -> bool:
    params = list(module.parameters())
    assert len({p.requires_grad for p in params}) == 1, "weight and bias are frozen together"
    return not params[0].requires_grad


def _draw(method: HFT, model: nn.Module, exp: Experience) -> list[str]:
    method.on_experience_start(exp, model)
    names = list(method.experience_report()["frozen_modules"])
    method.on_experience_end(exp, model)
    return names


def test_category_draw_freezes_half_of_each_kind_in_every_block() -> None:
    model, hft = _vit(), HFT(HFTConfig(seed=0))
    hft.on_experience_start(EXPS[0], model)
    for blk in model.blocks:
        a = blk.attn
        assert sum(_frozen(m) for m in (a.q_proj, a.k_proj, a.v_proj, a.o_proj)) == 2
        assert sum(_frozen(m) for m in (blk.mlp.up_proj, blk.mlp.down_proj)) == 1  # 1 of 2 FFN
        assert sum(_frozen(m) for m in (blk.norm1, blk.norm2)) == 1
    outside = [model.patch_embed.weight, model.cls_token, model.pos_embed, *model.norm.parameters(),
               *model.head.parameters()]
    assert all(p.requires_grad for p in outside)
    report = hft.experience_report()
    assert len(report["frozen_modules"]) == 4 * 4 and report["frozen_matrix_fraction"] == 0.5
    assert 0.45 < report["frozen_pool_param_fraction"] < 0.55
    assert report["frozen_param_fraction"] < report["frozen_pool_param_fraction"]


class _LlamaBlock(nn.Module):
    """Llama-style names: GQA k/v, gate/up/down, two RMSNorms."""

    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.Module()
        for name, out in (("q_proj", 8), ("k_proj", 4), ("v_proj", 4), ("o_proj", 8)):
            setattr(self.self_attn, name, nn.Linear(8, out, bias=False))
        self.mlp = nn.Module()
        self.mlp.gate_proj, self.mlp.up_proj = nn.Linear(8, 12, bias=False), nn.Linear(8, 12, bias=False)
        self.mlp.down_proj = nn.Linear(12, 8, bias=False)
        self.input_layernorm, self.post_attention_layernorm = nn.RMSNorm(8), nn.RMSNorm(8)


@pytest.mark.parametrize("seed", range(5))
def test_three_matrix_ffn_freezes_two_in_half_the_blocks_one_in_the_rest(seed: int) -> None:
    model: Any = nn.Module()
    model.embed_tokens, model.layers = nn.Embedding(10, 8), nn.ModuleList(_LlamaBlock() for _ in range(4))
    model.norm, model.lm_head = nn.RMSNorm(8), nn.Linear(8, 10, bias=False)
    HFT(HFTConfig(seed=seed)).on_experience_start(EXPS[0], model)
    ffn = sorted(sum(_frozen(m) for m in (b.mlp.gate_proj, b.mlp.up_proj, b.mlp.down_proj))
                 for b in model.layers)
    assert ffn == [1, 1, 2, 2]
    for b in model.layers:
        a: Any = b.self_attn
        assert sum(_frozen(m) for m in (a.q_proj, a.k_proj, a.v_proj, a.o_proj)) == 2
        assert _frozen(b.input_layernorm) != _frozen(b.post_attention_layernorm)
    assert all(p.requires_grad for m in (model.embed_tokens, model.norm, model.lm_head) for p in m.parameters())


class _Probe(HFT):
    """HFT that snapshots the parameters at experience start and checks them at experience end."""

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        super().on_experience_start(exp, model)
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.frozen_at_start = {n for n, p in model.named_parameters() if not p.requires_grad}

    def on_experience_end(self, exp: Experience, model: nn.Module) -> None:
        after = dict(model.named_parameters())
        self.unchanged = {n for n, t in self.before.items() if torch.equal(t, after[n])}
        super().on_experience_end(exp, model)


def _train(model: nn.Module, method: Method, **trainer: Any) -> None:
    cfg = TrainerConfig(**{"epochs": 1, "batch_size": 8, "lr": 0.05, "progress": False, **trainer})
    Trainer(cfg, torch.device("cpu")).train_experience(model, method, EXPS[0], EXPS[:1],
                                                       torch.Generator().manual_seed(0))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_frozen_parameters_are_bit_identical_after_training_with_decay(optimizer: str) -> None:
    model, probe = _vit(depth=2), _Probe(HFTConfig(seed=1))
    _train(model, probe, optimizer=optimizer, momentum=0.9, weight_decay=0.1)
    assert len(probe.frozen_at_start) == 2 * (2 + 1 + 1) * 2  # 2 blocks x (2 attn + 1 FFN + 1 norm) x (weight, bias)
    assert probe.unchanged == probe.frozen_at_start  # frozen: unchanged; trainable: all moved
    assert all(p.requires_grad for p in model.parameters())  # everything trainable again


class _Capture:
    """Mixin: build the trainer's default optimizer and keep it for inspection."""

    opt: torch.optim.Optimizer

    def optimizer(self, params: list[nn.Parameter], cfg: TrainerConfig) -> torch.optim.Optimizer:
        self.opt = build_optimizer(params, cfg)
        return self.opt


class _HFTCapture(_Capture, HFT):
    pass


class _NaiveCapture(_Capture, Method):
    pass


def _state_elements(model: nn.Module, opt: torch.optim.Optimizer, prefix: str) -> int:
    """Elements of Adam's exp_avg + exp_avg_sq tensors for parameters named ``prefix...``."""
    names = {id(p): n for n, p in model.named_parameters()}
    return sum(s["exp_avg"].numel() + s["exp_avg_sq"].numel() for p, s in opt.state.items()
               if names[id(p)].startswith(prefix))


def test_optimizer_state_over_block_parameters_is_half_of_naive() -> None:
    counts = {}
    for name, method in (("hft", _HFTCapture(HFTConfig(seed=2))), ("naive", _NaiveCapture())):
        model = _vit()
        _train(model, method, optimizer="adam")
        counts[name] = (_state_elements(model, method.opt, "blocks."), _state_elements(model, method.opt, ""))
    (hft_blocks, hft_all), (naive_blocks, naive_all) = counts["hft"], counts["naive"]
    assert 0.45 < hft_blocks / naive_blocks < 0.55
    assert naive_all - naive_blocks == hft_all - hft_blocks  # embeddings, final norm, head: full state


def test_draws_differ_across_experiences_and_repeat_for_the_same_seed() -> None:
    model = _vit()
    draws = [_draw(HFT(HFTConfig(seed=7)), model, e) for e in EXPS]
    assert len({tuple(d) for d in draws}) == 3
    assert draws == [_draw(HFT(HFTConfig(seed=7)), model, e) for e in EXPS]
    assert draws != [_draw(HFT(HFTConfig(seed=8)), model, e) for e in EXPS]
    by_torch_seed = []
    for torch_seed in (5, 5, 6):  # seed=None follows the global torch seed (the runner's per-experience one)
        torch.manual_seed(torch_seed)
        by_torch_seed.append(_draw(HFT(), model, EXPS[0]))
    assert by_torch_seed[0] == by_torch_seed[1] != by_torch_seed[2]


def test_unfreezes_only_what_it_froze() -> None:
    model = _vit()
    foreign = [model.blocks[0].attn.q_proj.weight, model.head.bias]
    for p in foreign:
        p.requires_grad_(False)
    hft = HFT(HFTConfig(seed=3))
    hft.on_experience_start(EXPS[0], model)
    assert hft.frozen_params and not {"blocks.0.attn.q_proj.weight", "head.bias"} & set(hft.frozen_params)
    hft.on_experience_end(EXPS[0], model)
    assert [p.requires_grad for p in foreign] == [False, False]
    assert sum(not p.requires_grad for p in model.parameters()) == 2
    assert hft.frozen_params == []


def test_state_dict_round_trips_through_weights_only_load() -> None:
    model, hft = _vit(), HFT(HFTConfig(seed=4))
    for e in EXPS[:2]:
        _draw(hft, model, e)
    buf = io.BytesIO()
    torch.save(hft.state_dict(), buf)
    buf.seek(0)
    restored = HFT(HFTConfig(seed=4))
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert restored.history == hft.history and restored.experience_report() == hft.experience_report()
    assert _draw(restored, model, EXPS[2]) == _draw(hft, model, EXPS[2])


def test_mlp_fallback_freezes_half_of_the_hidden_linears_never_the_head() -> None:
    torch.manual_seed(0)
    model = MLP(STREAM.info(), MLPConfig(hidden=8, layers=4))
    hidden = [m for m in model.features if isinstance(m, nn.Linear)]
    for seed in range(5):
        hft = HFT(HFTConfig(seed=seed))
        hft.on_experience_start(EXPS[0], model)
        assert sum(_frozen(m) for m in hidden) == 2 and not _frozen(model.head)
        assert hft.experience_report()["frozen_matrix_fraction"] == 0.5
        hft.on_experience_end(EXPS[0], model)
    odd = MLP(STREAM.info(), MLPConfig(hidden=8, layers=3))
    counts = {len(_draw(HFT(HFTConfig(seed=s)), odd, EXPS[0])) for s in range(20)}
    assert counts == {1, 2}  # an odd count rounds up or down at random


def test_layer_and_model_granularity_ablations() -> None:
    model = _vit()
    layer = HFT(HFTConfig(granularity="layer", seed=0))
    layer.on_experience_start(EXPS[0], model)
    assert sorted(_frozen(b) for b in model.blocks) == [False, False, True, True]
    layer.on_experience_end(EXPS[0], model)
    pooled = HFT(HFTConfig(granularity="model", seed=0))
    pooled.on_experience_start(EXPS[0], model)
    modules = [m for b in model.blocks for m in b.modules() if isinstance(m, nn.Linear | nn.LayerNorm)]
    assert sum(_frozen(m) for m in modules) == len(modules) // 2 == 16
    assert all(p.requires_grad for p in model.head.parameters())


def test_runner_logs_a_fresh_draw_and_the_frozen_fraction_per_experience(tmp_path: Path) -> None:
    res = run(tiny_vit_config(tmp_path, "hft", **{"foundation.epochs": 1, "trainer.epochs": 1,
                                                   "eval.validation": False}))
    reports = [e.method for e in res.per_experience]
    assert len({tuple(r["frozen_modules"]) for r in reports}) == 3
    fractions = res.mechanism["frozen_param_fraction"]
    assert fractions == [r["frozen_param_fraction"] for r in reports] and len(fractions) == 3
    assert all(isinstance(f, float) and 0.0 < f < 0.5 for f in fractions)  # half the blocks' modules
    assert all(r["frozen_matrix_fraction"] == 0.5 and len(r["draw_seed"]) > 0 for r in reports)
    assert all(e.trainable_params == res.per_experience[0].trainable_params
               for e in res.per_experience)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="granularity"):
        build_dataclass(HFTConfig, {"granularity": "element"}, "method")
    with pytest.raises(ValueError, match="granularity"):
        HFTConfig(granularity="block")  # type: ignore[arg-type]

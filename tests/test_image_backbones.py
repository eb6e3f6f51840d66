"""The generic image backbones of clbench/backbones.py on tiny random configs, offline:
``hf_image`` (any transformers ``AutoModelForImageClassification`` model, ``model.tiny=true`` a
small random ViT) and ``timm`` (any timm model by ``model.arch``; timm's ``test_*`` architectures
here). Each builds a fresh Linear head over its pooled feature, takes a uint8 image stream through
the model's normalising pre-hook, trains through the runner, exposes module roles where they are
recognised (transformers' ViT family; timm ViTs with their qkv split), loads local weights, and
refuses what it cannot load with one clear error."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import clbench.backbones as backbones
from clbench.augment import ImageInputs
from clbench.backbones import TIMM_PIN
from clbench.errors import ConfigError, DataUnavailableError
from clbench.models import build_model
from clbench.modules import block_norms, block_roles, role_patterns, transformer_blocks
from clbench.protocol import Scenario
from clbench.registry import SCENARIOS
from clbench.runner import run
from clbench.streams import Experience, Split, Stream, StreamInfo
from clbench.testing import tiny_config

INPUTS = ImageInputs(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
INFO = StreamInfo("images", "class_incremental", 1, 10, (3, 32, 32), (tuple(range(10)),), inputs=INPUTS)
# name -> (registry name, options): random init, nothing downloaded
TINY: dict[str, tuple[str, dict[str, Any]]] = {
    "hf_vit": ("hf_image", {"tiny": True}),
    "timm_vit_split": ("timm", {"arch": "test_vit"}),
    "timm_convnext": ("timm", {"arch": "test_convnext"}),
    "timm_resnet": ("timm", {"arch": "test_resnet"}),
}
HF_VIT_ROLES = {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
                "o": "attention.o_proj", "up": "mlp.fc1", "down": "mlp.fc2"}


def _images(n: int, size: int = 32, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def _timm() -> Any:
    return pytest.importorskip("timm", reason=f"model timm needs {TIMM_PIN} (not installed)")


def _build(key: str, info: StreamInfo = INFO, **options: Any) -> nn.Module:
    name, tiny = TINY[key]
    if name == "timm":
        _timm()
    torch.manual_seed(0)
    return build_model(name, info, {**tiny, **options})[0]


def _info(channels: int = 3, size: int = 32, classes: int = 10) -> StreamInfo:
    inputs = ImageInputs(mean=(0.5,) * channels, std=(0.25,) * channels)
    return StreamInfo("images", "class_incremental", 1, classes, (channels, size, size), (tuple(range(classes)),),
                      inputs=inputs)


def _save_hf(tmp: Path, model_type: str, **config: Any) -> Path:
    """A tiny random transformers image-classification model saved with save_pretrained."""
    from transformers import AutoConfig, AutoModelForImageClassification

    torch.manual_seed(4)
    net = AutoModelForImageClassification.from_config(AutoConfig.for_model(model_type, **config))
    path = tmp / model_type
    net.save_pretrained(path)
    return path


def _tiny_hf_vit(tmp: Path, **config: Any) -> Path:
    return _save_hf(tmp, "vit", **{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                                   "intermediate_size": 64, "image_size": 32, "patch_size": 8, **config})


def _tiny_hf_convnext(tmp: Path) -> Path:
    return _save_hf(tmp, "convnext", hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=7)


# ---- every new model: shapes, uint8 input, fresh head -----------------------------------------

@pytest.mark.parametrize("key", sorted(TINY))
def test_builds_a_fresh_head_over_the_pooled_feature_and_takes_uint8_images(key: str) -> None:
    model = _build(key)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 10
    assert list(model.named_children())[-1][0] == "head"  # the last Linear: methods' head finders
    assert model.is_pretrained is False  # random init
    x = _images(4)
    model.eval()
    with torch.no_grad():
        feats = model.features(INPUTS.normalize(x))
        assert feats.shape == (4, model.head.in_features)
        out = model(x)  # uint8: normalised by the pre-hook build_model attached
        assert out.shape == (4, 10) and torch.isfinite(out).all()
        torch.testing.assert_close(out, model.head(feats), rtol=0, atol=0)


class _TinyImages(Scenario):
    """2 experiences x 2 classes of random 3x32x32 uint8 images (learnable: a class-wise offset)."""

    def build(self) -> Stream:
        g = torch.Generator().manual_seed(0)

        def split(classes: tuple[int, ...], n: int) -> Split:
            y = torch.tensor(classes).repeat_interleave(n)
            noise = torch.randint(0, 64, (len(y), 3, 32, 32), generator=g)
            return Split((noise + 48 * y.view(-1, 1, 1, 1)).to(torch.uint8), y)

        exps = tuple(Experience(i, 0, c, split(c, 6), split(c, 2), split(c, 2)) for i, c in enumerate(((0, 1), (2, 3))))
        return Stream("tiny_images", "1", "class_incremental", exps, 4, "uint8 test images", inputs=INPUTS)


@pytest.fixture
def tiny_images() -> Iterator[str]:
    with SCENARIOS.override("tiny_images", _TinyImages):
        yield "tiny_images"


@pytest.mark.parametrize(("key", "method"), [("hf_vit", "naive"), ("hf_vit", "lae"),
                                             ("timm_vit_split", "naive"), ("timm_vit_split", "hft"),
                                             ("timm_convnext", "naive")])
def test_the_runner_trains_methods_on_a_uint8_stream(key: str, method: str, tiny_images: str,
                                                     tmp_path: Path) -> None:
    name, tiny = TINY[key]
    if name == "timm":
        _timm()
    values = {"scenario": tiny_images, "model": name, **{f"model.{k}": v for k, v in tiny.items()},
              "trainer.epochs": 1, "trainer.batch_size": 4, "trainer.lr": 0.01}
    res = run(tiny_config(tmp_path, method, **values))
    assert res.status == "finished" and res.model.name == name
    assert len(res.R) == 2 and all(len(row) == 2 for row in res.R)
    assert all(0.0 <= a <= 1.0 for row in res.R for a in row)
    if method == "lae":  # the backbone is frozen: only the adapters and the head train
        assert 0 < res.model.trainable_params < res.model.total_params


# ---- hf_image: roles, local directories, offline -------------------------------------------------

def test_hf_vit_blocks_expose_q_k_v_o_up_down_roles_and_two_norms() -> None:
    model = _build("hf_vit")
    blocks = transformer_blocks(model)
    assert [n for n, _ in blocks] == ["features.net.vit.layers.0", "features.net.vit.layers.1"]
    for _, block in blocks:
        assert {r: n for r, (n, _) in block_roles(block, role_patterns(model)).items()} == HF_VIT_ROLES
        assert [n for n, _ in block_norms(block)] == ["layernorm_before", "layernorm_after"]


def test_hft_freezes_half_of_each_category_of_hf_vit_blocks() -> None:
    from methods.hft import HFT, HFTConfig, block_groups

    model = _build("hf_vit")
    for name, block in transformer_blocks(model):
        groups = block_groups(name, block, role_patterns(model))
        assert [n for n, _ in groups["attention"]] == [f"{name}.attention.{r}_proj" for r in "qkvo"]
        assert [n for n, _ in groups["ffn"]] == [f"{name}.mlp.fc1", f"{name}.mlp.fc2"] and not groups["other"]
    method = HFT(HFTConfig(seed=0))
    split = Split(INPUTS.normalize(_images(4)), torch.arange(4))
    method.on_experience_start(Experience(0, 0, tuple(range(10)), split, split, split), model)
    frozen = method.experience_report()["frozen_modules"]
    for name, _ in transformer_blocks(model):
        assert sum(f.startswith(f"{name}.attention.") for f in frozen) == 2
        assert sum(f.startswith(f"{name}.layernorm_") for f in frozen) == 1


def test_lae_and_dynamic_rank_lora_select_the_roles_of_hf_vit() -> None:
    from methods.dynamic_rank_lora import CoDyRA, CoDyRAConfig
    from methods.lae import LAE, LAEConfig

    for config, per_block in ((LAEConfig(pet="adapter", size=2), ["attention"]),
                              (LAEConfig(pet="lora", size=2), ["attention__k_proj", "attention__v_proj"])):
        model = LAE(config).setup(_build("hf_vit"), INFO)
        pets: Any = model.get_submodule("lae_pet")
        assert sorted(pets.keys()) == [f"features__net__vit__layers__{i}__{s}" for i in (0, 1) for s in per_block]
        x = _images(2)
        with torch.no_grad():
            before = model.eval()(x)
            for p in pets.parameters():
                p.normal_()
            assert not torch.allclose(model(x), before)  # the PETs act on the forward pass
    with pytest.raises(ValueError, match="prefix supports the clbench ViT attention only"):
        LAE(LAEConfig(pet="prefix")).setup(_build("hf_vit"), INFO)
    method = CoDyRA(CoDyRAConfig(rank=2))
    method.setup(_build("hf_vit"), INFO)
    assert method.roles == {f"features.net.vit.layers.{i}.{path}": role
                            for i in (0, 1) for role, path in HF_VIT_ROLES.items()}


def test_a_local_directory_loads_its_weights_and_reports_pretrained(tmp_path: Path) -> None:
    from transformers import AutoModelForImageClassification

    path = _tiny_hf_vit(tmp_path)
    ref = AutoModelForImageClassification.from_pretrained(path).eval()
    model = build_model("hf_image", INFO, {"model_id": str(path)})[0].eval()
    assert model.is_pretrained is True and model.head.out_features == 10  # the file's 2 labels: a fresh head
    x = INPUTS.normalize(_images(3))
    with torch.no_grad():
        cls_token = ref.vit(pixel_values=x).last_hidden_state[:, 0]  # what ViT's classifier sees
        torch.testing.assert_close(model.features(x), cls_token, rtol=0, atol=0)
        torch.testing.assert_close(ref.classifier(model.features(x)), ref(pixel_values=x).logits, rtol=0, atol=0)


def test_other_input_sizes_and_grey_images_reach_a_vit_made_for_32px_rgb_not_the_reverse(tmp_path: Path) -> None:
    path = _tiny_hf_vit(tmp_path)
    for info in (_info(size=48), _info(channels=1)):
        model = build_model("hf_image", info, {"model_id": str(path)})[0].eval()
        with torch.no_grad():
            out = model(_images(2, size=info.input_shape[-1], channels=info.input_shape[0]))
        assert out.shape == (2, 10) and torch.isfinite(out).all()
    grey = _tiny_hf_vit(tmp_path / "grey", num_channels=1)
    with pytest.raises(ConfigError, match="3-channel images; it takes 1 channels"):
        build_model("hf_image", INFO, {"model_id": str(grey)})


def test_an_architecture_without_recognised_roles_has_none_and_role_methods_refuse(tmp_path: Path) -> None:
    from methods.dynamic_rank_lora import CoDyRA, CoDyRAConfig
    from methods.lae import LAE, LAEConfig

    model: Any = build_model("hf_image", INFO, {"model_id": str(_tiny_hf_convnext(tmp_path))})[0]
    assert model.head.out_features == 10 and model.head.in_features == 16
    blocks = transformer_blocks(model)  # ConvNeXt's stages hold Linear point-wise convs
    assert blocks and all(block_roles(b, role_patterns(model)) == {} for _, b in blocks)
    with pytest.raises(ValueError, match="could not find q/k/v/o projections"):
        LAE(LAEConfig(pet="adapter")).setup(model, INFO)
    with pytest.raises(ValueError, match="found no Linear layers to adapt"):
        CoDyRA(CoDyRAConfig(rank=2)).setup(build_model("hf_image", INFO, {"model_id": str(tmp_path / "convnext")})[0],
                                           INFO)


def test_a_hub_id_without_a_local_copy_offline_is_one_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub's local cache only (which lacks this id)
    with pytest.raises(DataUnavailableError) as err:
        build_model("hf_image", INFO, {"model_id": "clbench-tests/no-such-image-model"})
    message = str(err.value)
    assert "cannot load model 'clbench-tests/no-such-image-model': HF_HUB_OFFLINE=1" in message
    assert "model.tiny=true" in message and "MiniLM" not in message
    with pytest.raises(DataUnavailableError, match="no such local directory.*model.tiny=true"):
        build_model("hf_image", INFO, {"model_id": str(tmp_path / "missing")})


def test_a_model_auto_image_classification_cannot_build_is_refused(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match=r"model\.model_id.*AutoModelForImageClassification.*'bert'"):
        build_model("hf_image", INFO, {"model_id": str(tmp_path / "bert")})


# ---- timm: weights, heads, the qkv split ----------------------------------------------------------

def _timm_ref(arch: str, seed: int = 2, **kw: Any) -> nn.Module:
    torch.manual_seed(seed)
    if arch == "test_vit":
        kw.setdefault("img_size", 32)
    return _timm().create_model(arch, num_classes=10, **kw).eval()  # type: ignore[no-any-return]


@pytest.mark.parametrize("arch", ["test_resnet", "test_convnext", "test_vit"])
def test_timm_loads_a_state_dict_and_computes_as_timm(arch: str, tmp_path: Path) -> None:
    ref = _timm_ref(arch)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    model = build_model("timm", INFO, {"arch": arch, "weights": str(tmp_path / "w.pth")})[0].eval()
    assert model.is_pretrained is True
    assert torch.equal(model.head.weight, ref.get_classifier().weight)  # the file's head fits: kept
    x = INPUTS.normalize(_images(3))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)
    fresh = build_model("timm", INFO, {"arch": arch, "weights": str(tmp_path / "w.pth"), "keep_head": False})[0]
    assert fresh.is_pretrained is True and not torch.equal(fresh.head.weight, ref.get_classifier().weight)


def test_timm_splits_the_fused_qkv_of_a_plain_vit_into_roles() -> None:
    model = _build("timm_vit_split")
    blocks = transformer_blocks(model)
    assert len(blocks) == 6 and not any(hasattr(b.attn, "qkv") for _, b in blocks)
    for _, block in blocks:
        assert {r: n for r, (n, _) in block_roles(block, role_patterns(model)).items()} == {
            "q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.o", "up": "mlp.fc1", "down": "mlp.fc2"}
    assert transformer_blocks(_build("timm_convnext")) == []  # no block list: methods fall back to every Linear


def test_timm_refuses_an_unknown_arch_a_two_headed_one_and_offline_online_weights(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _timm()
    with pytest.raises(ConfigError, match=r"model\.arch.*timm model name"):
        build_model("timm", INFO, {"arch": "no_such_timm_model"})
    with pytest.raises(ConfigError, match="one Linear layer"):
        build_model("timm", INFO, {"arch": "deit_tiny_distilled_patch16_224"})
    with pytest.raises(DataUnavailableError, match=r"model\.weights=.*no such file"):
        build_model("timm", INFO, {"arch": "test_resnet", "weights": str(tmp_path / "nope.pth")})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(backbones, "_hub_reachable", lambda: False)
    with pytest.raises(DataUnavailableError, match=r"hub is unreachable.*model\.weights=<file>"):
        build_model("timm", INFO, {"arch": "test_resnet", "pretrained_online": True})


def test_timm_without_timm_names_the_package_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(DataUnavailableError, match=f"model timm needs the timm package: pip install '{TIMM_PIN}'"):
        build_model("timm", INFO, {"arch": "test_resnet"})

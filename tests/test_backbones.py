"""Real backbones (clbench/backbones.py) on tiny random configs, offline: each builds for a 3x32x32,
10-class stream, trains an optimizer step through the Trainer, loads a local ``weights=`` file in
its network's own key layout (and refuses a missing or mismatched one); timm_vit's split q/k/v/o
computes what timm's fused model does, and the methods that select modules by role find them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import clbench.backbones as backbones
from clbench.backbones import TIMM_PIN
from clbench.config import TrainerConfig
from clbench.errors import ConfigError, DataUnavailableError
from clbench.models import build_model
from clbench.modules import block_roles, role_patterns, transformer_blocks
from clbench.protocol import Method
from clbench.streams import Experience, Split, StreamInfo
from clbench.trainer import Trainer

INFO = StreamInfo("images", "class_incremental", 1, 10, (3, 32, 32), (tuple(range(10)),))
TINY: dict[str, dict[str, Any]] = {
    "resnet18": {"cifar_stem": True},
    "resnet50": {},
    "wrn28": {"depth": 10, "widen": 1},
    "timm_vit": {"arch": "vit_tiny_patch16_224", "depth": 2},
}
VIT_ROLES = {"q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.o", "up": "mlp.fc1", "down": "mlp.fc2"}


def _timm() -> Any:
    return pytest.importorskip("timm", reason=f"timm_vit needs {TIMM_PIN} (not installed)")


def _x(n: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _exp(n: int = 8) -> Experience:
    split = Split(_x(n), torch.arange(n) % 10)
    return Experience(0, 0, tuple(range(10)), split, split, split)


def _build(name: str, info: StreamInfo = INFO, **options: Any) -> nn.Module:
    if name == "timm_vit":
        _timm()
    torch.manual_seed(0)
    return build_model(name, info, {**TINY[name], **options})[0]


def _train_one_step(model: nn.Module, method: Method | None = None) -> int:
    cfg = TrainerConfig(epochs=1, batch_size=8, lr=0.01, progress=False)
    exp = _exp()
    stats = Trainer(cfg, torch.device("cpu")).train_experience(model, method or Method(), exp, [exp],
                                                               torch.Generator().manual_seed(0))
    return stats.optimizer_steps


# ---- every backbone ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TINY))
def test_builds_for_the_stream_and_trains_one_step(name: str) -> None:
    model = _build(name)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 10
    assert list(model.named_children())[-1][0] == "head"  # the last Linear: methods' head finders
    x = _x(4)
    assert model.features(x).shape == (4, model.head.in_features)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert _train_one_step(model) == 1
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "head.weight" in moved and any(n.startswith("features.") for n in moved)
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_missing_weights_file_is_one_clear_error(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(DataUnavailableError, match=r"model\.weights=.*nope\.pth.*no such file"):
        _build(name, weights=str(missing))


def test_a_file_with_pickled_objects_is_refused_not_unpickled(tmp_path: Path) -> None:
    import argparse

    torch.save({"state_dict": {"fc.bias": torch.zeros(10)}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "w.pt")
    with pytest.raises(ConfigError, match=r"model\.weights.*weights_only=True"):
        _build("wrn28", weights=str(tmp_path / "w.pt"))


def test_a_file_of_another_layout_is_refused_naming_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save(_build("resnet18").features.state_dict(), path)
    with pytest.raises(ConfigError, match=r"model\.weights.*missing \['block1\.layer\.0\.bn1\.bias'"):
        _build("wrn28", weights=str(path))


# ---- torchvision ResNets ----------------------------------------------------------------------

@pytest.mark.parametrize(("arch", "cifar_stem"), [("resnet18", True), ("resnet50", False)])
def test_resnet_loads_a_torchvision_state_dict_and_computes_as_torchvision(arch: str, cifar_stem: bool,
                                                                          tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(1)
    ref = getattr(torchvision.models, arch)(num_classes=10)
    if cifar_stem:  # Mammoth/PyCIL's CIFAR ResNet in torchvision's layout
        ref.conv1, ref.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    model = _build(arch, weights=str(tmp_path / "w.pth"), cifar_stem=cifar_stem)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(_x(4)), ref.eval()(_x(4)), rtol=0, atol=0)
    assert model.features.conv1.kernel_size == ((3, 3) if cifar_stem else (7, 7))


def test_the_files_head_is_kept_only_when_it_fits_the_streams_classes(tmp_path: Path) -> None:
    source = _build("resnet18")
    torch.save({"fc." + k: v for k, v in source.head.state_dict().items()}
               | source.features.state_dict(), tmp_path / "w.pth")
    four = StreamInfo("four", "class_incremental", 1, 4, (3, 32, 32), (tuple(range(4)),))
    for info, keep, same_head in ((INFO, True, True), (INFO, False, False), (four, True, False)):
        torch.manual_seed(5)
        model = build_model("resnet18", info, {"cifar_stem": True, "weights": str(tmp_path / "w.pth"),
                                               "keep_head": keep})[0]
        assert torch.equal(model.features.layer4[1].conv2.weight, source.features.layer4[1].conv2.weight)
        assert model.head.out_features == info.num_classes
        assert (model.head.weight.shape == source.head.weight.shape
                and torch.equal(model.head.weight, source.head.weight)) == same_head


# ---- WideResNet ---------------------------------------------------------------------------------

def _robustbench_keys(depth: int) -> set[str]:
    """RobustBench's WideResNet state-dict keys (model_zoo/architectures/wide_resnet.py)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", "fc.weight", "fc.bias"} | {f"bn1.{b}" for b in bn}
    for g in (1, 2, 3):
        keys.add(f"block{g}.layer.0.convShortcut.weight")
        for i in range((depth - 4) // 6):
            p = f"block{g}.layer.{i}"
            keys |= {f"{p}.conv1.weight", f"{p}.conv2.weight"} | {f"{p}.bn{j}.{b}" for j in (1, 2) for b in bn}
    return keys


def _native(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as the source network names them (its head as ``fc``)."""
    out = {k: v for k, v in model.features.state_dict().items() if not k.startswith("fc.")}
    return out | {f"fc.{k}": v for k, v in model.head.state_dict().items()}


def test_wrn28_10_has_robustbench_standard_layout_and_size() -> None:
    model = build_model("wrn28", INFO, {})[0]  # the default: WideResNet-28-10
    native = _native(model)
    assert set(native) == _robustbench_keys(28)
    assert sum(p.numel() for p in model.parameters()) == 36_479_194  # RobustBench's Standard model
    shapes = {k: tuple(native[k].shape) for k in ("conv1.weight", "block1.layer.0.convShortcut.weight",
                                                   "block3.layer.0.convShortcut.weight", "fc.weight")}
    assert shapes == {"conv1.weight": (16, 3, 3, 3), "block1.layer.0.convShortcut.weight": (160, 16, 1, 1),
                      "block3.layer.0.convShortcut.weight": (640, 320, 1, 1), "fc.weight": (10, 640)}


def test_wrn_loads_a_robustbench_checkpoint_with_its_wrapper_and_prefix(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = build_model("wrn28", INFO, TINY["wrn28"])[0]
    _train_one_step(source)  # running statistics away from their init
    torch.save({"state_dict": {"module." + k: v for k, v in _native(source).items()}}, tmp_path / "Standard.pt")
    model = _build("wrn28", weights=str(tmp_path / "Standard.pt"))
    assert all(torch.equal(v, _native(model)[k]) for k, v in _native(source).items())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(_x(4)), source.eval()(_x(4)), rtol=0, atol=0)


# ---- timm ViT -----------------------------------------------------------------------------------

def _timm_ref(img_size: int = 32) -> nn.Module:
    torch.manual_seed(2)
    return _timm().create_model("vit_tiny_patch16_224", img_size=img_size, depth=2, num_classes=10)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_vit_loads_timm_weights_and_its_split_qkv_computes_as_timm(suffix: str, tmp_path: Path) -> None:
    ref = _timm_ref()
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(ref.state_dict(), str(path))
    else:
        torch.save(ref.state_dict(), path)
    model = _build("timm_vit", weights=str(path))
    for i, block in enumerate(model.features.blocks):
        fused = ref.blocks[i].attn.qkv
        for j, part in enumerate((block.attn.q, block.attn.k, block.attn.v)):
            assert torch.equal(part.weight, fused.weight[j * 192 : (j + 1) * 192])
            assert torch.equal(part.bias, fused.bias[j * 192 : (j + 1) * 192])
        assert not hasattr(block.attn, "qkv") and torch.equal(block.attn.o.weight, ref.blocks[i].attn.proj.weight)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(_x(4)), ref.eval()(_x(4)), rtol=0, atol=1e-6)


def test_timm_vit_resamples_position_embeddings_of_another_image_size(tmp_path: Path) -> None:
    ref = _timm_ref(img_size=64)  # 4x4 patches in the file, 2x2 in the model
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    model = _build("timm_vit", weights=str(tmp_path / "w.pth"))
    assert model.features.pos_embed.shape == (1, 5, 192)
    assert torch.equal(model.features.patch_embed.proj.weight, ref.patch_embed.proj.weight)


def test_timm_vit_pretrained_online_offline_is_one_error_naming_the_local_file_option(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _timm()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(backbones, "_hub_reachable", lambda: False)
    with pytest.raises(DataUnavailableError, match=r"hub is unreachable.*model\.weights=<file>"):
        _build("timm_vit", pretrained_online=True)


def test_timm_vit_without_timm_names_the_package_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(DataUnavailableError, match=f"pip install '{TIMM_PIN}'"):
        build_model("timm_vit", INFO, TINY["timm_vit"])


def test_timm_vit_refuses_an_unknown_arch_or_one_without_timms_plain_attention() -> None:
    _timm()
    with pytest.raises(ConfigError, match=r"model\.arch"):
        _build("timm_vit", arch="vit_no_such_model")
    for arch in ("eva02_tiny_patch14_224", "deit_tiny_distilled_patch16_224"):
        with pytest.raises(ConfigError, match="plain timm VisionTransformer"):
            _build("timm_vit", arch=arch)


# ---- methods that select modules by role, on timm_vit -----------------------------------------

def test_timm_vit_blocks_expose_q_k_v_o_up_down_roles() -> None:
    model = _build("timm_vit")
    blocks = transformer_blocks(model)
    assert [n for n, _ in blocks] == ["features.blocks.0", "features.blocks.1"]
    for _, block in blocks:  # the default patterns and the model's declared ones agree
        for patterns in (None, role_patterns(model)):
            assert {r: n for r, (n, _) in block_roles(block, patterns).items()} == VIT_ROLES


def test_hft_freezes_half_of_each_category_of_timm_vit_blocks() -> None:
    from methods.hft import HFT, HFTConfig, block_groups

    model = _build("timm_vit")
    for name, block in transformer_blocks(model):
        groups = block_groups(name, block)
        assert [n for n, _ in groups["attention"]] == [f"{name}.attn.{r}" for r in "qkvo"]
        assert [n for n, _ in groups["ffn"]] == [f"{name}.mlp.fc1", f"{name}.mlp.fc2"]
        assert [n for n, _ in groups["norm"]] == [f"{name}.norm1", f"{name}.norm2"] and not groups["other"]
    method = HFT(HFTConfig(seed=0))
    method.on_experience_start(_exp(), model)
    frozen = method.experience_report()["frozen_modules"]
    for name, _ in transformer_blocks(model):
        assert sum(f.startswith(f"{name}.attn.") for f in frozen) == 2
        assert sum(f.startswith(f"{name}.mlp.") for f in frozen) == 1
        assert sum(f.startswith(f"{name}.norm") for f in frozen) == 1
    assert all(not p.requires_grad for f in frozen for p in model.get_submodule(f).parameters())


def test_ssu_scores_the_split_projections_of_timm_vit() -> None:
    from methods.ssu import SSU, SSUConfig

    model = _build("timm_vit")
    method = SSU(SSUConfig(calibration_samples=8, calibration_batch_size=8))
    method.on_source_data(model, _exp().train)
    matrices = {n for n, d in method.dims.items() if d == 1}
    expected = {f"features.blocks.{i}.{path}.weight" for i in (0, 1) for path in VIT_ROLES.values()}
    assert expected <= matrices and "head.weight" not in matrices
    method.on_experience_start(_exp(), model)
    assert 0.4 < method.experience_report()["frozen_fraction"] < 0.6


def test_migu_masks_the_split_projections_of_timm_vit() -> None:
    from methods.migu import MIGU, MIGUConfig

    model = _build("timm_vit")
    method = MIGU(MIGUConfig(mask_first_experience=True))
    assert _train_one_step(model, method) == 1
    kept = method.experience_report()["kept_fraction_per_layer"]
    for i in (0, 1):
        for path in VIT_ROLES.values():
            assert kept[f"features.blocks.{i}.{path}"] < 0.5  # threshold 0.7: ~30 % of rows kept


@pytest.mark.parametrize("pet", ["adapter", "lora", "prefix"])
def test_lae_attaches_each_pet_to_timm_vit_blocks(pet: str) -> None:
    from methods.lae import LAE, LAEConfig

    model = _build("timm_vit")
    method = LAE(LAEConfig(pet=pet, size=2, prefix_length=3))
    model = method.setup(model, INFO)
    pets = model.get_submodule("lae_pet")
    per_block = {"adapter": ["attn"], "lora": ["attn__k", "attn__v"], "prefix": ["attn"]}[pet]
    assert sorted(pets.keys()) == [f"features__blocks__{i}__{s}" for i in (0, 1) for s in per_block]
    with torch.no_grad():
        before = model.eval()(_x(4))
        for p in pets.parameters():
            p.normal_()
        assert not torch.allclose(model(_x(4)), before)  # the PETs act on the forward pass
    assert {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("lae_pet.")} == {
        "head.weight", "head.bias"}


def test_dynamic_rank_lora_adapts_every_role_of_timm_vit() -> None:
    from methods.dynamic_rank_lora import CoDyRA, CoDyRAConfig

    model = _build("timm_vit")
    method = CoDyRA(CoDyRAConfig(rank=2))
    model = method.setup(model, INFO)
    assert method.roles == {f"features.blocks.{i}.{path}": role for i in (0, 1) for role, path in VIT_ROLES.items()}
    assert _train_one_step(model, method) == 1
    assert set(method.history[-1]) == set(method.roles)

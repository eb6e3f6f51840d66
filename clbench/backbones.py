"""Owns the real vision backbones: torchvision ResNet-18/50, WideResNet-28-10, timm ViTs, any timm
model and any Hugging Face image-classification model.

Each is ``features`` (the network up to its pooled embedding) then ``head`` (an ``nn.Linear`` for
the stream's classes), as the small models of :mod:`clbench.models`. All but ``hf_image`` (which
loads ``model_id``, see below) start from a random init unless ``weights=<local file>`` names a
state dict in the network's usual key layout (torchvision's, RobustBench's, timm's); nothing is
downloaded by default. The file's classifier
goes into ``head`` when ``keep_head`` and its shape fits the stream's classes (a source model
judged on its own classes), else ``head`` keeps its fresh init; every other key must fit exactly.
Inputs are used as given: the stream's normalisation must be the one the weights were trained
with (ImageNet mean/std for torchvision and timm weights, [0, 1] pixels for RobustBench's).

A backbone built with weights (a ``weights`` file, timm's ``pretrained_online``, a checkpoint
``hf_image`` loads; not its ``tiny`` random model) reports itself
pretrained on the instance (``is_pretrained = True``; False otherwise), so the runner pretrains no
foundation over them on a stream with a source split: the loaded model is the source model. This
holds with ``keep_head=False`` too (the head then keeps its fresh init, untrained on the source).

timm fuses each block's q/k/v projections into one ``qkv`` Linear. ``timm_vit`` splits it, after
any weights are loaded, into ``attn.q``/``attn.k``/``attn.v`` (rows 0:d, d:2d, 2d:3d) and names
the output projection ``attn.o``; ``blocks`` becomes a ``ModuleList``. Role selection
(:mod:`clbench.modules`) then finds q, k, v, o, up (``mlp.fc1``) and down (``mlp.fc2``) in every
block, and the model computes what the fused one does.

``timm`` builds any timm architecture by name (same ``weights``/``pretrained_online``/``keep_head``
options): ``head`` is its classifier Linear (``get_classifier()``), the network's own classifier
is then reset to the identity (``reset_classifier(0)``) so ``features`` ends at its pooled
feature. A plain ViT (``blocks`` of timm's fused-qkv ``Attention``) gets the same q/k/v/o split as
``timm_vit``; other architectures keep their modules, and role selection finds roles only where
the default patterns of :mod:`clbench.modules` know the names (a network without a
``ModuleList`` of blocks, such as timm's CNNs, has no blocks: methods fall back to its Linears).

``hf_image`` builds any model ``AutoModelForImageClassification`` builds, from a hub id or local
directory (resolved by :func:`clbench.hf.resolve_pretrained`: offline, only a local directory or
the hub's local cache; otherwise its one ``DataUnavailableError``, naming the image alternatives),
or a small random ViT (``tiny``). The model's ``classifier`` Linear becomes the identity, so
``features`` gives the pooled feature that classifier saw (ViT: the final-norm CLS token;
ConvNeXt/ResNet: the pooled map), and ``head`` is a fresh Linear for the stream's classes. No
``module_roles`` is declared: the default patterns of :mod:`clbench.modules` already know
transformers' ViT-family names (``q_proj``/``k_proj``/``v_proj``/``o_proj``, ``mlp.fc1``/``fc2``
in transformers 5; ``query``/``key``/``value``, ``attention.output.dense``, ``intermediate.dense``,
``output.dense`` before; CLIP/SigLIP's ``out_proj``), and norms are found by type. Architectures
whose Linears have other names (ConvNeXt's ``pwconv1``/``pwconv2``) get no roles: the role
selections that need q/k/v/o find none and raise their own error. Hierarchical models (Swin)
nest their blocks per stage; the block finder of :mod:`clbench.modules` takes the longest
``ModuleList`` (the deepest stage's blocks, or the stages themselves when none has more blocks
than there are stages), so roles are found in part of such a network only. A Hugging Face
checkpoint expects its ``preprocessor_config.json`` normalisation (e.g. mean/std 0.5 for ViT).
torchvision, timm and transformers are imported when such a model is built, not with this module.
"""

from __future__ import annotations

import inspect
import math
import os
import pickle
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.errors import ConfigError, DataUnavailableError
from clbench.registry import register_model
from clbench.streams import StreamInfo

TIMM_PIN = "timm==1.0.31"  # the version the timm model is tested with


def read_state_dict(path: str) -> dict[str, Tensor]:
    """The tensors of a local weights file (``.safetensors``, or a ``torch.save`` file loaded with
    ``weights_only=True``), taken out of a ``state_dict``/``model`` entry and stripped of the
    ``module.``/``model.`` prefix that wrapped models add (as RobustBench's loader does)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataUnavailableError(
            f"model.weights={path!r}: no such file; give a local state-dict file (.safetensors, or "
            ".pt/.pth/.bin written by torch.save); nothing is downloaded")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(file))
    else:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ConfigError("model.weights", path, "a file torch.load(weights_only=True) reads: tensors in "
                              f"plain containers ({str(exc).splitlines()[0]})") from exc
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError("model.weights", path, "a state dict file (parameter name -> tensor)")
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return dict(state)


def load_into(net: nn.Module, state: dict[str, Tensor], path: str, classifier: str, keep_head: bool) -> None:
    """Load ``state`` into ``net``: every key must exist with its shape, except the classifier's
    (``<classifier>.*``), loaded only when ``keep_head`` and all of them fit. ConfigError otherwise,
    naming the keys that do not fit."""
    own = net.state_dict()
    head = {k for k in set(own) | set(state) if k.startswith(classifier + ".")}
    take = keep_head and all(k in own and k in state and own[k].shape == state[k].shape for k in head)
    state = {k: v for k, v in state.items() if take or k not in head}
    wanted = {k for k in own if (take or k not in head) and not k.endswith("num_batches_tracked")}
    problems = {"missing": sorted(wanted - set(state)), "unexpected": sorted(set(state) - set(own)),
                "wrong shape": sorted(k for k in state if k in own and own[k].shape != state[k].shape)}
    if any(problems.values()):
        found = "; ".join(f"{what} {keys[:4]}{' ...' if len(keys) > 4 else ''}"
                          for what, keys in problems.items() if keys)
        raise ConfigError("model.weights", path, f"a state dict in {type(net).__name__}'s layout ({found})")
    net.load_state_dict(state, strict=False)


def _channels(info: StreamInfo) -> int:
    return 1 if len(info.input_shape) < 3 else info.input_shape[0]


class _Backbone(nn.Module):
    """``features`` (a network whose classifier became the identity) then ``head``."""

    family: ClassVar[str] = "vision"
    classifier: ClassVar[str] = "fc"  # the network's own name of its classifier (in weight files)
    is_pretrained: bool = False  # the class default; set per instance by _adopt

    def _adopt(self, net: nn.Module, state: dict[str, Tensor] | None, path: str, keep_head: bool,
               pretrained: bool = False) -> None:
        """Load ``state`` (when given) into ``net`` and split it into ``features`` and ``head``;
        the instance is pretrained when ``state`` was loaded or ``net`` came ``pretrained``."""
        if state is not None:
            load_into(net, state, path, self.classifier, keep_head)
        self.is_pretrained = state is not None or pretrained
        head = getattr(net, self.classifier)
        setattr(net, self.classifier, nn.Identity())
        self.features = net
        self.head: nn.Module = head  # registered last: the last Linear of the model

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.head(self.features(x))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ResNetConfig:
    """Options of the torchvision ResNets.

    Attributes:
        cifar_stem: the CIFAR stem of Mammoth/PyCIL (3x3 conv, stride 1, no max-pool) instead of
            ImageNet's (7x7 conv, stride 2, 3x3 max-pool), so 32x32 inputs keep their resolution.
        weights: local state dict in torchvision's layout (``conv1.weight``, ``layer1.0...``,
            ``fc.weight``), e.g. a torchvision ``resnet18-*.pth``; empty = random init.
        keep_head: load the file's ``fc`` into the head when it has the stream's class count;
            False = always a freshly initialised head.
    """

    cifar_stem: bool = False
    weights: str = ""
    keep_head: bool = True


class _TorchvisionResNet(_Backbone):
    Config: ClassVar[type] = ResNetConfig
    arch: ClassVar[str] = ""

    def __init__(self, info: StreamInfo, config: ResNetConfig | None = None) -> None:
        super().__init__()
        import torchvision

        cfg = config or ResNetConfig()
        net = getattr(torchvision.models, self.arch)(weights=None, num_classes=info.num_classes)
        channels = _channels(info)
        if cfg.cifar_stem or channels != 3:
            k, stride = (3, 1) if cfg.cifar_stem else (7, 2)
            net.conv1 = nn.Conv2d(channels, 64, k, stride, k // 2, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's
        if cfg.cifar_stem:
            net.maxpool = nn.Identity()
        state = read_state_dict(cfg.weights) if cfg.weights else None
        self._adopt(net, state, cfg.weights, cfg.keep_head)


@register_model("resnet18")
class ResNet18(_TorchvisionResNet):
    """torchvision ResNet-18 (option: the CIFAR stem); ``features`` = the network up to its pooling."""

    arch = "resnet18"


@register_model("resnet50")
class ResNet50(_TorchvisionResNet):
    """torchvision ResNet-50 (option: the CIFAR stem); ``features`` = the network up to its pooling."""

    arch = "resnet50"


@dataclass(frozen=True)
class WRNConfig:
    """Options of :class:`WRN`.

    Attributes:
        depth: total depth 6n + 4 (n pre-activation basic blocks per group; 28 = 4 per group).
        widen: width multiplier k: the groups have 16k, 32k and 64k channels.
        dropout: dropout between the two convolutions of each block (0 in RobustBench's Standard).
        weights: local state dict in RobustBench's WideResNet layout (``conv1``,
            ``block{1,2,3}.layer.<i>.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``, ``fc``), e.g. its
            CIFAR-10 ``Standard.pt`` (a ``state_dict`` entry and ``module.`` prefixes are removed);
            empty = random init.
        keep_head: load the file's ``fc`` into the head when it has the stream's class count;
            False = always a freshly initialised head.
    """

    depth: int = 28
    widen: int = 10
    dropout: float = 0.0
    weights: str = ""
    keep_head: bool = True

    def __post_init__(self) -> None:
        if self.depth < 10 or (self.depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {self.depth}")
        if self.widen < 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"widen must be >= 1 and dropout in [0, 1), got {self.widen}, {self.dropout}")


class _WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU, 3x3 conv, BN-ReLU, (dropout), 3x3 conv, plus the input, or
    a 1x1 conv of the activated input when the width changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.convShortcut = None if c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.dropout:
            out = F.dropout(out, self.dropout, self.training)
        return (x if self.convShortcut is None else self.convShortcut(act)) + self.conv2(out)


class _WideGroup(nn.Module):
    def __init__(self, n: int, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(_WideBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1,
                                                dropout) for i in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)  # type: ignore[no-any-return]


class _WideResNet(nn.Module):
    """WideResNet (Zagoruyko & Komodakis 2016) with RobustBench's module names."""

    def __init__(self, cfg: WRNConfig, channels: int, num_classes: int) -> None:
        super().__init__()
        n, w = (cfg.depth - 4) // 6, [16, 16 * cfg.widen, 32 * cfg.widen, 64 * cfg.widen]
        self.conv1 = nn.Conv2d(channels, w[0], 3, 1, 1, bias=False)
        self.block1 = _WideGroup(n, w[0], w[1], 1, cfg.dropout)
        self.block2 = _WideGroup(n, w[1], w[2], 2, cfg.dropout)
        self.block3 = _WideGroup(n, w[2], w[3], 2, cfg.dropout)
        self.bn1, self.fc = nn.BatchNorm2d(w[3]), nn.Linear(w[3], num_classes)
        for m in self.modules():  # the usual WRN init: He normal (fan out) convs, zero Linear bias
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.block3(self.block2(self.block1(self.conv1(x))))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))  # 32x32 inputs: avg_pool2d(8)


@register_model("wrn28")
class WRN(_Backbone):
    """WideResNet-28-10 with BatchNorm (RobustBench's CIFAR-10 Standard model; depth/width options)."""

    Config: ClassVar[type] = WRNConfig

    def __init__(self, info: StreamInfo, config: WRNConfig | None = None) -> None:
        super().__init__()
        cfg = config or WRNConfig()
        state = read_state_dict(cfg.weights) if cfg.weights else None
        self._adopt(_WideResNet(cfg, _channels(info), info.num_classes), state, cfg.weights, cfg.keep_head)


@dataclass(frozen=True)
class TimmViTConfig:
    """Options of :class:`TimmViT`.

    Attributes:
        arch: timm name of a plain ``VisionTransformer`` whose blocks use timm's ``Attention`` (the
            ``vit_*`` models of ``timm.models.vision_transformer``, e.g. vit_base_patch16_224,
            vit_small_patch16_224; not distilled, EVA or RoPE variants).
        weights: local state dict in timm's layout (a timm model's ``state_dict()``, or the
            ``model.safetensors``/``pytorch_model.bin`` of a ``timm/<arch>.<tag>`` hub repository
            fetched elsewhere); timm's checkpoint filter resamples the position embeddings to
            ``img_size``. Empty = random init (or ``pretrained_online``).
        pretrained_online: load the arch's default pretrained weights through timm's hub path;
            needs network access (refused offline: use ``weights``).
        img_size: input side in pixels; 0 = the stream's image size.
        patch_size: patch side in pixels; 0 = the arch's.
        depth: transformer blocks; 0 = the arch's (weights of a deeper model are refused).
        drop_path_rate: stochastic depth rate of the blocks (timm's option).
        keep_head: load the file's ``head`` when it has the stream's class count; False = always a
            freshly initialised head.
    """

    arch: str = "vit_base_patch16_224"
    weights: str = ""
    pretrained_online: bool = False
    img_size: int = 0
    patch_size: int = 0
    depth: int = 0
    drop_path_rate: float = 0.0
    keep_head: bool = True

    def __post_init__(self) -> None:
        if self.weights and self.pretrained_online:
            raise ValueError("give weights (a local file) or pretrained_online, not both")
        if min(self.img_size, self.patch_size, self.depth) < 0 or not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError("img_size, patch_size and depth must be >= 0 and drop_path_rate in [0, 1)")


class SplitAttention(nn.Module):
    """timm's ``Attention`` with the fused ``qkv`` split into ``q``, ``k``, ``v`` and ``proj`` named
    ``o``; timm's forward step by step (torch's scaled-dot-product attention, timm's default)."""

    def __init__(self, attn: Any) -> None:
        super().__init__()
        qkv = attn.qkv
        self.num_heads, self.head_dim = int(attn.num_heads), int(attn.head_dim)
        d, bias = self.num_heads * self.head_dim, qkv.bias is not None
        self.q, self.k, self.v = (nn.Linear(qkv.in_features, d, bias, qkv.weight.device, qkv.weight.dtype)
                                  for _ in range(3))
        with torch.no_grad():
            for i, lin in enumerate((self.q, self.k, self.v)):
                lin.weight.copy_(qkv.weight[i * d : (i + 1) * d])
                if bias:
                    lin.bias.copy_(qkv.bias[i * d : (i + 1) * d])
        self.q_norm, self.k_norm, self.attn_drop = attn.q_norm, attn.k_norm, attn.attn_drop
        self.norm, self.gate = getattr(attn, "norm", nn.Identity()), getattr(attn, "gate", None)
        self.o, self.proj_drop = attn.proj, attn.proj_drop

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = (t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
                   for t in (self.q(x), self.k(x), self.v(x)))
        out = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v, attn_mask=attn_mask,
                                             dropout_p=self.attn_drop.p if self.training else 0.0,
                                             is_causal=is_causal)
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))
        return self.proj_drop(self.o(out if gate is None else out * gate))  # type: ignore[no-any-return]


class Blocks(nn.ModuleList):
    """timm's block ``Sequential`` as the ``ModuleList`` role selection looks for, still callable."""

    def forward(self, x: Tensor) -> Tensor:
        for block in self:
            x = block(x)
        return x


def _hub_reachable() -> bool:
    """Whether the Hugging Face hub's host resolves (assumed so behind a proxy)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _online(timm: Any, arch: str, kw: dict[str, Any]) -> nn.Module:
    """``arch`` with its default pretrained weights through timm's hub path (or the hub cache)."""
    offline = f"download the weights where there is network access and give model.weights=<file> (arch {arch})"
    if not (os.environ.get("HF_HUB_OFFLINE") or _hub_reachable()):
        raise DataUnavailableError(f"model.pretrained_online: the Hugging Face hub is unreachable; {offline}")
    try:
        return timm.create_model(arch, pretrained=True, **kw)  # type: ignore[no-any-return]
    except OSError as exc:  # the hub's errors (no connection, not in the local cache)
        raise DataUnavailableError(f"model.pretrained_online: {type(exc).__name__}: {exc}; {offline}") from exc


def _timm_net(cfg: TimmViTConfig, info: StreamInfo) -> nn.Module:
    try:
        import timm
        from timm.layers import Attention
        from timm.models.vision_transformer import VisionTransformer
    except ImportError as exc:
        raise DataUnavailableError(f"model timm_vit needs the timm package: pip install '{TIMM_PIN}'") from exc
    if not timm.is_model(cfg.arch):
        raise ConfigError("model.arch", cfg.arch, "a timm ViT name, e.g. vit_base_patch16_224, vit_small_patch16_224")
    kw: dict[str, Any] = {"num_classes": info.num_classes, "in_chans": _channels(info),
                          "img_size": cfg.img_size or tuple(info.input_shape[-2:]),
                          "drop_path_rate": cfg.drop_path_rate}
    kw.update({k: v for k, v in (("patch_size", cfg.patch_size), ("depth", cfg.depth)) if v})
    net = _online(timm, cfg.arch, kw) if cfg.pretrained_online else timm.create_model(cfg.arch, **kw)
    if type(net) is not VisionTransformer or not all(type(b.attn) is Attention for b in net.blocks):
        raise ConfigError("model.arch", cfg.arch, "a plain timm VisionTransformer (not a distilled, EVA or "
                          "RoPE variant) whose blocks use timm's plain Attention (fused qkv), e.g. "
                          "vit_base_patch16_224, vit_small_patch16_224")
    return net


@register_model("timm_vit")
class TimmViT(_Backbone):
    """timm vision transformer (``arch``), its fused qkv split into q/k/v/o Linears per block."""

    Config: ClassVar[type] = TimmViTConfig
    classifier = "head"
    module_roles: ClassVar[dict[str, tuple[str, ...]]] = {
        "q": (r"^attn\.q$",), "k": (r"^attn\.k$",), "v": (r"^attn\.v$",), "o": (r"^attn\.o$",),
        "up": (r"^mlp\.fc1$",), "down": (r"^mlp\.fc2$",)}

    def __init__(self, info: StreamInfo, config: TimmViTConfig | None = None) -> None:
        super().__init__()
        cfg = config or TimmViTConfig()
        net: Any = _timm_net(cfg, info)
        state = None
        if cfg.weights:
            from timm.models.vision_transformer import checkpoint_filter_fn

            state = checkpoint_filter_fn(read_state_dict(cfg.weights), net)
        self._adopt(net, state, cfg.weights, cfg.keep_head, pretrained=cfg.pretrained_online)
        for block in net.blocks:
            block.attn = SplitAttention(block.attn)
        net.blocks = Blocks(list(net.blocks))


@dataclass(frozen=True)
class TimmConfig:
    """Options of :class:`TimmModel`.

    Attributes:
        arch: any timm model name (``timm.list_models()``), e.g. resnet50, convnext_tiny,
            efficientnet_b0, vit_small_patch16_224; its classifier (``get_classifier()``) must be
            one Linear layer (distilled models with two heads are refused).
        weights: local state dict in timm's layout (a timm model's ``state_dict()``, or the
            ``model.safetensors``/``pytorch_model.bin`` of a ``timm/<arch>.<tag>`` hub repository
            fetched elsewhere), passed through the architecture module's
            ``checkpoint_filter_fn`` when it has one (e.g. a ViT's position embeddings resampled
            to ``img_size``). Empty = random init (or ``pretrained_online``).
        pretrained_online: load the arch's default pretrained weights through timm's hub path;
            needs network access (refused offline: use ``weights``).
        img_size: input side in pixels for architectures whose constructor takes ``img_size``
            (ViTs, MaxViT, ...); 0 = the stream's image size. Ignored by the others (CNNs).
        drop_path_rate: stochastic depth rate (timm's option; 0 = not passed to timm).
        keep_head: load the file's classifier (timm's ``pretrained_cfg["classifier"]``) into the
            head when it has the stream's class count; False = always a freshly initialised head.
    """

    arch: str = "resnet50"
    weights: str = ""
    pretrained_online: bool = False
    img_size: int = 0
    drop_path_rate: float = 0.0
    keep_head: bool = True

    def __post_init__(self) -> None:
        if self.weights and self.pretrained_online:
            raise ValueError("give weights (a local file) or pretrained_online, not both")
        if self.img_size < 0 or not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError("img_size must be >= 0 and drop_path_rate in [0, 1)")


def _import_timm(model: str) -> Any:
    try:
        import timm
    except ImportError as exc:
        raise DataUnavailableError(f"model {model} needs the timm package: pip install '{TIMM_PIN}'") from exc
    return timm


def split_fused_qkv(net: nn.Module) -> bool:
    """When ``net.blocks`` is a ``Sequential`` of blocks whose ``attn`` is timm's plain
    ``Attention`` (fused ``qkv``), replace each by :class:`SplitAttention` and the container by
    :class:`Blocks`, as ``timm_vit`` does; returns whether it did (otherwise ``net`` is untouched)."""
    from timm.layers import Attention

    blocks = getattr(net, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not len(blocks) or not all(
            type(getattr(b, "attn", None)) is Attention for b in blocks):
        return False
    for block in blocks:
        block.attn = SplitAttention(block.attn)
    net.blocks = Blocks(list(blocks))
    return True


@register_model("timm")
class TimmModel(_Backbone):
    """Any timm model (``arch``) with a Linear head for the stream's classes; plain ViTs get their
    qkv split into q/k/v/o Linears as ``timm_vit``."""

    Config: ClassVar[type] = TimmConfig

    def __init__(self, info: StreamInfo, config: TimmConfig | None = None) -> None:
        super().__init__()
        cfg = config or TimmConfig()
        timm = _import_timm("timm")
        if not timm.is_model(cfg.arch):
            raise ConfigError("model.arch", cfg.arch, "a timm model name (timm.list_models()), e.g. resnet50, "
                              "convnext_tiny, efficientnet_b0")
        kw: dict[str, Any] = {"num_classes": info.num_classes, "in_chans": _channels(info)}
        if cfg.drop_path_rate:
            kw["drop_path_rate"] = cfg.drop_path_rate
        sized = {**kw, "img_size": cfg.img_size or tuple(info.input_shape[-2:])}
        try:
            net: Any = self._create(timm, cfg, sized)
        except TypeError as exc:  # an architecture without an input size (a CNN)
            if "img_size" not in str(exc):
                raise
            net = self._create(timm, cfg, kw)
        head = net.get_classifier()
        if not (isinstance(head, nn.Linear) and head.out_features == info.num_classes):
            raise ConfigError("model.arch", cfg.arch, "a timm model whose classifier (get_classifier()) is one "
                              f"Linear layer, got {type(head).__name__}")
        state = None
        if cfg.weights:
            classifier = net.pretrained_cfg.get("classifier")
            if not isinstance(classifier, str):
                raise ConfigError("model.weights", cfg.weights, f"weights for an arch whose pretrained_cfg names "
                                  f"its classifier ({cfg.arch}'s names {classifier!r})")
            state = read_state_dict(cfg.weights)
            filter_fn = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
            if callable(filter_fn):
                state = filter_fn(state, net)
            load_into(net, state, cfg.weights, classifier, cfg.keep_head)
        self.is_pretrained = state is not None or cfg.pretrained_online
        head = net.get_classifier()  # the loaded one
        net.reset_classifier(0)  # the network now ends at its pooled (pre-logits) feature
        split_fused_qkv(net)
        self.features = net
        self.head = head  # registered last: the last Linear of the model

    @staticmethod
    def _create(timm: Any, cfg: TimmConfig, kw: dict[str, Any]) -> nn.Module:
        return _online(timm, cfg.arch, kw) if cfg.pretrained_online else timm.create_model(cfg.arch, **kw)


HF_IMAGE_ID = "google/vit-base-patch16-224-in21k"  # ViT-B/16 pretrained on ImageNet-21k


@dataclass(frozen=True)
class HFImageConfig:
    """Options of :class:`HFImageModel`.

    Attributes:
        model_id: hub id or local directory (a ``save_pretrained`` folder: ``config.json`` and
            weights) of a model ``AutoModelForImageClassification`` builds (ViT, DeiT, BEiT,
            DINOv2, Swin, ConvNeXt, ResNet, CLIP/SigLIP vision, ...). Offline: only a local
            directory or a copy already in the Hugging Face cache (``HF_HUB_OFFLINE=1``).
        tiny: a randomly initialised 2-block ViT (``AutoConfig.for_model("vit")``: hidden 64,
            4 heads, MLP 128) sized to the stream's images and channels; ``model_id`` is not
            read and nothing is downloaded (fast tests).
    """

    model_id: str = HF_IMAGE_ID
    tiny: bool = False


def _tiny_patch(height: int, width: int) -> int:
    """The largest of 16, 8, 4, 2 dividing both sides with at least 4 patches per side, else 1."""
    return next((p for p in (16, 8, 4, 2) if not height % p and not width % p and min(height, width) // p >= 4), 1)


def _pair(size: Any) -> tuple[int, int] | None:
    if isinstance(size, int):
        return size, size
    if isinstance(size, list | tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    return None


def _hf_image_net(cfg: HFImageConfig, info: StreamInfo) -> tuple[nn.Module, bool]:
    """(transformers image-classification model, whether pretrained weights were loaded)."""
    from transformers import AutoConfig, AutoModelForImageClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    height, width = (int(s) for s in info.input_shape[-2:])
    if cfg.tiny:
        config = AutoConfig.for_model(
            "vit", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            image_size=[height, width], patch_size=_tiny_patch(height, width), num_channels=_channels(info))
        return AutoModelForImageClassification.from_config(config), False
    from clbench.hf import resolve_pretrained

    try:
        path = resolve_pretrained(cfg.model_id)
    except DataUnavailableError as exc:  # hf.unavailable's reason, with the image models' alternatives
        reason = str(exc).partition(". Offline alternatives")[0]
        raise DataUnavailableError(
            f"{reason}. Offline alternatives for an image model: model.tiny=true (a small random ViT, "
            "nothing downloaded) or model.model_id=<local directory> holding a save_pretrained "
            "model (config.json and weights)") from exc
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        raise ConfigError("model.model_id", cfg.model_id, "a model AutoModelForImageClassification builds; "
                          f"its config is of type {config.model_type!r}, not one of "
                          f"{', '.join(sorted(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES))}")
    return AutoModelForImageClassification.from_pretrained(path, dtype=torch.float32), True


class HFImageFeatures(nn.Module):
    """A transformers image-classification model (``net``) whose classifier Linear became the
    identity: ``forward(images)`` is the pooled feature its classifier saw, (N, D).

    A 1-channel image is repeated to 3 channels for a 3-channel model; an input size other than
    the config's ``image_size`` is passed ``interpolate_pos_encoding=True`` when the model takes it
    (ViT-family position embeddings interpolated)."""

    def __init__(self, net: nn.Module, channels: int) -> None:
        super().__init__()
        self.net = net
        vision = getattr(net.config, "vision_config", net.config)
        self.grey_to_rgb = channels == 1 and getattr(vision, "num_channels", 1) == 3
        self.image_size = _pair(getattr(vision, "image_size", None))
        self.interpolates = "interpolate_pos_encoding" in inspect.signature(net.forward).parameters

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if self.grey_to_rgb:
            x = x.expand(-1, 3, -1, -1)
        kw = ({"interpolate_pos_encoding": True}
              if self.interpolates and self.image_size is not None and tuple(x.shape[-2:]) != self.image_size else {})
        return self.net(pixel_values=x, **kw).logits  # type: ignore[no-any-return]


@register_model("hf_image")
class HFImageModel(nn.Module):
    """Hugging Face image model (``AutoModelForImageClassification``, default ViT-B/16 ImageNet-21k)
    with a fresh Linear head over its pooled feature."""

    Config: ClassVar[type] = HFImageConfig
    family: ClassVar[str] = "vision"
    is_pretrained: bool = False  # the class default; True on an instance that loaded weights

    def __init__(self, info: StreamInfo, config: HFImageConfig | None = None) -> None:
        super().__init__()
        cfg = config or HFImageConfig()
        net, self.is_pretrained = _hf_image_net(cfg, info)
        wanted = getattr(getattr(net.config, "vision_config", net.config), "num_channels", None)
        if wanted is not None and _channels(info) not in (wanted, 1 if wanted == 3 else wanted):
            raise ConfigError("model.model_id", cfg.model_id, f"a model taking the stream's {_channels(info)}-channel "
                              f"images; it takes {wanted} channels")
        classifier = getattr(net, "classifier", None)
        linears = [(n, m) for n, m in classifier.named_modules() if isinstance(m, nn.Linear)] if isinstance(
            classifier, nn.Module) else []
        if len(linears) != 1:
            raise ConfigError("model.model_id", cfg.model_id, "a model whose `classifier` holds one Linear layer "
                              f"(ViT, ConvNeXt, ResNet, ...); {type(net).__name__} has {len(linears)}")
        name, linear = linears[0]
        net.set_submodule(f"classifier.{name}" if name else "classifier", nn.Identity())
        self.features = HFImageFeatures(net, _channels(info))
        self.head = nn.Linear(linear.in_features, info.num_classes)  # registered last: the last Linear

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # type: ignore[no-any-return]

"""Owns model builders and the resolver: small vision networks built from a StreamInfo.

A model plug-in is an ``nn.Module`` class with a ``Config`` dataclass, a ``family`` string
(checked against methods' ``model_families``) and a constructor ``(info, config)``; the model
registry refuses a class without them. Optional capabilities, read only through the functions
below (never guessed elsewhere):

- ``is_pretrained: bool`` (a class default an instance may override, e.g. a backbone given a
  weights file): arrives pretrained (a Hugging Face checkpoint), so no
  foundation is pretrained on a stream's source split (:func:`is_pretrained`);
- ``lm_eval_handle() -> (hf_model, tokenizer)``: lm-eval can score it (:func:`lm_eval_handle`);
- ``embed(x) -> (N, D)``: a pooled embedding for frozen-embedding probes (:func:`embedder`);
- ``tokenizer_id: str``: the tokenizer its token-id inputs must come from;
- ``head_parameter_names()`` or a ``head`` module: the output head (``trainer.head_lr``);
- ``module_roles: ClassVar[dict[str, tuple[str, ...]]]``: role (q, k, v, o, gate, up, down) ->
  regexes on a linear layer's path inside a transformer block, for layers whose names the
  default patterns of :mod:`clbench.modules` do not know (methods that select modules by role).

The registry checks each declared capability's kind when the class registers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from clbench.registry import register_model
from clbench.streams import StreamInfo

DEFAULT_MODEL = "mlp"


@dataclass(frozen=True)
class MLPConfig:
    hidden: int = 256  # units of every hidden layer
    layers: int = 2  # hidden Linear + ReLU layers before the head
    dropout: float = 0.0  # dropout after every hidden layer; 0 = none


@register_model("mlp")
class MLP(nn.Module):
    """Multi-layer perceptron on flattened inputs (the default vision model)."""

    Config: ClassVar[type] = MLPConfig
    family: ClassVar[str] = "vision"

    def __init__(self, info: StreamInfo, config: MLPConfig | None = None) -> None:
        super().__init__()
        cfg = config or MLPConfig()
        dims = [math.prod(info.input_shape)] + [cfg.hidden] * cfg.layers
        blocks: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.ReLU()]
            if cfg.dropout:
                blocks.append(nn.Dropout(cfg.dropout))
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(dims[-1], info.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class CNNConfig:
    channels: int = 32  # output channels of the first conv (the second has twice as many)


@register_model("cnn")
class CNN(nn.Module):
    """Two conv blocks + linear head for (C, H, W) or (H, W) image inputs."""

    Config: ClassVar[type] = CNNConfig
    family: ClassVar[str] = "vision"

    def __init__(self, info: StreamInfo, config: CNNConfig | None = None) -> None:
        super().__init__()
        cfg = config or CNNConfig()
        shape = info.input_shape
        in_ch = 1 if len(shape) < 3 else shape[0]
        c = cfg.channels
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.head = nn.Linear(2 * c * 4, info.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.head(self.features(x))


@register_model("cnn_bn")
class CNNBN(nn.Module):
    """The ``cnn`` with BatchNorm after each conv (for test-time normalisation methods)."""

    Config: ClassVar[type] = CNNConfig
    family: ClassVar[str] = "vision"

    def __init__(self, info: StreamInfo, config: CNNConfig | None = None) -> None:
        super().__init__()
        c = (config or CNNConfig()).channels
        in_ch = 1 if len(info.input_shape) < 3 else info.input_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.head = nn.Linear(2 * c * 4, info.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.head(self.features(x))


def build_model(name: str, info: StreamInfo, options: dict[str, Any]) -> tuple[nn.Module, Any]:
    """Resolve ``name`` (``auto`` -> the default) and build it; returns (model, config). For a
    stream of uint8 images (``info.inputs``) the model normalises such inputs itself
    (:func:`clbench.augment.attach`)."""
    from clbench.augment import attach
    from clbench.options import build_dataclass
    from clbench.registry import MODELS

    cls = MODELS.get(DEFAULT_MODEL if name == "auto" else name)
    cfg = build_dataclass(cls.Config, options, "model")
    return attach(cls(info, cfg), info.inputs), cfg  # uint8 image streams: normalised on the way in


def model_family(model: nn.Module) -> str:
    return str(getattr(model, "family", "any"))


def is_pretrained(model: nn.Module) -> bool:
    """Whether the model arrives pretrained: its ``is_pretrained``, read on the instance (a
    backbone given a weights file sets it), the class's declaration as default; False if absent."""
    return bool(getattr(model, "is_pretrained", False))


def lm_eval_handle(model: nn.Module) -> Callable[[], tuple[nn.Module, Any]] | None:
    """The model's ``lm_eval_handle`` when it declares one (lm-eval general capability)."""
    handle = getattr(model, "lm_eval_handle", None)
    return handle if callable(handle) else None


def embedder(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The model's ``embed`` when it declares one (frozen-embedding probes)."""
    embed = getattr(model, "embed", None)
    return embed if callable(embed) else None


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return train, total

"""Owns the small vision transformer used as the offline foundation model.

Module names follow Hugging Face decoder conventions (``blocks[i].attn.{q,k,v,o}_proj``,
``blocks[i].mlp.{up,down}_proj``, ``blocks[i].norm{1,2}``), so methods that select modules by
name group treat it like a language model's transformer block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.registry import register_model
from clbench.streams import StreamInfo


@dataclass(frozen=True)
class ViTConfig:
    patch: int = 7  # side in pixels of the square patches (must divide the image size)
    dim: int = 64  # embedding width (must divide by heads)
    depth: int = 4  # transformer blocks
    heads: int = 4  # attention heads per block
    mlp_ratio: int = 2  # hidden width of each block's MLP, in multiples of dim
    # channels of an optional convolutional stem (two 3x3 conv + GELU at full resolution before
    # the patch embedding; "early convolutions help transformers see better", Xiao et al. 2021),
    # which lets the small ViT reach a strong source accuracy on a few thousand digits; 0 = none
    stem: int = 0


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/o projections."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.o_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        h = self.heads

        def split(t: Tensor) -> Tensor:
            return t.view(b, n, h, d // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)),
                                             split(self.v_proj(x)))
        return self.o_proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up_proj, self.down_proj = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), MLP(dim, dim * mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@register_model("vit_tiny")
class ViT(nn.Module):
    """Small vision transformer (patch embedding, pre-norm blocks, LayerNorm, linear head)."""

    Config: ClassVar[type] = ViTConfig
    family: ClassVar[str] = "vision"

    def __init__(self, info: StreamInfo, config: ViTConfig | None = None) -> None:
        super().__init__()
        cfg = config or ViTConfig()
        shape = info.input_shape
        channels, size = (1, shape[-1]) if len(shape) < 3 else (shape[0], shape[-1])
        if size % cfg.patch or cfg.dim % cfg.heads:
            raise ValueError(f"image size {size} must divide by patch {cfg.patch} and dim "
                             f"{cfg.dim} by heads {cfg.heads}")
        n = (size // cfg.patch) ** 2
        self.stem = (nn.Sequential(nn.Conv2d(channels, cfg.stem, 3, padding=1), nn.GELU(),
                                   nn.Conv2d(cfg.stem, cfg.stem, 3, padding=1), nn.GELU())
                     if cfg.stem else nn.Identity())
        self.patch_embed = nn.Conv2d(cfg.stem or channels, cfg.dim, cfg.patch, stride=cfg.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, cfg.dim) / math.sqrt(cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, info.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        t = self.patch_embed(self.stem(x)).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], dim=1) + self.pos_embed
        for blk in self.blocks:
            t = blk(t)
        return self.head(self.norm(t[:, 0]))

"""Owns the input pipeline of image streams stored as uint8: normalisation and training augmentation.

A scenario whose images are stored as ``uint8`` (N, C, H, W) -- a quarter of float32's memory,
the form the images come in -- declares :class:`ImageInputs` on its stream (``Stream.inputs``).
Then:

- **evaluation and every other forward pass** (a method's own forward on stored samples, the
  foundation's pretraining, test-time adaptation): a forward pre-hook that :func:`attach` puts on
  the model converts any ``uint8`` input to float, ``(x / 255 - mean) / std``, deterministically;
- **training** (the trainer's forward pass on each batch, after the method's ``transform_batch``,
  so stored samples a method appends are augmented too): the declared augmentation is drawn per
  sample on the batch, on the training device, before the same normalisation. In this order, each
  op only when declared:

  1. a crop: either a random crop of the image's size from the image zero-padded by
     ``crop_padding`` pixels (torchvision ``RandomCrop(size, padding)``), or a random resized
     crop (``resized_crop``: ``RandomResizedCrop(size, scale, ratio)`` with bilinear, antialiased
     resizing, torchvision's defaults), never both;
  2. a horizontal flip with probability 0.5 (``RandomHorizontalFlip()``);
  3. colour jitter (``ColorJitter(brightness, contrast, saturation, hue)``: each enabled
     adjustment once per image, in a random order per image, with a factor drawn per image).

  ``tests/test_augment.py`` checks each sample against ``torchvision.transforms.v2.functional``
  given the same draws: the crops and the flip are exactly its output (the resized crop *is*
  its ``resized_crop``, called per image); the colour jitter is computed for the whole batch at
  once with per-image factors in float32 as torchvision computes it, and can differ from
  torchvision's per-image result by one intensity level where float rounding (a fused
  multiply-add, the HSV round trip) falls differently.

The random draws come from a CPU generator seeded per batch from the epoch's shuffling generator,
so a run is reproducible, resumes exactly mid-experience, draws the same on any device, and 2
data-parallel processes draw for each sample what one process draws for it (the draws are made
for the global batch and each process takes its rows). The draws follow torchvision's
distributions, not its random stream: the resized crop's box is drawn as
``RandomResizedCrop.make_params`` draws it (10 attempts, then its central fallback), vectorised
over the batch. Float streams (every stream stored as float) have no ``inputs`` and are
untouched: the in-memory fast path is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

#: Per-sample draws of a batch, each tensor with the batch on dim 0 (see :meth:`ImageInputs.draw`).
Draws = dict[str, Tensor]

_JITTER = ("brightness", "contrast", "saturation", "hue")
_ATTEMPTS = 10  # RandomResizedCrop's tries before its central fallback


@dataclass(frozen=True)
class ImageInputs:
    """Normalisation and training augmentation of a uint8 image stream.

    Attributes:
        mean: per-channel mean of the images scaled to [0, 1] (subtracted after scaling).
        std: per-channel standard deviation (divided by after subtracting the mean).
        crop_padding: training only: zero-pad each image by this many pixels on every side and
            crop a random window of the original size (0 = no crop).
        hflip: training only: flip each image horizontally with probability 0.5.
        resized_crop: training only: output (height, width) of a random resized crop of each
            image (a box of ``crop_scale`` of the image's area and aspect ratio in
            ``crop_ratio``, resized bilinearly with antialiasing); None = none. Exclusive with
            ``crop_padding``. An output size other than the stored one feeds the model another
            input size in training than in evaluation: scenarios use the stored size.
        crop_scale: training only: (min, max) fraction of the image's area a resized crop's box covers.
        crop_ratio: training only: (min, max) aspect ratio (width / height) of a resized crop's
            box, drawn uniformly in log space.
        brightness: training only: colour jitter, brightness factor drawn in
            [max(0, 1 - brightness), 1 + brightness]; 0 = not adjusted.
        contrast: as ``brightness``, for contrast (blend with the mean grey level).
        saturation: as ``brightness``, for saturation (blend with the grey image; 3 channels only).
        hue: training only: hue shift drawn in [-hue, hue] (a fraction of the hue circle, at most
            0.5; 3 channels only); 0 = not adjusted.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    hflip: bool = False
    resized_crop: tuple[int, int] | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean {self.mean} and std {self.std} need one value per channel")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if self.resized_crop is not None:
            if len(self.resized_crop) != 2 or min(self.resized_crop) < 1:
                raise ValueError(f"resized_crop must be an output (height, width) >= 1, got {self.resized_crop}")
            if self.crop_padding:
                raise ValueError("crop_padding and resized_crop are two crops: declare one")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must be (min, max) with 0 < min <= max <= 1, got {self.crop_scale}")
        lo, hi = self.crop_ratio
        if not (0.0 < lo <= hi and math.isfinite(hi)):
            raise ValueError(f"crop_ratio must be (min, max) with 0 < min <= max, got {self.crop_ratio}")
        for name in ("brightness", "contrast", "saturation"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0.0):
                raise ValueError(f"{name} must be a finite value >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        if self.jitters and len(self.mean) not in (1, 3):
            raise ValueError(f"colour jitter needs 1 or 3 channels, got {len(self.mean)}")

    @property
    def jitters(self) -> bool:
        return any(getattr(self, name) > 0 for name in _JITTER)

    @property
    def augments(self) -> bool:
        return self.crop_padding > 0 or self.hflip or self.resized_crop is not None or self.jitters

    def augmentation(self) -> dict[str, object]:
        """The declared training augmentation as plain values (for a stream's provenance):
        ``crop_padding`` and ``hflip`` always, the resized crop and colour jitter when declared."""
        out: dict[str, object] = {"crop_padding": self.crop_padding, "hflip": self.hflip}
        if self.resized_crop is not None:
            out.update(resized_crop=list(self.resized_crop), crop_scale=list(self.crop_scale),
                       crop_ratio=list(self.crop_ratio))
        out.update({name: getattr(self, name) for name in _JITTER if getattr(self, name) > 0})
        return out

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 (N, C, H, W) -> float32 ``(x / 255 - mean) / std`` on ``x``'s device."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def draw(self, n: int, height: int, width: int, gen: torch.Generator) -> Draws:
        """Per-sample draws for ``n`` images of ``height`` x ``width``, on the CPU, from ``gen``:

        - ``top``, ``left``: padded-crop offsets (drawn, unused, without ``crop_padding``);
        - ``flip``: flip flags (all False without ``hflip``);
        - ``box`` (with ``resized_crop``): (n, 4) int64 top, left, height, width of the box;
        - ``order``, ``factors`` (with colour jitter): (n, 4) the order in which each image gets
          brightness (0), contrast (1), saturation (2) and hue (3), and float32 factors in that
          column order (1, 1, 1, 0 for an adjustment not declared).

        ``top``, ``left`` and ``flip`` are drawn first and as they always were, so a declaration
        without the newer ops draws exactly what it drew before they existed."""
        p = self.crop_padding
        top = torch.randint(0, 2 * p + 1, (n,), generator=gen)
        left = torch.randint(0, 2 * p + 1, (n,), generator=gen)
        flip = torch.rand(n, generator=gen) < 0.5 if self.hflip else torch.zeros(n, dtype=torch.bool)
        out: Draws = {"top": top, "left": left, "flip": flip}
        if self.resized_crop is not None:
            out["box"] = self._boxes(n, height, width, gen)
        if self.jitters:
            out["order"] = torch.rand(n, 4, generator=gen).argsort(dim=1)
            lo, hi = self._jitter_ranges()
            out["factors"] = lo + torch.rand(n, 4, generator=gen) * (hi - lo)
        return out

    def _jitter_ranges(self) -> tuple[Tensor, Tensor]:
        b, c, s, h = (getattr(self, name) for name in _JITTER)
        lo = torch.tensor([max(0.0, 1.0 - b), max(0.0, 1.0 - c), max(0.0, 1.0 - s), -h])
        hi = torch.tensor([1.0 + b, 1.0 + c, 1.0 + s, h])
        return lo, hi

    def _boxes(self, n: int, height: int, width: int, gen: torch.Generator) -> Tensor:
        """RandomResizedCrop's box for each of ``n`` images: the first of 10 attempts (area and
        log aspect ratio uniform) that fits in the image, else its central fallback; the offset
        uniform over the positions that fit. Drawn in float64, rounded as Python's ``round``."""
        area = float(height * width)
        (s0, s1), (r0, r1) = self.crop_scale, (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        u = torch.rand(n, _ATTEMPTS, 2, generator=gen, dtype=torch.float64)
        target = area * (s0 + (s1 - s0) * u[..., 0])
        aspect = torch.exp(r0 + (r1 - r0) * u[..., 1])
        w = torch.round(torch.sqrt(target * aspect)).long()  # round half to even, as round()
        h = torch.round(torch.sqrt(target / aspect)).long()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.long().argmax(dim=1, keepdim=True)  # the first attempt that fits
        found = fits.any(dim=1)
        h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
        offset = torch.rand(n, 2, generator=gen, dtype=torch.float64)
        top = torch.minimum((offset[:, 0] * (height - h + 1)).floor().long(), height - h)
        left = torch.minimum((offset[:, 1] * (width - w + 1)).floor().long(), width - w)
        fh, fw = self._fallback(height, width)
        h, w = torch.where(found, h, fh), torch.where(found, w, fw)
        top = torch.where(found, top, (height - fh) // 2)
        left = torch.where(found, left, (width - fw) // 2)
        return torch.stack([top, left, h, w], dim=1)

    def _fallback(self, height: int, width: int) -> tuple[int, int]:
        """RandomResizedCrop's central fallback box (height, width)."""
        in_ratio = width / height
        lo, hi = self.crop_ratio
        if in_ratio < lo:
            return int(round(width / lo)), width
        if in_ratio > hi:
            return height, int(round(height * hi))
        return height, width

    def augment(self, x: Tensor, d: Draws) -> Tensor:
        """``x`` (N, C, H, W, uint8) augmented with the draws ``d`` (:meth:`draw`, N rows): uint8,
        of the ``resized_crop`` size when declared, else of ``x``'s shape."""
        n, _, h, w = x.shape
        p = self.crop_padding
        if p:
            top, left = d["top"].to(x.device), d["left"].to(x.device)
            padded = nn.functional.pad(x, (p, p, p, p))
            rows = (top[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
            cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
            x = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
        if self.resized_crop is not None:
            size = list(self.resized_crop)
            TF = _tv_functional()
            # one call per image (each box has its own size); the boxes are on the CPU: no device sync
            crops = [TF.resized_crop(x[k], t, left_, bh, bw, size, antialias=True)
                     for k, (t, left_, bh, bw) in enumerate(d["box"].tolist())]
            x = torch.stack(crops) if crops else x.new_empty((0, x.shape[1], *size))
        if self.hflip:
            x = torch.where(d["flip"].to(x.device)[:, None, None, None], x.flip(-1), x)
        if self.jitters and n:
            x = self._jitter(x, d["order"], d["factors"])
        return x.contiguous()

    def _jitter(self, x: Tensor, order: Tensor, factors: Tensor) -> Tensor:
        """Each image's declared adjustments in its own order: at each of the 4 positions, every
        adjustment is applied at once to the images that have it there."""
        ops: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (_brightness, _contrast, _saturation, _hue)
        enabled = [k for k, name in enumerate(_JITTER) if getattr(self, name) > 0]
        x = x.clone()
        factors = factors.to(x.device)
        for position in range(4):
            for k in enabled:
                rows = (order[:, position] == k).nonzero().squeeze(1)  # on the CPU
                if len(rows):
                    rows = rows.to(x.device)
                    x.index_copy_(0, rows, ops[k](x.index_select(0, rows), factors.index_select(0, rows)[:, k]))
        return x

    def train(self, x: Tensor, seed: int, n_global: int, rows: slice | None = None) -> Tensor:
        """The training input of a uint8 batch: augmented (draws from ``seed``), then normalised.

        ``x`` starts with this process's rows ``rows`` of a global batch of ``n_global`` images
        (all of them in one process); the draws are made for the global batch and the shard's
        are used, so every sample gets the draw one process would give it. Rows beyond those
        (stored samples a method appended) get the draws that follow, the same on every process."""
        if self.augments:
            gen = torch.Generator().manual_seed(seed)
            h, w = x.shape[-2], x.shape[-1]
            d = self.draw(n_global, h, w, gen)
            if rows is not None:
                d = {k: v[rows] for k, v in d.items()}
            extra = len(x) - len(d["top"])
            if extra > 0:
                more = self.draw(extra, h, w, gen)
                d = {k: torch.cat([v, more[k]]) for k, v in d.items()}
            x = self.augment(x, {k: v[: len(x)] for k, v in d.items()})
        return self.normalize(x)

    def _pre_hook(self, module: nn.Module, args: tuple[object, ...]) -> tuple[object, ...] | None:
        x = args[0] if args else None
        if isinstance(x, Tensor) and x.dtype == torch.uint8:
            return (self.normalize(x), *args[1:])
        return None


# --------------------------------------------------------------------------- colour jitter, per image
# uint8 (N, C, H, W) in and out, one factor per image (N,); the arithmetic of torchvision's
# adjust_* on uint8 images (float32, clamped, truncated back to uint8)


def _to_uint8(y: Tensor) -> Tensor:
    return y.clamp_(0.0, 255.0).to(torch.uint8)


def _blend(x: Tensor, other: Tensor, f: Tensor) -> Tensor:
    """``x * f + other * (1 - f)`` per image (torchvision's ``_blend``)."""
    ratio = f.float().view(-1, 1, 1, 1)
    rest = (1.0 - f.double()).float().view(-1, 1, 1, 1)  # torchvision: 1.0 - ratio in Python floats
    return _to_uint8(x.float() * ratio + other * rest)


def _tv_functional() -> Any:
    """``torchvision.transforms.v2.functional``, imported when an op needs it (importing
    torchvision takes over a second, which every run that augments nothing would pay)."""
    from torchvision.transforms.v2 import functional

    return functional


def _grey(x: Tensor) -> Tensor:
    """float32 grey level of each pixel, floored as torchvision's adjustments use it."""
    return x.float() if x.shape[1] == 1 else _tv_functional().rgb_to_grayscale(x).float()  # uint8: floored


def _brightness(x: Tensor, f: Tensor) -> Tensor:
    return _to_uint8(x.float() * f.float().view(-1, 1, 1, 1))


def _contrast(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, _grey(x).mean(dim=(-3, -2, -1), keepdim=True), f)


def _saturation(x: Tensor, f: Tensor) -> Tensor:
    return x if x.shape[1] == 1 else _blend(x, _grey(x), f)


def _hue(x: Tensor, f: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    TF = _tv_functional()
    h, s, v = _rgb_to_hsv(TF.to_dtype(x, torch.float32, scale=True))
    h = (h + f.float().view(-1, 1, 1)).remainder(1.0)
    return TF.to_dtype(_hsv_to_rgb(h, s, v), torch.uint8, scale=True)


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(N, 3, H, W) RGB in [0, 1] -> hue in [0, 1), saturation, value, each (N, H, W)."""
    r, g, b = x.unbind(1)
    value, low = x.amax(dim=1), x.amin(dim=1)
    spread = value - low
    grey = spread == 0
    one = torch.ones_like(value)
    saturation = spread / torch.where(grey, one, value)  # value > 0 wherever spread > 0
    d = torch.where(grey, one, spread)
    hue = torch.where(value == r, (g - b) / d, torch.where(value == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    hue = torch.where(grey, torch.zeros_like(hue), (hue / 6.0).remainder(1.0))
    return hue, saturation, value


# which of (v, p, q, t) is red, green, blue in each sixth of the hue circle (colorsys.hsv_to_rgb)
_SECTORS = torch.tensor([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """Hue, saturation, value (N, H, W) -> (N, 3, H, W) RGB in [0, 1]."""
    h6 = h * 6.0
    sector = h6.floor()
    frac = h6 - sector
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * frac)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - frac))).clamp(0.0, 1.0)
    choices = torch.stack([v, p, q, t], dim=1)  # (N, 4, H, W)
    pick = _SECTORS.to(h.device)[sector.long().remainder(6)].permute(0, 3, 1, 2)  # (N, 3, H, W)
    return choices.gather(1, pick)


def attach(model: nn.Module, inputs: ImageInputs | None) -> nn.Module:
    """Convert every uint8 input ``model`` receives (``inputs.normalize``); returns ``model``.
    The hook travels with copies of the model (``copy.deepcopy``) and is not in its state dict."""
    if inputs is not None:
        model.register_forward_pre_hook(inputs._pre_hook)
    return model

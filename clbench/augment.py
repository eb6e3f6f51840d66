"""Owns the input pipeline of image streams stored as uint8: normalisation and training augmentation.

A scenario whose images are stored as ``uint8`` (N, C, H, W) -- a quarter of float32's memory,
the form the images come in -- declares :class:`ImageInputs` on its stream (``Stream.inputs``).
Then:

- **evaluation and every other forward pass** (a method's own forward on stored samples, the
  foundation's pretraining, test-time adaptation): a forward pre-hook that :func:`attach` puts on
  the model converts any ``uint8`` input to float, ``(x / 255 - mean) / std``, deterministically;
- **training** (the trainer's forward pass on each batch, after the method's ``transform_batch``,
  so stored samples a method appends are augmented too): the declared augmentation is drawn per
  sample on the batch, on the training device, before the same normalisation -- a random crop
  of the image's size from the image zero-padded by ``crop_padding`` pixels and a horizontal flip
  with probability 0.5, as torchvision's ``RandomCrop(size, padding)`` and
  ``RandomHorizontalFlip()`` do on each image (``tests/test_augment.py`` checks each sample
  against ``torchvision.transforms.v2.functional``).

The random draws come from a generator seeded per batch from the epoch's shuffling generator, so a
run is reproducible, resumes exactly mid-experience, and 2 data-parallel processes draw for each
sample what one process draws for it. Float streams (every stream stored as float) have no
``inputs`` and are untouched: the in-memory fast path is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ImageInputs:
    """Normalisation and training augmentation of a uint8 image stream.

    Attributes:
        mean: per-channel mean of the images scaled to [0, 1] (subtracted after scaling).
        std: per-channel standard deviation (divided by after subtracting the mean).
        crop_padding: training only: zero-pad each image by this many pixels on every side and
            crop a random window of the original size (0 = no crop).
        hflip: training only: flip each image horizontally with probability 0.5.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    hflip: bool = False

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean {self.mean} and std {self.std} need one value per channel")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")

    @property
    def augments(self) -> bool:
        return self.crop_padding > 0 or self.hflip

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 (N, C, H, W) -> float32 ``(x / 255 - mean) / std`` on ``x``'s device."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def draw(self, n: int, height: int, width: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample crop offsets (rows, columns) and flip flags for ``n`` images, on the CPU."""
        p = self.crop_padding
        top = torch.randint(0, 2 * p + 1, (n,), generator=gen)
        left = torch.randint(0, 2 * p + 1, (n,), generator=gen)
        flip = torch.rand(n, generator=gen) < 0.5 if self.hflip else torch.zeros(n, dtype=torch.bool)
        return top, left, flip

    def augment(self, x: Tensor, top: Tensor, left: Tensor, flip: Tensor) -> Tensor:
        """``x`` (N, C, H, W, any dtype) with each image cropped at (top, left) of its padded copy
        and flipped where ``flip``; the same dtype and shape."""
        n, _, h, w = x.shape
        top, left, flip = top.to(x.device), left.to(x.device), flip.to(x.device)
        p = self.crop_padding
        if p:
            padded = nn.functional.pad(x, (p, p, p, p))
            rows = (top[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
            cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
            x = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
        if self.hflip:
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x.contiguous()

    def train(self, x: Tensor, seed: int, n_global: int, rows: slice | None = None) -> Tensor:
        """The training input of a uint8 batch: augmented (draws from ``seed``), then normalised.

        ``x`` starts with this process's rows ``rows`` of a global batch of ``n_global`` images
        (all of them in one process); the draws are made for the global batch and the shard's
        are used, so every sample gets the draw one process would give it. Rows beyond those
        (stored samples a method appended) get the draws that follow, the same on every process."""
        if self.augments:
            gen = torch.Generator().manual_seed(seed)
            h, w = x.shape[-2], x.shape[-1]
            top, left, flip = self.draw(n_global, h, w, gen)
            if rows is not None:
                top, left, flip = top[rows], left[rows], flip[rows]
            extra = len(x) - len(top)
            if extra > 0:
                more = self.draw(extra, h, w, gen)
                top, left, flip = (torch.cat([a, b]) for a, b in zip((top, left, flip), more, strict=True))
            n = len(x)
            x = self.augment(x, top[:n], left[:n], flip[:n])
        return self.normalize(x)

    def _pre_hook(self, module: nn.Module, args: tuple[object, ...]) -> tuple[object, ...] | None:
        x = args[0] if args else None
        if isinstance(x, Tensor) and x.dtype == torch.uint8:
            return (self.normalize(x), *args[1:])
        return None


def attach(model: nn.Module, inputs: ImageInputs | None) -> nn.Module:
    """Convert every uint8 input ``model`` receives (``inputs.normalize``); returns ``model``.
    The hook travels with copies of the model (``copy.deepcopy``) and is not in its state dict."""
    if inputs is not None:
        model.register_forward_pre_hook(inputs._pre_hook)
    return model

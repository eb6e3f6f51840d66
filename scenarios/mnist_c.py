"""MNIST-C test-time stream: 15 CIFAR10-C-style corruptions of real MNIST digits, offline.

``mnist_c_stream`` (scenario type ``test_time``): the foundation model is trained on the clean
**source** half of MNIST 5k (the same upright-digit source split as ``rotated_mnist_ft``); the
disjoint **target** half (2,500 digits, shuffled once with a fixed data seed) is corrupted by
each of the 15 corruptions of CIFAR10-C/ImageNet-C (Hendrycks & Dietterich, ICLR 2019,
arXiv:1903.12261) in the standard CTTA order, at ``severity`` 5 by default. Each corruption is
one domain (its data is the experience's ``test`` split; train/val are empty). Domains are
streamed in batches of ``batch_size``: ``n_examples / batch_size`` adaptation steps per domain.
The source val/test splits are shuffled once (fixed seed) so that evaluating batch-statistics
methods on the source test split (forgetting of the source) does not see single-class batches.

``passes`` > 1 repeats the whole 15-corruption sequence with the same images (the recurring
setting of Hoang et al., "Persistent Test-time Adaptation in Recurring Testing Scenarios",
NeurIPS 2024, arXiv:2311.18193): a long stream in which error accumulation and collapse show as
a later pass doing worse than the first, while a stateless method scores every pass the same.
Domains of pass 1 are named ``<corruption>``, those of pass k ``<corruption>_pass<k>`` (see
``clbench.tta.domain_pass``); the model is never reset between passes.

Label-preserving augmentations (``stream.meta["label_preserving"]``): horizontal flips are
declared **not** label-preserving here (a mirrored 2, 3, 4, 5, 7 or 9 is not that digit), so
test-time methods that augment their inputs leave flips out on this stream (the test-time loop
hands the declaration to them; see ``clbench.tta.AugmentsInputs``). This is a property of the
data, declared before any evaluation, not a tuned setting.

The corruptions re-implement Hendrycks' ``make_cifar_c.py`` for 28x28 grayscale tensors with
torch/torchvision/numpy. Severity parameters are the CIFAR ones (recalled from the reference
code, not verified line by line); size-dependent ones (elastic) use 28 px. Deviations: frost
uses a procedural ice texture (the reference crops frost photographs that are not shipped);
motion blur follows the numpy re-implementation of ImageNet-C (one-sided Gaussian line kernel,
edge-replicated shifts) instead of ImageMagick; elastic applies the affine and elastic
displacements in one bilinear resampling; zoom uses bilinear (align_corners) resizes;
brightness on grayscale adds to the value channel, which is the pixel itself. Randomness comes
from one ``torch.Generator``/``numpy`` RNG per corruption seeded by ``corruption_seed``, so the
stream (and its content hash) is identical for every run seed.

VERSION history: 1 = initial. 2 = ``passes`` option (default 1: the same experiences as
version 1) and the ``label_preserving`` declaration (flips are not), which changes what
augmenting methods do on this stream.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clbench.errors import ConfigError
from clbench.protocol import Scenario
from clbench.registry import register_scenario
from clbench.streams import Experience, SourceData, Split, Stream
from scenarios._common import DATA_SEED
from scenarios.mnist import MNISTData
from scenarios.mnist_ft import source_and_target

VERSION = "2"
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
)
Rng = tuple[torch.Generator, np.random.Generator]


# ---- filters -------------------------------------------------------------------------------

def _conv(x: Tensor, kernel: Tensor, mode: str = "reflect") -> Tensor:
    """Depthwise 2-D convolution of (N, C, H, W) with one (kh, kw) kernel, padded by ``mode``."""
    kh, kw = kernel.shape
    c = x.shape[1]
    xp = F.pad(x, [kw // 2, kw // 2, kh // 2, kh // 2], mode=mode)
    return F.conv2d(xp, kernel.expand(c, 1, kh, kw).to(x.dtype), groups=c)


def gaussian_blur(x: Tensor, sigma: float, truncate: float = 4.0, mode: str = "replicate") -> Tensor:
    """skimage-style Gaussian filter: radius ``int(truncate·σ + 0.5)``, separable."""
    r = int(truncate * sigma + 0.5)
    if r == 0:
        return x
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return _conv(_conv(x, g[None, :], mode), g[:, None], mode)


def _shift(x: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """Per-image integer shift with edge replication: ``out[y, x] = img[y − dy, x − dx]``."""
    n, _, h, w = x.shape
    ys = (torch.arange(h)[None, :] - dy[:, None]).clamp(0, h - 1)
    xs = (torch.arange(w)[None, :] - dx[:, None]).clamp(0, w - 1)
    return x[torch.arange(n)[:, None, None], :, ys[:, :, None], xs[:, None, :]].permute(0, 3, 1, 2)


def motion_blur_images(x: Tensor, radius: int, sigma: float, angles: np.ndarray) -> Tensor:
    """One-sided Gaussian motion blur along ``angles`` (degrees, one per image)."""
    width = 2 * radius + 1
    k = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    rad = np.deg2rad(angles)
    out = torch.zeros_like(x)
    for i in range(width):
        dy = torch.as_tensor(-np.ceil(i * np.sin(rad) - 0.5), dtype=torch.long)
        dx = torch.as_tensor(-np.ceil(i * np.cos(rad) - 0.5), dtype=torch.long)
        out += float(k[i]) * _shift(x, dx, dy)
    return out


def clipped_zoom(x: Tensor, z: float) -> Tensor:
    """Zoom into the centre by ``z`` and crop back to the input size."""
    h = x.shape[-1]
    ch = int(math.ceil(h / z))
    top = (h - ch) // 2
    out = F.interpolate(x[..., top : top + ch, top : top + ch], size=round(ch * z), mode="bilinear",
                        align_corners=True)
    trim = (out.shape[-1] - h) // 2
    return out[..., trim : trim + h, trim : trim + h]


def plasma_fractal(n: int, mapsize: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square fractal noise in [0, 1], ``n`` maps of ``mapsize``² (Hendrycks' recipe)."""
    a = np.zeros((n, mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled(arr: np.ndarray) -> np.ndarray:
        return arr / 4 + wibble * rng.uniform(-wibble, wibble, arr.shape)

    while step >= 2:
        half = step // 2
        corner = a[:, 0:mapsize:step, 0:mapsize:step]
        sq = corner + np.roll(corner, -1, axis=1)
        sq = sq + np.roll(sq, -1, axis=2)
        a[:, half:mapsize:step, half:mapsize:step] = wibbled(sq)
        dr = a[:, half:mapsize:step, half:mapsize:step]
        ul = a[:, 0:mapsize:step, 0:mapsize:step]
        lt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2)
        a[:, 0:mapsize:step, half:mapsize:step] = wibbled(lt)
        tt = dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1)
        a[:, half:mapsize:step, 0:mapsize:step] = wibbled(tt)
        step //= 2
        wibble /= decay
    a -= a.min(axis=(1, 2), keepdims=True)
    return a / a.max(axis=(1, 2), keepdims=True)


# ---- the 15 corruptions: f(x in [0,1] (N,1,28,28), severity 1..5, rng) -> same shape -------

def gaussian_noise(x: Tensor, s: int, rng: Rng) -> Tensor:
    c = [0.04, 0.06, 0.08, 0.09, 0.10][s - 1]
    return x + torch.randn(x.shape, generator=rng[0]) * c


def shot_noise(x: Tensor, s: int, rng: Rng) -> Tensor:
    c = [500, 250, 100, 75, 50][s - 1]
    return torch.poisson(x * c, generator=rng[0]) / c


def impulse_noise(x: Tensor, s: int, rng: Rng) -> Tensor:
    amount = [0.01, 0.02, 0.03, 0.05, 0.07][s - 1]
    flipped = torch.rand(x.shape, generator=rng[0]) <= amount
    salt = torch.rand(x.shape, generator=rng[0]) <= 0.5
    return torch.where(flipped, salt.to(x.dtype), x)


def defocus_blur(x: Tensor, s: int, rng: Rng) -> Tensor:
    radius, alias = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][s - 1]
    t = torch.arange(-8, 9, dtype=torch.float32)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).float()
    disk = gaussian_blur((disk / disk.sum())[None, None], alias, truncate=1 / max(alias, 1e-6),
                         mode="reflect")[0, 0]  # cv2.GaussianBlur with a 3x3 kernel
    return _conv(x, disk[6:11, 6:11] / disk[6:11, 6:11].sum())


def glass_blur(x: Tensor, s: int, rng: Rng) -> Tensor:
    sigma, delta, iters = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][s - 1]
    a = gaussian_blur(x, sigma)[:, 0].numpy().copy()
    n, h, w = a.shape
    idx = np.arange(n)
    for _ in range(iters):
        for hh in range(h - delta, delta, -1):
            for ww in range(w - delta, delta, -1):
                dx, dy = rng[1].integers(-delta, delta, size=(2, n))
                hp, wp = hh + dy, ww + dx
                a[idx, hh, ww], a[idx, hp, wp] = a[idx, hp, wp], a[idx, hh, ww].copy()
    return gaussian_blur(torch.from_numpy(a)[:, None], sigma)


def motion_blur(x: Tensor, s: int, rng: Rng) -> Tensor:
    radius, sigma = [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)][s - 1]
    return motion_blur_images(x, radius, sigma, rng[1].uniform(-45, 45, len(x)))


def zoom_blur(x: Tensor, s: int, rng: Rng) -> Tensor:
    top = [1.06, 1.11, 1.16, 1.21, 1.26][s - 1]
    zooms = np.arange(1, top, 0.01)
    return (x + sum(clipped_zoom(x, float(z)) for z in zooms)) / (len(zooms) + 1)


def snow(x: Tensor, s: int, rng: Rng) -> Tensor:
    c = [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
         (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][s - 1]
    layer = torch.from_numpy(rng[1].normal(c[0], c[1], x.shape).astype(np.float32))
    layer = clipped_zoom(layer, c[2])
    layer = torch.where(layer < c[3], torch.zeros_like(layer), layer).clamp(0, 1)
    layer = motion_blur_images(layer, c[4], c[5], rng[1].uniform(-135, -45, len(x)))
    x = c[6] * x + (1 - c[6]) * torch.maximum(x, x * 1.5 + 0.5)
    return x + layer + torch.rot90(layer, 2, dims=(-2, -1))


def frost(x: Tensor, s: int, rng: Rng) -> Tensor:
    c0, c1 = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][s - 1]
    n, _, h, w = x.shape
    base = torch.from_numpy(plasma_fractal(n, 32, 1.5, rng[1])[:, None, :h, :w].astype(np.float32))
    seeds = torch.from_numpy((rng[1].random((n, 1, h, w)) < 0.04).astype(np.float32))
    needles = motion_blur_images(seeds, 5, 2.5, rng[1].uniform(-180, 180, n)) * 4
    tex = (base**2 + needles).clamp(0, 1)
    tex = tex / tex.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return c0 * x + c1 * tex


def fog(x: Tensor, s: int, rng: Rng) -> Tensor:
    c0, decay = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][s - 1]
    h, w = x.shape[-2:]
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    plasma = torch.from_numpy(plasma_fractal(len(x), 32, decay, rng[1])[:, None, :h, :w].astype(np.float32))
    return (x + c0 * plasma) * max_val / (max_val + c0)


def brightness(x: Tensor, s: int, rng: Rng) -> Tensor:
    return x + [0.05, 0.1, 0.15, 0.2, 0.3][s - 1]


def contrast(x: Tensor, s: int, rng: Rng) -> Tensor:
    c = [0.75, 0.5, 0.4, 0.3, 0.15][s - 1]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean


def elastic_transform(x: Tensor, s: int, rng: Rng) -> Tensor:
    n, _, h, w = x.shape
    alpha, sigma, affine = (h * v for v in [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                                            (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)][s - 1])
    ctr, sq = h // 2, h // 3
    pts1 = np.array([[ctr + sq, ctr + sq], [ctr + sq, ctr - sq], [ctr - sq, ctr - sq]], dtype=np.float64)
    pts2 = pts1[None] + rng[1].uniform(-affine, affine, (n, 3, 2))
    src = np.concatenate([pts2, np.ones((n, 3, 1))], axis=2)  # inverse map: output -> input
    inv = np.linalg.solve(src, np.broadcast_to(pts1, (n, 3, 2)))  # (n, 3, 2): [x y 1] @ inv
    disp = torch.from_numpy(rng[1].uniform(-1, 1, (n, 2, h, w)).astype(np.float32))
    disp = gaussian_blur(disp, sigma, truncate=3.0, mode="reflect") * alpha if sigma > 0 else disp * 0
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    px, py = xx[None] + disp[:, 0], yy[None] + disp[:, 1]
    m = torch.from_numpy(inv.astype(np.float32))
    sx = px * m[:, 0, 0, None, None] + py * m[:, 1, 0, None, None] + m[:, 2, 0, None, None]
    sy = px * m[:, 0, 1, None, None] + py * m[:, 1, 1, None, None] + m[:, 2, 1, None, None]
    grid = torch.stack([2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def pixelate(x: Tensor, s: int, rng: Rng) -> Tensor:
    c = [0.95, 0.9, 0.85, 0.75, 0.65][s - 1]
    h = x.shape[-1]
    small = F.interpolate(x, size=int(h * c), mode="area")
    return F.interpolate(small, size=h, mode="nearest")


def jpeg_compression(x: Tensor, s: int, rng: Rng) -> Tensor:
    from torchvision.io import (  # here: torchvision takes a second to import
        decode_jpeg,
        encode_jpeg,
    )

    q = [80, 65, 58, 50, 40][s - 1]
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    out = decode_jpeg(encode_jpeg(list(u8), quality=q))
    return torch.stack(list(out)).float() / 255.0


FUNCTIONS: dict[str, Callable[[Tensor, int, Rng], Tensor]] = {name: globals()[name] for name in CORRUPTIONS}


def corrupt(x: Tensor, name: str, severity: int, seed: int = 0) -> Tensor:
    """Apply corruption ``name`` at ``severity`` (1–5) to float images (N, 1, H, W) in [0, 1].

    Deterministic: the same (images, name, severity, seed) always give the same output.
    """
    if name not in FUNCTIONS:
        raise ConfigError("scenario.corruptions", name, CORRUPTIONS)
    if not 1 <= severity <= 5:
        raise ConfigError("scenario.severity", severity, "an integer 1..5")
    k = CORRUPTIONS.index(name)
    rng = (torch.Generator().manual_seed(seed * 1000 + k * 10 + severity),
           np.random.default_rng([seed, k, severity]))
    return FUNCTIONS[name](x.float(), severity, rng).clamp(0.0, 1.0).contiguous()


@functools.lru_cache(maxsize=64)
def _corrupted(c: MNISTCConfig, name: str) -> Tensor:
    return corrupt(_target(c).x, name, c.severity, c.corruption_seed)


@functools.lru_cache(maxsize=4)
def _target(c: MNISTCConfig) -> Split:
    _, tgt = source_and_target(c)
    data = Split.concat(list(tgt))
    order = torch.as_tensor(np.random.default_rng(DATA_SEED + 11).permutation(len(data)))
    data = data.subset(order)
    return data.subset(torch.arange(c.n_examples)) if 0 < c.n_examples < len(data) else data


def _source(c: MNISTData) -> SourceData:
    """The upright source split with val/test shuffled once (fixed seed): evaluation batches of
    batch-statistics methods must not be single-class runs of the class-sorted split."""
    src, _ = source_and_target(c)
    g = np.random.default_rng(DATA_SEED + 13)
    val, test = (s.subset(torch.as_tensor(g.permutation(len(s)))) for s in (src.val, src.test))
    return SourceData(src.name, src.train, val, test)


@dataclass(frozen=True)
class MNISTCConfig(MNISTData):
    """Options of ``mnist_c_stream``.

    Attributes:
        severity: corruption severity 1..5 (CTTA standard: 5).
        corruptions: the domains in stream order (default: the 15 in the standard CTTA order).
        corruption_seed: seed of the corruptions' randomness (part of the data, not the run).
        batch_size: test-time batch size of the online stream.
        n_examples: target images per domain (0 = all 2,500).
        passes: times the whole corruption sequence is streamed (same images, no reset between
            passes); domains of pass k > 1 are named ``<corruption>_pass<k>``.
        test_fraction, val_fraction: test and validation shares of each class of the clean source
            half (the target half is streamed whole).
    """

    severity: int = 5
    corruptions: tuple[str, ...] = CORRUPTIONS
    corruption_seed: int = 0
    batch_size: int = 100
    n_examples: int = 0
    passes: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.severity <= 5:
            raise ConfigError("scenario.severity", self.severity, "an integer 1..5")
        bad = [c for c in self.corruptions if c not in CORRUPTIONS]
        if bad or not self.corruptions:
            raise ConfigError("scenario.corruptions", bad, CORRUPTIONS)
        if self.batch_size < 1 or self.n_examples < 0:
            raise ConfigError("scenario.batch_size", self.batch_size, "batch_size >= 1, n_examples >= 0")
        if self.passes < 1:
            raise ConfigError("scenario.passes", self.passes, "an integer >= 1")


@register_scenario("mnist_c_stream")
class MNISTCStream(Scenario):
    """MNIST-C continual test-time stream: 15 corruptions (severity 5) of held-out digits."""

    Config = MNISTCConfig
    VERSION = VERSION
    default_model = "cnn_bn"

    def build(self) -> Stream:
        c: MNISTCConfig = self.config
        source = _source(c)
        y = _target(c).y
        empty = Split(_target(c).x[:0], y[:0])
        names = domain_names(c.corruptions, c.passes)
        exps = tuple(Experience(i, 0, tuple(range(10)), empty, empty, Split(_corrupted(c, name.split("_pass")[0]), y))
                     for i, name in enumerate(names))
        meta = {"domains": names, "severity": c.severity, "batch_size": c.batch_size,
                "corruption_seed": c.corruption_seed, "passes": c.passes,
                "label_preserving": {"hflip": False}}
        return Stream("mnist_c_stream", VERSION, "test_time", exps, 10, self.__doc__ or "",
                      source=source, meta=meta)


def domain_names(corruptions: tuple[str, ...], passes: int) -> list[str]:
    """``<corruption>`` for pass 1, ``<corruption>_pass<k>`` for pass k, in stream order."""
    return [name if k == 1 else f"{name}_pass{k}" for k in range(1, passes + 1) for name in corruptions]

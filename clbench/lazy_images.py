"""Owns image splits read lazily from disk: :class:`LazyImages`, a stand-in for a uint8 image
tensor (N, 3, size, size) that keeps file paths and decodes the rows it is indexed with, and
:class:`BatchLoader`, the ``torch.utils.data.DataLoader`` the trainer feeds such a split through.

A scenario stores its images this way when asked (``scenario.storage=disk`` on the real vision
benchmarks read from image files, :mod:`scenarios._vision`); by default images are decoded once
into a uint8 tensor held in memory, and nothing here is used.

What a ``LazyImages`` ``x`` does as the tensor would:

- ``len(x)``, ``x.shape`` (N, 3, size, size), ``x.dtype`` (uint8), ``x.device`` (CPU), ``x.ndim``,
  ``x.dim()``, ``x.size()``;
- ``x[key]`` for an int, a slice, an integer or boolean index (tensor, list, numpy array), or a
  tuple whose first element is one of these: those rows decoded into a new uint8 tensor (the rest
  of a tuple then applies to it); iterating decodes one row at a time;
- ``torch.cat`` (``concat``, ``concatenate``) along dim 0 of LazyImages and uint8 CPU tensors of
  the same image shape: a ``LazyImages`` again, the tensors' rows kept as they are (a method's
  stored samples added to a split on disk).

Beyond the tensor: ``x.take(idx)`` is rows as another ``LazyImages`` (nothing decoded;
:meth:`clbench.splits.Split.subset` uses it), ``x.chunks(n)`` the decoded rows in consecutive
blocks (the stream's content hash, identical to the in-memory tensor's), and ``x.loading`` how the
trainer loads it (:class:`Loading`). Everything else (``.to``, ``.float()``, arithmetic, other
torch functions) needs every image in memory and raises an error that says so: index rows first,
or build the stream with ``scenario.storage=memory``.

Decoding (:func:`decode_image`, or the ``decoder`` a scenario gives :meth:`LazyImages.from_files`
when its in-memory loader decodes differently) is the one the in-memory loader uses, so a row
decoded here is the row the in-memory tensor holds. Indexing decodes in the calling process, one file after the
other; the trainer's :class:`BatchLoader` decodes its batches in ``Loading.workers`` processes.
A file that cannot be read raises :class:`~clbench.errors.DataUnavailableError` when it is first
decoded, not when the stream is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clbench.errors import ConfigError, DataUnavailableError

_CAT = (torch.cat, torch.concat, torch.concatenate)


def decode_image(path: str | Path, size: int, crop_fraction: float = 1.0) -> Tensor:
    """One image file as uint8 (3, size, size): converted to RGB, shorter side resized to
    ``size / crop_fraction`` (PIL bilinear, as torchvision's Resize on PIL images), then
    centre-cropped; an image already ``size`` x ``size`` is kept as it is.

    Raises:
        DataUnavailableError: the file is missing or not a readable image.
    """
    import torchvision.transforms.v2.functional as F
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DataUnavailableError(f"{path} is not a readable image ({exc})") from exc
    if img.size != (size, size):
        img = F.center_crop(F.resize(img, [round(size / crop_fraction)]), [size, size])
    out: Tensor = F.pil_to_tensor(img)
    return out


@dataclass(frozen=True)
class Loading:
    """How the trainer's DataLoader reads a split on disk.

    Attributes:
        workers: decoding processes (``DataLoader(num_workers=...)``); 0 decodes in the training
            process.
        pin_memory: batches in page-locked memory, for asynchronous copies to a CUDA device
            (ignored when training on the CPU).
        persistent_workers: keep the worker processes between the epochs of an experience (a new
            set starts for each experience's training data).
    """

    workers: int = 0
    pin_memory: bool = True
    persistent_workers: bool = True

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError("scenario.workers", self.workers, "an integer >= 0")


Decoder = Callable[[str, int], Tensor]  # (path, size) -> uint8 (3, size, size)


@dataclass(frozen=True)
class ImageFiles:
    """Image files decoded at one size: a source of rows.

    ``decoder``: None decodes with :func:`decode_image` (``path, size, crop_fraction``); else
    ``decoder(path, size)`` (``crop_fraction`` unused), which must return uint8 (3, size, size)
    and should raise :class:`~clbench.errors.DataUnavailableError` for an unreadable file. It
    must be picklable (a module-level function) when ``Loading.workers`` > 0."""

    paths: tuple[str, ...]
    size: int
    crop_fraction: float = 1.0
    decoder: Decoder | None = None

    def decode(self, r: int) -> Tensor:
        """File ``r`` decoded."""
        if self.decoder is None:
            return decode_image(self.paths[r], self.size, self.crop_fraction)
        return self.decoder(self.paths[r], self.size)


Source = ImageFiles | Tensor  # a tensor source: uint8 rows kept in memory


class LazyImages:
    """uint8 images (N, C, H, W) decoded from files when indexed (see the module docstring).

    Rows come from ``sources`` (image files, or uint8 tensors after a ``torch.cat`` with one): row
    ``i`` is row ``row[i]`` of source ``src[i]``. Subsets and concatenations share the sources.
    """

    def __init__(self, sources: Sequence[Source], src: Tensor, row: Tensor, image_shape: tuple[int, ...],
                 loading: Loading) -> None:
        if len(src) != len(row):
            raise ValueError(f"{len(src)} source ids but {len(row)} rows")
        self._sources = tuple(sources)
        self._src, self._row = src, row
        self._image_shape = tuple(image_shape)
        self.loading = loading

    @classmethod
    def from_files(cls, paths: Sequence[str | Path], size: int, crop_fraction: float = 1.0,
                   loading: Loading | None = None, decoder: Decoder | None = None) -> LazyImages:
        """The images in ``paths`` (in that order) as (N, 3, size, size), decoded on access with
        :func:`decode_image`, or with ``decoder(path, size)`` when given (see :class:`ImageFiles`)."""
        files = ImageFiles(tuple(str(p) for p in paths), size, crop_fraction, decoder)
        n = len(files.paths)
        return cls((files,), torch.zeros(n, dtype=torch.long), torch.arange(n), (3, size, size),
                   loading or Loading())

    # ---------------------------------------------------------------- what the tensor has

    def __len__(self) -> int:
        return len(self._src)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self._image_shape))

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def ndim(self) -> int:
        return 1 + len(self._image_shape)

    def dim(self) -> int:
        return self.ndim

    def size(self, d: int | None = None) -> torch.Size | int:
        return self.shape if d is None else self.shape[d]

    def __getitem__(self, key: Any) -> Tensor:
        if isinstance(key, tuple):
            if not key:
                raise IndexError("LazyImages: an empty index tuple would decode every image; index rows")
            pos = self._positions(key[0])
            return self._decode(pos.reshape(-1)).view(*pos.shape, *self._image_shape)[
                (slice(None),) * pos.dim() + key[1:]]
        pos = self._positions(key)
        return self._decode(pos.reshape(-1)).view(*pos.shape, *self._image_shape)

    def __iter__(self) -> Iterator[Tensor]:
        for i in range(len(self)):
            yield self._decode(torch.tensor([i]))[0]

    def __repr__(self) -> str:
        files = sum(len(s.paths) for s in self._sources if isinstance(s, ImageFiles))
        return (f"LazyImages({len(self)} images of {self._image_shape} uint8 from {len(self._sources)} "
                f"source(s), {files} files, decoded on access)")

    @classmethod
    def __torch_function__(cls, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        if func in _CAT:
            return cls._cat(*args, **(kwargs or {}))
        name = getattr(func, "__name__", str(func))
        raise TypeError(f"torch.{name} on LazyImages (images read from disk on access) would need every "
                        "image in memory; index rows first (x[idx] decodes them) or build the stream "
                        "with scenario.storage=memory")

    def __getattr__(self, name: str) -> Any:  # only for names the class does not define
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"LazyImages (images read from disk on access) has no {name!r}: it would "
                             "need every image in memory; index rows first (x[idx] decodes them) or "
                             "build the stream with scenario.storage=memory")

    # ---------------------------------------------------------------- beyond the tensor

    def take(self, key: Any) -> LazyImages:
        """The rows ``key`` (a slice, an integer or boolean index) as a ``LazyImages``; nothing is decoded."""
        pos = self._positions(key)
        if pos.dim() != 1:
            raise IndexError(f"LazyImages.take needs a 1-d index (a slice, an index vector or a mask), got {key!r}")
        return LazyImages(self._sources, self._src[pos], self._row[pos], self._image_shape, self.loading)

    def chunks(self, n: int = 256) -> Iterator[Tensor]:
        """Every row decoded, in order, ``n`` rows at a time (in ``loading.workers`` processes when > 0)."""
        blocks = [torch.arange(i, min(i + n, len(self))) for i in range(0, len(self), n)]
        if self.loading.workers == 0:
            yield from (self._decode(b) for b in blocks)
            return
        loader = BatchLoader(_Rows(self), Loading(self.loading.workers, False, False), pin_memory=False)
        yield from loader(blocks)

    def _positions(self, key: Any) -> Tensor:
        """Row positions (a long tensor of any shape) of an index into the first dimension."""
        n = len(self)
        if isinstance(key, slice):
            return torch.arange(n)[key]
        if key is None or key is Ellipsis:
            raise IndexError(f"LazyImages: index {key!r} is not supported; index rows (an int, a slice, "
                             "an index vector or a mask)")
        t = torch.as_tensor(key).cpu()
        if t.dtype == torch.bool:
            if t.shape != (n,):
                raise IndexError(f"LazyImages: a boolean mask of shape {tuple(t.shape)} for {n} rows")
            return t.nonzero().flatten()
        if t.is_floating_point() or t.is_complex():
            raise IndexError(f"LazyImages: rows are indexed by integers, got {t.dtype}")
        return torch.arange(n)[t.long()]  # bounds and negative indices as a tensor's

    def _decode(self, pos: Tensor) -> Tensor:
        """uint8 (len(pos), *image shape): the rows at positions ``pos`` (1-d)."""
        out = torch.empty((len(pos), *self._image_shape), dtype=torch.uint8)
        if not len(pos):
            return out
        src, row = self._src[pos], self._row[pos]
        for s in src.unique().tolist():
            where = (src == s).nonzero().flatten()
            source = self._sources[s]
            if isinstance(source, Tensor):
                out[where] = source[row[where]]
                continue
            for k, r in zip(where.tolist(), row[where].tolist(), strict=True):
                out[k] = source.decode(r)
        return out

    @classmethod
    def _cat(cls, parts: Sequence[Any], dim: int = 0, *, out: Any = None) -> LazyImages:
        if dim != 0 or out is not None:
            raise TypeError("torch.cat of LazyImages: along dim 0 only, without out=")
        lazy = [p for p in parts if isinstance(p, LazyImages)]
        shape = lazy[0]._image_shape
        sources: list[Source] = []
        index: dict[int, int] = {}  # id(source) -> its position in ``sources`` (shared ones once)
        srcs, rows = [], []
        own: tuple[Source, ...]
        for p in parts:
            if isinstance(p, Tensor):
                if p.dtype != torch.uint8 or tuple(p.shape[1:]) != shape:
                    raise TypeError(f"torch.cat of LazyImages {shape} uint8 with a {p.dtype} tensor of rows "
                                    f"{tuple(p.shape[1:])}: the rows must be uint8 images of the same shape")
                own, p_src, p_row = (p.cpu(),), torch.zeros(len(p), dtype=torch.long), torch.arange(len(p))
            elif isinstance(p, LazyImages):
                if p._image_shape != shape:
                    raise TypeError(f"torch.cat of LazyImages of shapes {shape} and {p._image_shape}")
                own, p_src, p_row = p._sources, p._src, p._row
            else:
                raise TypeError(f"torch.cat of LazyImages with a {type(p).__name__}")
            remap = []
            for s in own:
                if id(s) not in index:
                    index[id(s)] = len(sources)
                    sources.append(s)
                remap.append(index[id(s)])
            srcs.append(torch.tensor(remap, dtype=torch.long)[p_src] if len(p_src) else p_src)
            rows.append(p_row)
        return LazyImages(sources, torch.cat(srcs), torch.cat(rows), shape, lazy[0].loading)


def lazy_images(x: object) -> LazyImages | None:
    """``x`` when it is a :class:`LazyImages` (a split stored on disk), else None."""
    return x if isinstance(x, LazyImages) else None


# --------------------------------------------------------------------------- the DataLoader

class _Rows(torch.utils.data.Dataset[Tensor]):
    """Items are whole blocks: positions -> those rows decoded."""

    def __init__(self, x: LazyImages) -> None:
        self.x = x

    def __getitem__(self, pos: Tensor) -> Tensor:
        return self.x[pos]


class _Keys(torch.utils.data.Sampler[Any]):
    """The keys of the current pass, set before each pass (the loader and its workers stay)."""

    def __init__(self) -> None:
        self.keys: list[Any] = []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def _as_is(item: Any) -> Any:
    return item


class BatchLoader:
    """A ``DataLoader`` over a map-style dataset whose items are whole batches, in the order given.

    Each call ``loader(keys)`` is one pass: the dataset's item for each key, in the order of
    ``keys`` (``batch_size=None``: no collation; the keys are the caller's, e.g. index tensors
    of a permutation the caller drew), decoded in ``loading.workers`` processes. The loader and
    its persistent workers are kept across passes; the workers' base seed comes from a private
    generator, so loading draws nothing from torch's global random state.
    """

    def __init__(self, dataset: torch.utils.data.Dataset[Any], loading: Loading, pin_memory: bool) -> None:
        self._keys = _Keys()
        w = loading.workers
        self.loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
            dataset, batch_size=None, sampler=self._keys, num_workers=w, collate_fn=_as_is,
            pin_memory=pin_memory, persistent_workers=loading.persistent_workers and w > 0,
            generator=torch.Generator())

    def __call__(self, keys: Sequence[Any]) -> Iterator[Any]:
        self._keys.keys = list(keys)
        return iter(self.loader)

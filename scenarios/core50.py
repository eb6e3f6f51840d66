"""CORe50 NI and NC streams read from the local ``core50_128x128`` folder (no download).

Layout under ``scenario.root`` (the extracted ``core50_128x128.zip``)::

    core50_128x128/s<session 1..11>/o<object 1..50>/C_<ss>_<oo>_<frame>.png   (128x128 RGB)

50 objects (class id = object number - 1) of 10 categories, filmed in 11 sessions (about 300
frames each). Batch definitions, after Lomonaco & Maltoni, "CORe50: a New Dataset and Benchmark
for Continuous Object Recognition" (CoRL 2017, PMLR 78; arXiv 1705.03550), section 4:

- test set (both protocols): sessions 3, 7 and 10, every object;
- ``protocol=ni`` (New Instances, domain-incremental): 8 experiences, one per training session
  (1, 2, 4, 5, 6, 8, 9, 11), each with all 50 objects; every experience is tested on the whole
  test set;
- ``protocol=nc`` (New Classes, class-incremental): 9 experiences, the first with 10 objects and
  the others with 5, each with all 8 training sessions of its objects; experience i is tested on
  the test images of its objects.

Images stay uint8 at 128 px (``image_size`` resizes; ``storage=disk`` keeps them on disk, decoded when
a batch needs them, see :class:`scenarios._vision.VisionData`), normalised with ImageNet's mean/std and
flipped at random in training (Avalanche's default CORe50 transforms). The simplest faithful version: the batches follow the session/object rules above; session order
is ascending (``session_order_seed`` shuffles it) and the NC object order is PyCIL's seeded
permutation (``class_order_seed``, 1993). The ten official runs (``batches_filelists.zip``,
folders ``NI_inc/run<k>`` and ``NC_inc/run<k>``) fix their own orders: ``filelists=<run folder>``
reads ``train_batch_<XX>_filelist.txt`` and ``test_filelist.txt`` from one instead (class ids from
the ``o<k>`` folder of each path, i.e. object level).

Checksums (md5, as Avalanche 0.6 ``core50_data.py`` lists them; the extracted files are not
checked): core50_128x128.zip 745f3373fed08d69343f1058ee559e13, batches_filelists.zip
e3297508a8998ba0c99a83d6b36bde62. Online alternative (downloads):
``scenario=avalanche scenario.benchmark=CORe50 scenario.kwargs.scenario=ni`` (or nc).

VERSION history: 1 = initial.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from clbench.errors import ConfigError
from clbench.protocol import Scenario
from clbench.registry import register_scenario
from clbench.streams import Split, Stream
from scenarios._vision import (
    IMAGENET_STATS,
    VisionData,
    class_groups,
    experiences,
    find_dataset,
    image_files,
    image_split,
    layout_error,
    make_stream,
    ordered_classes,
)

VERSION = "1"
NAME = "core50"
LAYOUT = "core50_128x128/s<session 1..11>/o<object 1..50>/*.png (the extracted core50_128x128.zip)"
N_OBJECTS = 50
_OBJECT = re.compile(r"^o(\d+)$")
Listing = list[tuple[Path, int]]


@dataclass(frozen=True)
class CORe50Config(VisionData):
    """Options of ``core50`` (see :class:`scenarios._vision.VisionData`; ``n_classes`` keeps
    objects 1..k).

    Attributes:
        protocol: ``ni`` (one experience per training session, all objects) or ``nc``
            (experiences of new objects over all training sessions).
        train_sessions: the training sessions, in NI's experience order.
        test_sessions: the sessions of the test set.
        session_order_seed: None: NI experiences in ``train_sessions`` order; s: that order
            shuffled with ``np.random.RandomState(s)``.
        frame_step: keep every k-th frame of each (session, object) clip (1: all, about 300).
        filelists: folder of one official run (``batches_filelists/NI_inc/run0``...); when set,
            its train_batch_XX_filelist.txt / test_filelist.txt define the experiences.
    """

    protocol: Literal["ni", "nc"] = "ni"
    n_experiences: int = 9  # NC: experiences (9: the first with first_classes objects, then 8 x 5); NI ignores it
    first_classes: int = 10  # NC: objects in the first experience (0: equal groups)
    image_size: int = 128
    train_sessions: tuple[int, ...] = (1, 2, 4, 5, 6, 8, 9, 11)
    test_sessions: tuple[int, ...] = (3, 7, 10)
    session_order_seed: int | None = None
    frame_step: int = 1
    filelists: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.protocol == "ni" and self.task_incremental:
            raise ConfigError("scenario.task_incremental", True, "false for protocol=ni (one task, new instances)")
        if set(self.train_sessions) & set(self.test_sessions) or not self.train_sessions or not self.test_sessions:
            raise ConfigError("scenario.test_sessions", list(self.test_sessions),
                              "non-empty and disjoint from train_sessions")
        if self.frame_step < 1 or self.n_classes > N_OBJECTS:
            raise ConfigError("scenario.frame_step", self.frame_step, f"frame_step >= 1, n_classes <= {N_OBJECTS}")


def _clip(base: Path, session: int, obj: int, step: int) -> list[Path]:
    folder = base / f"s{session}" / f"o{obj}"
    files = image_files(folder) if folder.is_dir() else []
    if not files:
        raise layout_error(NAME, base, LAYOUT, f"no images in {folder}")
    return files[::step]


def _sessions(base: Path, sessions: tuple[int, ...], n: int, step: int) -> Listing:
    return [(p, o - 1) for s in sessions for o in range(1, n + 1) for p in _clip(base, s, o, step)]


def _split(listing: Listing, c: CORe50Config) -> Split:
    return image_split(listing, c)  # decoded now, or on access with storage=disk


def _session_parts(c: CORe50Config, base: Path, n: int) -> tuple[list[tuple[tuple[int, ...], Split]], Split, dict[str, Any]]:
    test = _split(_sessions(base, c.test_sessions, n, c.frame_step), c)
    if c.protocol == "ni":
        order = list(c.train_sessions)
        if c.session_order_seed is not None:
            order = [order[i] for i in np.random.RandomState(c.session_order_seed).permutation(len(order))]
        every = tuple(range(n))
        parts = [(every, _split(_sessions(base, (s,), n, c.frame_step), c)) for s in order]
        return parts, test, {"session_order": order}
    train = _split(_sessions(base, c.train_sessions, n, c.frame_step), c)
    objects = ordered_classes(n, c)
    groups = class_groups(objects, c.n_experiences, c.first_classes)
    parts = [(g, train.subset(torch.isin(train.y, torch.tensor(g)))) for g in groups]
    return parts, test, {"class_order": objects}


def _read_filelist(path: Path, base: Path, n: int) -> Listing:
    out: Listing = []
    for k, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        rel = Path(line.split()[0])
        m = _OBJECT.match(rel.parent.name)
        if m is None or not 1 <= int(m.group(1)) <= N_OBJECTS:
            raise layout_error(NAME, base, LAYOUT, f"{path.name} line {k + 1}: {rel} is not s<k>/o<k>/<file>.png")
        if int(m.group(1)) <= n:
            out.append((base / rel, int(m.group(1)) - 1))
    missing = [str(p) for p, _ in out if not p.is_file()]
    if missing:
        raise layout_error(NAME, base, LAYOUT, f"{len(missing)} images in {path} are missing, e.g. {missing[0]}")
    return out


def _filelist_parts(c: CORe50Config, base: Path, n: int) -> tuple[list[tuple[tuple[int, ...], Split]], Split, dict[str, Any]]:
    folder = Path(c.filelists)
    batches = sorted(folder.glob("train_batch_*_filelist.txt"))
    if not batches or not (folder / "test_filelist.txt").is_file():
        raise layout_error(NAME, base, LAYOUT, f"scenario.filelists={c.filelists!r} holds no "
                           "train_batch_XX_filelist.txt and test_filelist.txt (an official run folder)")
    parts = []
    for b in batches:
        listing = _read_filelist(b, base, n)
        parts.append((tuple(sorted({y for _, y in listing})), _split(listing, c)))
    test = _split(_read_filelist(folder / "test_filelist.txt", base, n), c)
    return [p for p in parts if p[0]], test, {"filelists": [b.name for b in batches]}


@register_scenario("core50")
class CORe50(Scenario):
    """CORe50 NI (8 sessions, domain-incremental) or NC (9 object groups, class-incremental) from local core50_128x128."""

    Config = CORe50Config
    VERSION = VERSION

    def build(self) -> Stream:
        c: CORe50Config = self.config
        base = find_dataset(c.root, "core50_128x128", ("s1",), NAME, LAYOUT)
        n = c.n_classes or N_OBJECTS
        if not c.n_classes:
            found = sorted(int(m.group(1)) for d in (base / "s1").iterdir() if (m := _OBJECT.match(d.name)))
            if found != list(range(1, N_OBJECTS + 1)):
                raise layout_error(NAME, base, LAYOUT, f"s1 holds objects {found[:5]}... ({len(found)}), not o1..o50 "
                                   "(scenario.n_classes=<k> reads objects 1..k)")
        parts, test, how = (_filelist_parts if c.filelists else _session_parts)(c, base, n)
        exps = experiences(parts, test, c)
        meta = {"dataset": "core50_128x128", "protocol": c.protocol, "test_sessions": list(c.test_sessions),
                "image_size": c.image_size, "frame_step": c.frame_step, **how}
        kind = "domain_incremental" if c.protocol == "ni" else "class_incremental"
        return make_stream(NAME, VERSION, self.__doc__ or "", exps, n, meta, c.inputs(IMAGENET_STATS), kind=kind)

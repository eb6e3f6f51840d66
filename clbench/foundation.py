"""Owns foundation models: pretrain on a scenario's source split once, cache, reload.

The cache key hashes the model name and options, the source data's content, and the
:class:`~clbench.config.FoundationConfig` (seed included), so a cached foundation is reused only
for exactly the same recipe. Files are written atomically; loading uses ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clbench.checkpoint import atomic_write_json
from clbench.config import FoundationConfig, TrainerConfig, to_plain
from clbench.protocol import Method
from clbench.streams import Experience, SourceData, Split, Stream
from clbench.trainer import Trainer


def cache_dir(cfg: FoundationConfig) -> Path:
    """``foundation.cache_dir`` > ``$CLBENCH_CACHE`` > ``~/.cache/clbench``; plus ``/foundations``."""
    root = cfg.cache_dir or os.environ.get("CLBENCH_CACHE") or str(Path.home() / ".cache" / "clbench")
    return Path(root) / "foundations"


def source_hash(source: SourceData) -> str:
    h = hashlib.sha256(source.name.encode())
    for s in (source.train, source.val, source.test):
        for t in (s.x, s.y):
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def foundation_key(model_name: str, model_options: dict[str, Any], source: SourceData,
                   cfg: FoundationConfig) -> str:
    recipe = {"model": model_name, "options": to_plain(model_options), "source": source_hash(source),
              "foundation": {k: v for k, v in to_plain(cfg).items() if k != "cache_dir"}}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def obtain_foundation(model: nn.Module, model_name: str, model_options: dict[str, Any],
                      stream: Stream, cfg: FoundationConfig, device: torch.device,
                      progress: bool) -> dict[str, Any]:
    """Load the cached foundation into ``model`` or pretrain it (and cache it).

    Returns provenance: cache key, path, whether it was cached, pretraining time and accuracy.
    """
    assert stream.source is not None
    key = foundation_key(model_name, model_options, stream.source, cfg)
    path = cache_dir(cfg) / f"{key}.pt"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return {**json.loads(meta_path.read_text()), "cached": True}
    meta = pretrain(model, stream, cfg, device, progress)
    meta.update(key=key, path=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)
    atomic_write_json(meta_path, meta)
    return {**meta, "cached": False}


def pretrain(model: nn.Module, stream: Stream, cfg: FoundationConfig, device: torch.device,
             progress: bool) -> dict[str, Any]:
    """Supervised pretraining on the source train split with the one trainer (seeded)."""
    assert stream.source is not None
    src = stream.source
    torch.manual_seed(cfg.seed)
    tcfg = TrainerConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                         optimizer=cfg.optimizer, weight_decay=cfg.weight_decay, progress=progress)
    classes = tuple(sorted(int(c) for c in src.train.y.unique()))
    exp = Experience(0, 0, classes, src.train, src.val, src.test)
    model.to(device)
    start = time.perf_counter()
    Trainer(tcfg, device).train_experience(model, Method(), exp, [exp],
                                           torch.Generator().manual_seed(cfg.seed))
    seconds = time.perf_counter() - start
    model.cpu()
    return {"source": src.name, "pretrain_seconds": seconds, "val_acc": _acc(model, src.val),
            "test_acc": _acc(model, src.test), "recipe": to_plain(cfg)}


@torch.inference_mode()
def _acc(model: nn.Module, data: Split) -> float:
    model.eval()
    correct = sum(int((model(data.x[i : i + 1024]).argmax(-1) == data.y[i : i + 1024]).sum())
                  for i in range(0, len(data), 1024))
    model.train()
    return correct / max(len(data), 1)

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
from clbench.config import FoundationConfig, TrainerConfig
from clbench.options import to_plain
from clbench.protocol import Method
from clbench.streams import Batch, Experience, SourceData, Split, Stream
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
    # the foundation is a function of its recipe only: start from weights initialised under the
    # foundation seed, not under the seed of whichever run happens to pretrain it first
    from clbench.models import build_model

    torch.manual_seed(cfg.seed)
    fresh, _ = build_model(model_name, stream.info(), model_options)
    model.load_state_dict(fresh.state_dict())
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
    method = Method() if not cfg.augment_degrees else _Augment(cfg.augment_degrees, cfg.seed)
    Trainer(tcfg, device, inputs=stream.inputs).train_experience(model, method, exp, [exp],
                                           torch.Generator().manual_seed(cfg.seed))
    seconds = time.perf_counter() - start
    model.cpu()
    return {"source": src.name, "pretrain_seconds": seconds, "val_acc": _acc(model, src.val),
            "test_acc": _acc(model, src.test), "recipe": to_plain(cfg)}


def random_affine(x: torch.Tensor, degrees: float, gen: torch.Generator) -> torch.Tensor:
    """Per-image random rotation (+-degrees), scale (0.9-1.1) and shift (+-10 %) of (N, C, H, W)."""
    n = x.shape[0]
    u = torch.rand(n, 4, generator=gen) * 2 - 1
    angle = u[:, 0] * degrees * torch.pi / 180
    scale = 1 + 0.1 * u[:, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, 0.2 * u[:, 2]], 1),
                         torch.stack([sin, cos, 0.2 * u[:, 3]], 1)], 1).to(x.device, x.dtype)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


class _Augment(Method):
    """Pretraining only: random affine augmentation of every training batch (seeded)."""

    def __init__(self, degrees: float, seed: int) -> None:
        super().__init__()
        self.degrees, self.gen = degrees, torch.Generator().manual_seed(seed + 1)

    def transform_batch(self, batch: Batch) -> Batch:
        x = batch.x
        if x.dim() == 3:
            x = x.unsqueeze(1)
        aug = random_affine(x.float(), self.degrees, self.gen).reshape(batch.x.shape)
        return Batch(aug, batch.y, batch.task)


def _acc(model: nn.Module, data: Split) -> float:
    """Test accuracy of the plain model (no method) through the one evaluation loop."""
    from clbench.evaluation import Evaluator
    from clbench.protocol import Method

    device = next(model.parameters()).device
    return Evaluator(device, 1024, precision="fp32").split_accuracy(model, Method(), data)

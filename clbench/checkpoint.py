"""Owns checkpoints (at experience boundaries, ``checkpoint.pt``; within an experience every
``trainer.checkpoint_every`` optimizer steps, ``checkpoint-step.pt``) and atomic file writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from clbench.errors import ClbenchError

CHECKPOINT = "checkpoint.pt"
STEP_CHECKPOINT = "checkpoint-step.pt"  # the state within the experience after checkpoint.pt
DIGEST = "content_sha256"  # checkpoints written before it existed load unchecked


def _umask_mode() -> int:
    """The mode a plain ``open()`` would give a new file (0o666 minus the process umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + rename: never a half-written file. The file
    gets the permissions the umask gives (``mkstemp`` alone would make it 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, _umask_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def state_digest(obj: Any) -> str:
    """sha256 of a checkpoint's content: every tensor's dtype, shape and bytes and every plain
    value, walked in a fixed order (dict keys sorted)."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=str):
                h.update(repr(k).encode())
                walk(x[k])
            h.update(b"}")
        elif isinstance(x, list | tuple):
            h.update(b"[")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    walk(obj)
    return h.hexdigest()


def save_checkpoint(run_dir: Path, state: dict[str, Any], name: str = CHECKPOINT) -> None:
    """Atomically save ``state`` (tensors, numbers, strings, containers) to ``run_dir/name``,
    with the :func:`state_digest` of its content (checked by :func:`load_checkpoint`)."""
    state = {**state, DIGEST: state_digest(state)}
    path = run_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{name}.")
    os.fchmod(fd, _umask_mode())
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(run_dir: Path, name: str = CHECKPOINT) -> dict[str, Any] | None:
    """The checkpoint ``run_dir/name`` (``weights_only=True``), or None if there is none.

    Raises:
        ClbenchError: the file does not load, or its content no longer matches its digest
            (damaged on disk); the message names ``--force``.
    """
    path = run_dir / name
    if not path.is_file():
        return None
    damaged = f"checkpoint {path} is damaged"
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise ClbenchError(f"{damaged} ({type(exc).__name__}); rerun with --force to start the run over") from exc
    stored = state.pop(DIGEST, None) if isinstance(state, dict) else None
    if not isinstance(state, dict) or (stored is not None and stored != state_digest(state)):
        raise ClbenchError(f"{damaged} (its content does not match its sha256); rerun with --force to "
                           "start the run over")
    return state

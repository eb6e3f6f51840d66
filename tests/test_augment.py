"""uint8 image streams: normalisation on every forward, per-sample training augmentation."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from clbench.augment import ImageInputs, attach
from clbench.config import TrainerConfig
from clbench.models import build_model
from clbench.protocol import Method
from clbench.streams import Experience, Split, Stream
from clbench.testing import params_equal
from clbench.trainer import Trainer

CIFAR = ImageInputs(mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), crop_padding=4, hflip=True)


def _images(n: int, seed: int = 0, size: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_each_sample_is_torchvisions_padded_crop_and_flip() -> None:
    x = _images(16)
    top, left, flip = CIFAR.draw(16, 8, 8, torch.Generator().manual_seed(3))
    out = CIFAR.augment(x, top, left, flip)
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

"""A-GEM and ER-ACE forward stored uint8 images themselves and augment them: the draws come from a
seed per global batch (the experience's seed with the batch's step numbers), so they do not depend
on unrelated use of the global RNG, and every data-parallel process (same batch numbers, even one
whose shard of a batch was empty) draws the same. DER's stored samples join the trainer's batch and
are augmented there."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from clbench.augment import ImageInputs
from clbench.config import TrainerConfig
from clbench.loops import derive_seed
from clbench.models import build_model
from clbench.streams import Batch, Experience, Split, Stream, StreamInfo
from clbench.testing import params_equal
from clbench.trainer import Trainer
from methods._memory import experience_seed, memory_seed, training_inputs
from methods.agem import AGEM, AGEMConfig
from methods.er_ace import ERACE, ERACEConfig

SEEDS: list[int] = []  # the seeds _Recording.train was given


class _Recording(ImageInputs):
    """The pipeline, recording the seed of every augmentation it draws."""

    def train(self, x: Tensor, seed: int, n_global: int, rows: slice | None = None) -> Tensor:
        SEEDS.append(seed)
        return super().train(x, seed, n_global, rows)


INPUTS = _Recording(mean=(0.5,), std=(0.25,), crop_padding=2, hflip=True)


class _Spy(nn.Module):
    """A linear model on flattened 1x4x4 inputs that records the (float) inputs it is given."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 4)
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        out: Tensor = self.fc(x.float().flatten(1))
        return out


def _exps() -> tuple[Experience, ...]:
    g = torch.Generator().manual_seed(1)
    exps = []
    for i in range(2):
        classes = (2 * i, 2 * i + 1)
        split = Split(torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8, generator=g), torch.tensor(classes).repeat(10))
        exps.append(Experience(i, 0, classes, split, split, split))
    return tuple(exps)


def _info(exps: tuple[Experience, ...]) -> StreamInfo:
    return StreamInfo("images", "class_incremental", len(exps), 4, (1, 4, 4), tuple(e.classes for e in exps),
                      inputs=INPUTS)


def _erace_memory_inputs(noise: bool, skip: tuple[int, int] | None = None) -> dict[tuple[int, int], Tensor]:
    """The augmented memory inputs ER-ACE forwards in 3 optimizer steps of 2 micro-batches each, keyed
    by (step, micro-batch); ``noise``: unrelated global draws before every batch; ``skip``: a batch this
    "process" does not see (an empty shard: no loss call, the step still taken)."""
    exps, model = _exps(), _Spy()
    ace = ERACE(ERACEConfig(mem_size=12, batch_size_mem=4, shuffle_memory=False))  # stored order: same samples
    ace.setup(model, _info(exps))
    torch.manual_seed(5)  # the runner's per-experience seed
    ace.on_experience_start(exps[0], model)
    ace.on_experience_end(exps[0], model)
    torch.manual_seed(6)
    ace.on_experience_start(exps[1], model)
    batch = Batch(INPUTS.normalize(exps[1].train.x[:4]), exps[1].train.y[:4], torch.zeros(4, dtype=torch.long))
    out = {}
    for step in range(3):
        for micro in range(2):
            if noise:
                torch.rand(17 + step)
            if (step, micro) == skip:
                continue
            model.seen.clear()
            ace.loss(model, batch, model.fc(batch.x.flatten(1)), torch.tensor(0.0))
            [out[step, micro]] = model.seen
        ace.on_after_step(model)
    return out


def test_er_ace_memory_draws_ignore_unrelated_random_draws_and_match_across_processes() -> None:
    quiet, noisy = _erace_memory_inputs(noise=False), _erace_memory_inputs(noise=True)
    assert quiet.keys() == noisy.keys() and len(quiet) == 6
    assert all(torch.equal(quiet[k], noisy[k]) for k in quiet)
    # stored order without shuffling: the batches replay the same 4 samples every third batch, yet
    # each batch (step, micro-batch) draws its own augmentation
    assert not torch.equal(quiet[0, 0], quiet[1, 1]) and not torch.equal(quiet[0, 0], quiet[0, 1])
    # batch (step, micro-batch) draws from memory_seed(experience seed, step, micro-batch)
    mem_x = _memory_x(_exps())
    assert torch.equal(quiet[1, 1], training_inputs(INPUTS, mem_x[(3 * 4) % 12 :][:4], memory_seed(6, 1, 1)))
    # a process that sees no sample of batch (1, 1) (its shard empty: only a last batch of an epoch
    # can be smaller than the world, and it ends an optimizer step) seeds the later batches alike
    # (the samples it replays after that may differ: its memory passes lag one minibatch behind)
    seeds: list[list[int]] = []
    for skip in (None, (1, 1)):
        SEEDS.clear()
        _erace_memory_inputs(noise=True, skip=skip)
        seeds.append(list(SEEDS))
    assert len(seeds[0]) == 6 and len(set(seeds[0])) == 6
    assert seeds[1] == [s for i, s in enumerate(seeds[0]) if i != 3]


def _memory_x(exps: tuple[Experience, ...]) -> Tensor:
    """ER-ACE's stored inputs after the second experience's update (the same seeding as above)."""
    ace = ERACE(ERACEConfig(mem_size=12, batch_size_mem=4, shuffle_memory=False))
    torch.manual_seed(5)
    ace.on_experience_start(exps[0], nn.Identity())
    torch.manual_seed(6)
    ace.on_experience_start(exps[1], nn.Identity())
    return ace.memory.tensors()["x"]


def test_er_ace_state_keeps_the_batch_numbers() -> None:
    exps, model = _exps(), _Spy()
    ace = ERACE(ERACEConfig(mem_size=12, batch_size_mem=4))
    ace.setup(model, _info(exps))
    ace.on_experience_start(exps[0], model)
    ace.on_after_step(model)
    ace.on_after_step(model)
    state = ace.state_dict()
    restored = ERACE(ERACEConfig(mem_size=12, batch_size_mem=4))
    restored.load_state_dict(state)
    assert (restored._opt_steps, restored._micro) == (ace._opt_steps, ace._micro) == (2, 0)


def _agem_memory_inputs(noise: bool) -> list[Tensor]:
    """The augmented memory samples of A-GEM's reference gradients in 3 optimizer steps; ``noise``:
    unrelated global draws before each step."""
    exps, model = _exps(), _Spy()
    agem = AGEM(AGEMConfig(patterns_per_experience=8, sample_size=4))
    agem.setup(model, _info(exps))
    torch.manual_seed(5)
    agem.on_experience_start(exps[0], model)
    agem.on_experience_end(exps[0], model)
    torch.manual_seed(6)
    agem.on_experience_start(exps[1], model)
    seeds = (experience_seed(), agem._seed)
    assert seeds[0] == seeds[1] == 6
    out = []
    for _ in range(3):
        if noise:
            torch.rand(23)
        model.seen.clear()
        agem.on_after_backward(model)  # no batch gradient yet: zeros, nothing projected
        [x] = model.seen
        out.append(x)
    return out


def test_agem_memory_draws_ignore_unrelated_random_draws() -> None:
    quiet, noisy = _agem_memory_inputs(noise=False), _agem_memory_inputs(noise=True)
    assert all(torch.equal(a, b) for a, b in zip(quiet, noisy, strict=True))
    # 8 stored samples, 4 per step in stored order: steps 0 and 2 use the same samples, other draws
    assert not torch.equal(quiet[0], quiet[2])
    # step k's draws are those of memory_seed(experience seed, k)
    torch.manual_seed(5)
    stored = torch.randperm(20)[:8]
    x = _exps()[0].train.x[stored]
    assert torch.equal(quiet[2], training_inputs(INPUTS, x[:4], memory_seed(6, 2)))


def _image_stream() -> Stream:
    exps = _exps()
    return Stream("images", "1", "class_incremental", exps, 4, inputs=ImageInputs(INPUTS.mean, INPUTS.std, 2, True))


def _copy(state: Any) -> Any:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("method", ["er_ace", "agem"])
def test_a_resume_within_an_experience_draws_the_memory_augmentation_as_before(method: str) -> None:
    """Trained through the trainer on an augmented uint8 stream, checkpointing every 3 steps: resuming
    the second experience from its step-3 state gives the uninterrupted run's weights exactly."""
    stream = _image_stream()
    cfg = TrainerConfig(epochs=2, batch_size=8, lr=0.05, progress=False, checkpoint_every=3)

    def fresh() -> tuple[nn.Module, Any]:
        torch.manual_seed(0)
        model, _ = build_model("mlp", stream.info(), {"hidden": 8, "layers": 1})
        m = (ERACE(ERACEConfig(mem_size=12, batch_size_mem=4)) if method == "er_ace"
             else AGEM(AGEMConfig(patterns_per_experience=8, sample_size=4)))
        m.setup(model, stream.info())
        return model, m

    def experience(model: nn.Module, m: Any, i: int, resume: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        saved: list[dict[str, Any]] = []
        torch.manual_seed(derive_seed(0, i))
        Trainer(cfg, torch.device("cpu"), inputs=stream.inputs).train_experience(
            model, m, stream.experiences[i], stream.experiences[: i + 1],
            torch.Generator().manual_seed(derive_seed(0, i, 1)), resume, lambda s: saved.append(_copy(s)))
        return saved

    model, m = fresh()
    experience(model, m, 0)
    boundary = _copy({"model": model.state_dict(), "method": m.state_dict()})
    steps = experience(model, m, 1)
    assert len(steps) >= 2
    again, m2 = fresh()
    again.load_state_dict(boundary["model"])
    m2.load_state_dict(boundary["method"])
    experience(again, m2, 1, resume=steps[0])
    assert params_equal(again, model)

"""Research-scale tracks (leaderboards/{cifar100_resnet18,imagenet_r_vit,cifar10c_wrn28}/track.yaml):
declared, pending, never run here (no data, no GPU). Each declaration parses, `clbench tracks` lists
it, its description names the data layout, the GPU and the commands, its recipe values are the
stated ones, and its evaluation (and tuning) scenario and model build on tiny files written in
the real on-disk formats and run end to end through ``clbench.runner.run``: the track's own
settings, shrunk only in data size, model depth/width and epochs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from test_backbones import _native
from test_real_benchmarks import TINY_WRITERS, write_cifar

from clbench.cli import main
from clbench.config import build_run_config
from clbench.health import check_track
from clbench.models import build_model
from clbench.records import RunRecord
from clbench.runner import run
from clbench.streams import StreamInfo
from clbench.tracks import Track, all_tracks, locations_of, parse_track
from scenarios.mnist_c import CORRUPTIONS

NAMES = ("cifar100_resnet18", "imagenet_r_vit", "cifar10c_wrn28")
TRACKS = all_tracks()
ROOT = Path(__file__).resolve().parents[1] / "leaderboards"
# what must stay fixed while shrinking: one epoch, tracking off, no progress bars
SHORT = {"trainer.epochs": 1, "trainer.progress": False, "tracking.mlflow": False, "seed": 0}


def _track(name: str) -> Track:
    path = ROOT / name / "track.yaml"
    return parse_track(yaml.safe_load(path.read_text()), path)


@pytest.mark.parametrize("name", NAMES)
def test_each_declaration_parses_as_pending_and_says_what_it_needs(name: str) -> None:
    t = _track(name)
    assert t == TRACKS[name] and t.status == "pending"
    text = " ".join(t.description.split())
    assert text.startswith("NOT RUN HERE") and "GPU" in text and "not run here" in t.title
    assert f"clbench track check {name}" in text and "CLBENCH_DATA_DIR" in text
    assert (f"make board TRACK={name}" in text) == t.has_protocol  # no protocol, no board
    if t.tune is not None:
        assert t.tune.name != t.evaluate.name  # never tuned on the evaluation data
    if "model.weights" in t.fixed:  # the declared file, and where the commands say to put it
        assert t.fixed["model.weights"].startswith("~/.cache/clbench/weights/")
        assert t.fixed["model.weights"] in text


def test_clbench_tracks_lists_them_as_pending(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tracks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in NAMES:
        line = next(x for x in lines if x.startswith(name + " "))
        assert "pending" in line and "[health: unchecked]" in line


def _settings(t: Track, want: dict[str, Any]) -> bool:
    have = {**t.fixed, **t.reference}
    return {k: have.get(k) for k in want} == want


def test_recipes_are_the_stated_ones() -> None:
    cifar, vit, ctta = (_track(n) for n in NAMES)
    # Mammoth seq-cifar100: 10 x 10, ResNet-18 CIFAR stem, SGD, batch 32, 50 epochs, lr 0.03
    assert (cifar.evaluate.name, cifar.evaluate.options["n_experiences"]) == ("split_cifar100", 10)
    assert _settings(cifar, {"model": "resnet18", "model.cifar_stem": True, "trainer.optimizer": "sgd",
                             "trainer.batch_size": 32, "trainer.epochs": 50, "trainer.lr": 0.03})
    assert cifar.tune is not None and cifar.tune.name == "split_tiny_imagenet"
    assert cifar.tune.options["n_classes"] == 100 and cifar.tune.options["image_size"] == 32
    # LAE's ImageNet-R: 10 x 20, ViT-B/16, Adam, constant lr 0.005 * 24 / 256, batch 24, 50 epochs, no normalisation
    assert vit.evaluate.name == "split_imagenet_r" and vit.evaluate.options["normalize"] == "none"
    assert _settings(vit, {"model": "timm_vit", "model.arch": "vit_base_patch16_224", "trainer.optimizer": "adam",
                           "trainer.batch_size": 24, "trainer.epochs": 50, "trainer.weight_decay": 0.0,
                           "trainer.lr": pytest.approx(0.005 * 24 / 256)})
    assert vit.tune is not None and vit.tune.name == "split_cub200"
    # CoTTA's CIFAR10-C: severity 5, the 15 corruptions in the standard order, batch 200, WRN-28-10
    assert ctta.evaluate.options == {"severity": 5, "n_examples": 10000, "batch_size": 200, "corruptions": CORRUPTIONS,
                                     "clean_source": True}  # the clean test images: source accuracy
    assert ctta.fixed["model"] == "wrn28" and (ctta.fixed["model.depth"], ctta.fixed["model.widen"]) == (28, 10)
    assert ctta.fixed["foundation.pretrain"] is False  # RobustBench's model is the source model
    assert (ctta.health.lower, ctta.health.upper, ctta.rank_by) == ("source_only", "norm_adapt", "mean_error")
    assert ctta.tune is None and ctta.health.thresholds == TRACKS["tta"].health.thresholds
    for t in (cifar, vit):  # health as the other labelled vision tracks
        assert t.health.thresholds == TRACKS["vision_cil"].health.thresholds
        assert (t.health.lower, t.health.upper) == ("naive", "joint")


# ---------------------------------------------------------------------------- end to end, tiny


def _values(t: Track, phase: str, data: dict[str, Any], shrink: dict[str, Any]) -> dict[str, Any]:
    """The run values of ``phase`` (the protocol's: fixed settings + the phase's scenario), the
    reference settings, then only the tiny data's and the shrinking options on top."""
    ref = t.evaluate if phase == "evaluate" else t.tune
    assert ref is not None
    scenario = {**ref.values(), **{f"scenario.{k}": v for k, v in data.items()}}
    return {**t.fixed, **t.reference, **scenario, **shrink, **SHORT}


def _run(values: dict[str, Any], method: str, tmp: Path) -> RunRecord:
    cfg = build_run_config({**values, "method": method, "tracking.runs_dir": str(tmp / "runs")})
    return run(cfg)


def _check_trained(rec: RunRecord, n_exp: int) -> None:
    assert rec.status == "finished" and len(rec.R) == n_exp and all(len(row) == n_exp for row in rec.R)
    assert all(0.0 <= a <= 1.0 for row in rec.R for a in row)
    assert all(e.optimizer_steps > 0 for e in rec.per_experience)
    assert rec.R_val and 0.0 <= rec.metrics["acc"] <= 1.0


@pytest.mark.parametrize("phase", ["evaluate", "tune"])
def test_cifar100_resnet18_builds_and_trains_on_tiny_files(phase: str, tmp_path: Path) -> None:
    t = _track("cifar100_resnet18")
    scenario = t.evaluate.name if phase == "evaluate" else t.tune.name  # type: ignore[union-attr]
    data = TINY_WRITERS[scenario](tmp_path / "data")  # 4 classes in 2 experiences
    rec = _run(_values(t, phase, data, {}), "naive", tmp_path)
    _check_trained(rec, 2)
    cfg = rec.config
    assert cfg["model"] == "resnet18" and cfg["model_options"]["cifar_stem"] is True
    assert (cfg["trainer"]["optimizer"], cfg["trainer"]["batch_size"], cfg["trainer"]["lr"]) == ("sgd", 32, 0.03)


def _write_vit(path: Path, n_classes: int) -> int:
    """A random state dict of the tiny config (ViT-B/16's width, one block, 4-pixel patches) in
    timm's layout, as the track's .safetensors file; returns its parameter count."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("vit_base_patch16_224", img_size=8, patch_size=4, depth=1, num_classes=n_classes)
    path.parent.mkdir(parents=True)
    save_file(net.state_dict(), str(path))
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("phase", ["evaluate", "tune"])
def test_imagenet_r_vit_builds_and_trains_on_tiny_files(phase: str, tmp_path: Path) -> None:
    pytest.importorskip("timm", reason="timm_vit needs timm (pinned in pyproject)")
    t = _track("imagenet_r_vit")
    scenario = t.evaluate.name if phase == "evaluate" else t.tune.name  # type: ignore[union-attr]
    data = TINY_WRITERS[scenario](tmp_path / "data")  # 4 classes in 2 experiences, 8 px
    weights = tmp_path / "weights" / "model.safetensors"
    n_params = _write_vit(weights, 4)
    shrink = {"model.weights": str(weights), "model.depth": 1, "model.patch_size": 4}
    rec = _run(_values(t, phase, data, shrink), "naive", tmp_path)
    _check_trained(rec, 2)
    cfg = rec.config
    assert cfg["model_options"]["arch"] == "vit_base_patch16_224" and cfg["trainer"]["optimizer"] == "adam"
    assert rec.scenario.name == scenario and rec.model.total_params == n_params  # ViT-B's width, one block


def _write_cifar10_c(folder: Path, per: int) -> dict[str, Any]:
    """The CIFAR-10-C release layout: ``<corruption>.npy`` uint8 (5 x per, 32, 32, 3), the five
    severities stacked, and ``labels.npy`` repeated per severity; beside it, as RobustBench lays
    them out, the clean test set as torchvision's ``cifar-10-batches-py/test_batch`` (``per``
    images, a multiple of 10)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(folder / "labels.npy", np.tile(np.arange(per) % 10, 5).astype(np.uint8))
    for name in CORRUPTIONS:
        np.save(folder / f"{name}.npy", rng.integers(0, 256, (5 * per, 32, 32, 3), dtype=np.uint8))
    write_cifar(folder.parent, per_class=per // 10)
    return {"data_dir": str(folder), "n_examples": per, "batch_size": per // 2, "verify_checksums": False}


def _write_wrn(path: Path, options: dict[str, Any]) -> None:
    """A random WideResNet of the tiny config in RobustBench's layout and wrapper (Standard.pt)."""
    torch.manual_seed(0)
    info = StreamInfo("c10", "class_incremental", 1, 10, (3, 32, 32), (tuple(range(10)),))
    model = build_model("wrn28", info, options)[0]
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {"module." + k: v for k, v in _native(model).items()}}, path)


@pytest.mark.parametrize("method", ["source_only", "norm_adapt"])
def test_cifar10c_wrn28_builds_and_adapts_over_the_15_corruptions(method: str, tmp_path: Path) -> None:
    t = _track("cifar10c_wrn28")
    data = _write_cifar10_c(tmp_path / "CIFAR-10-C", per=20)
    tiny = {"model.depth": 10, "model.widen": 1}
    weights = tmp_path / "weights" / "cifar10" / "corruptions" / "Standard.pt"
    _write_wrn(weights, {"depth": 10, "widen": 1})
    rec = _run(_values(t, "evaluate", data, {**tiny, "model.weights": str(weights)}), method, tmp_path)
    assert rec.status == "finished" and rec.test_time is not None
    assert rec.test_time.domains == list(CORRUPTIONS) and rec.test_time.batch_size == 10
    assert len(rec.R) == 1 and len(rec.R[0]) == 15
    assert rec.cost.adapt_batches == 15 * 2 and 0.0 <= rec.metrics["mean_error"] <= 1.0
    assert 0.0 <= rec.metrics["source_acc_before"] <= 1.0  # the clean test images, scored before the stream
    assert rec.foundation is None  # the weights file is the source model: nothing pretrained over it


# ---------------------------------------------------------------------------- location overrides

TINY_WRN = {"model.depth": 10, "model.widen": 1}


def test_cifar10c_wrn28_check_reads_data_and_weights_from_given_locations(tmp_path: Path) -> None:
    """``clbench track check cifar10c_wrn28 scenario.data_dir=... model.weights=...`` on tiny
    files (one seed, the model shrunk by the test's run function): the runs read the given paths
    and record them; health.json keeps the declared settings and digest, lists the locations,
    and its strong-source figure is the clean accuracy."""
    t = _track("cifar10c_wrn28")
    data = _write_cifar10_c(tmp_path / "elsewhere" / "CIFAR-10-C", per=20)
    weights = tmp_path / "w" / "Standard.pt"
    _write_wrn(weights, {"depth": 10, "widen": 1})
    locs = {"scenario.data_dir": data["data_dir"], "model.weights": str(weights)}

    def tiny_run(values: Any) -> RunRecord:
        shrink = {**TINY_WRN, "scenario.verify_checksums": False, "tracking.mlflow": False, "trainer.progress": False}
        return run(build_run_config({**values, **shrink}))

    rec = check_track(t, seeds=[0], write=False, run_fn=tiny_run, locations=locs)
    assert rec["settings"] == t.run_values() and rec["health_digest"] == t.health_digest()
    assert rec["locations"] == locs
    src = {c["name"]: c for c in rec["criteria"]}["strong source"]["value"]
    assert 0.0 <= src <= 1.0 and src == rec["figures"]["lower"]["source_acc_before"]["mean"]
    for r in rec["runs"]:
        cfg = json.loads((Path(r["run_dir"]) / "results.json").read_text())["config"]
        assert cfg["scenario_options"]["data_dir"] == data["data_dir"]  # where this run read from
        assert cfg["model_options"]["weights"] == str(weights)


@pytest.mark.parametrize("name", NAMES)
def test_location_overrides_leave_the_run_keys_alone(name: str) -> None:
    t = _track(name)
    values = {**t.run_values(), "method": t.health.lower, "seed": 0}
    locs = {k: f"/elsewhere/{k}" for k in locations_of(t)}
    assert build_run_config({**values, **locs}).key() == build_run_config(values).key()

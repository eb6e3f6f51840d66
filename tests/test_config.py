"""Typed config: dotted overrides, YAML, and one clear error per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from clbench.config import RunConfig, build_run_config, load_yaml
from clbench.errors import ConfigError
from clbench.options import parse_overrides


def test_overrides_parse_types() -> None:
    cfg = build_run_config(parse_overrides(
        ["method=ewc", "trainer.lr=0.5", "trainer.epochs=3", "seed=7", "method.ewc_lambda=2",
         "trainer.shuffle=false"]))
    assert cfg.method == "ewc" and cfg.seed == 7
    assert cfg.trainer.lr == 0.5 and cfg.trainer.epochs == 3 and cfg.trainer.shuffle is False
    assert cfg.method_options == {"ewc_lambda": 2}


def test_int_accepted_for_float_field() -> None:
    assert build_run_config({"trainer.lr": 1}).trainer.lr == 1.0


def test_exponent_without_dot_is_a_float() -> None:
    # YAML 1.1 parses "1e-4" as a string; the override must still be a number
    assert build_run_config(parse_overrides(["trainer.lr=1e-4"])).trainer.lr == 1e-4


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("trainer.lr", "abc", "trainer.lr='abc'; allowed: a number"),
        ("trainer.optimizer", "rmsprop", "allowed: sgd, adam, adamw"),
        ("trainer.epochs", 0, "trainer.epochs=0; allowed: a finite value > 0"),
        ("trainer.epochs", 1.5, "allowed: an integer"),
        ("trainer.foo", 1, "trainer.foo=1; allowed: batch_size, checkpoint_every, device"),
        ("bogus", 1, "override key='bogus'"),
        ("trainer.shuffle", "maybe", "allowed: true or false"),
    ],
)
def test_bad_values_name_field_value_and_choices(key: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_run_config({key: value})
    assert fragment in str(err.value)


def test_override_without_equals() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["trainer.lr"])


def test_yaml_nested_and_method_name(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("method:\n  name: lwf\n  alpha: 2\ntrainer:\n  lr: 0.2\nseed: 3\n")
    cfg = build_run_config(load_yaml(f))
    assert (cfg.method, cfg.method_options, cfg.trainer.lr, cfg.seed) == ("lwf", {"alpha": 2}, 0.2, 3)


def test_key_ignores_tracking_and_progress() -> None:
    a = build_run_config({"tracking.runs_dir": "x", "trainer.progress": False})
    assert a.key() == RunConfig().key()
    assert build_run_config({"trainer.lr": 0.3}).key() != RunConfig().key()


def test_run_keys_of_recorded_configs_do_not_change() -> None:
    """Run directories are found by key: a new config field must not change the key of configs
    that do not use it (add it to KEY_NEUTRAL_DEFAULTS). Values from runs recorded before."""
    from clbench.config import build_run_config

    assert build_run_config({"method": "naive", "scenario": "split_mnist"}).key() == "351f74b319"
    assert build_run_config({"method": "ewc", "scenario": "text_cl", "scenario.setting": "task_incremental",
                             "trainer.lr": 0.0002, "model": "hf_encoder"}).key() == "ecb7688193"

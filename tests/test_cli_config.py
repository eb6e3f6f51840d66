"""`clbench config` (every option with type, default and doc) and the import-free `clbench list`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any, Literal

import pytest

from clbench import registry
from clbench.cli import main
from clbench.cli_config import option_docs, options_of, sections, type_label
from clbench.registry import METHODS, MODELS, SCENARIOS, declared

REGISTRIES = {"method": METHODS, "scenario": SCENARIOS, "model": MODELS}
PLUGINS = [(kind, name) for kind, reg in REGISTRIES.items() for name in reg.names()]


def test_config_of_a_method_lists_every_option_with_type_default_and_doc(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "method=ewc"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("method=ewc: Elastic Weight Consolidation (EWC).")
    for line in ("method.ewc_lambda: float = 1.0", 'method.mode: separate|online = "separate"',
                 "method.decay_factor: float = 1.0", "method.fisher_batch_size: int = 0",
                 "weight of the penalty", "importance decay of `online` mode"):
        assert line in out


@pytest.mark.parametrize(("args", "message"), [
    (["config", "method=nope"], "invalid method='nope'; allowed: agem, classp, cotta,"),
    (["config", "scenario=nope"], "invalid scenario='nope'; allowed: avalanche,"),
    (["config", "model=auto"], "invalid model='auto'; allowed: cnn,"),
    (["config", "trainers"], "invalid config='trainers'; allowed: method=<name>, scenario=<name>, "
                             "model=<name>, trainer, eval, foundation, tracking"),
])
def test_config_of_an_unknown_name_is_one_clear_error(args: list[str], message: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"clbench: error: {message}") and captured.out == ""


@pytest.mark.parametrize(("kind", "name"), PLUGINS)
def test_every_plugin_prints_and_documents_every_option(kind: str, name: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", f"{kind}={name}"]) == 0
    out = capsys.readouterr().out
    config = REGISTRIES[kind].get(name).Config
    undocumented = []
    for opt in options_of(config):
        assert f"  {kind}.{opt.name}: {opt.type} = {opt.default}" in out
        if not opt.doc:
            undocumented.append(opt.name)
    assert not undocumented, (
        f"{kind} {name}: options without a doc: {undocumented}; document them in the "
        f"`Attributes:` section of {config.__qualname__}'s docstring or in a comment on/above the field")


def test_config_prints_the_run_config_sections(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(sections()) == {"trainer", "eval", "foundation", "tracking"}
    assert main(["config", "trainer"]) == 0
    out = capsys.readouterr().out
    assert "trainer.lr: float = 0.01" in out and 'trainer.optimizer: sgd|adam|adamw = "sgd"' in out
    assert "max global grad norm; 0 disables" in out  # the field's comment
    assert main(["config"]) == 0  # no target: every section
    out = capsys.readouterr().out
    assert all(f"\n  {s}." in out for s in sections())


# ---- where an option's doc comes from -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Base:
    """Options.

    Attributes:
        a: from the docstring,
            continued on a deeper line.
        b, c: shared by two (``code`` and :class:`Thing` lose their markup).
    """

    a: int = 1
    b: float = 0.5
    c: str = "x"
    # above the field,
    # two lines
    d: bool = False  # and on it
    e: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class _Child(_Base):
    e: tuple[str, ...] = ("y",)  # redefined and documented here
    f: int | None = None
    g: Literal["p", "q"] = "p"


def test_docs_come_from_the_attributes_section_and_field_comments_along_the_mro() -> None:
    assert option_docs(_Child) == {
        "a": "from the docstring, continued on a deeper line.",
        "b": "shared by two (`code` and `Thing` lose their markup).",
        "c": "shared by two (`code` and `Thing` lose their markup).",
        "d": "above the field, two lines and on it",
        "e": "redefined and documented here",
    }
    rows = {o.name: o for o in options_of(_Child)}
    assert (rows["e"].type, rows["e"].default) == ("list[str]", '["y"]')
    assert (rows["f"].type, rows["f"].default, rows["f"].doc) == ("int|null", "null", "")
    assert (rows["g"].type, rows["g"].default) == ("p|q", '"p"')
    assert type_label(dict[str, Any]) == "mapping" and type_label(Literal["", "a"]) == '""|a'


# ---- `clbench list` without importing the plug-ins ---------------------------------------------

def test_the_declared_plugins_are_the_registered_ones() -> None:
    """`clbench list` reads names and descriptions from the plug-ins' source; they must be what
    importing the plug-ins registers (a plug-in registered another way would be missing)."""
    for kind, reg in REGISTRIES.items():
        shipped = {n: reg.describe(n) for n in reg.names()
                   if any(reg.get(n).__module__ == p or reg.get(n).__module__.startswith(p + ".")
                          for p in registry._PLUGIN_PACKAGES)}
        assert declared()[kind] == shipped
        assert reg.catalog() == {n: reg.describe(n) for n in reg.names()}


def test_list_does_not_load_the_plugins(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    def refuse() -> None:
        raise AssertionError("`clbench list` imported the plug-in packages")

    monkeypatch.setattr(registry, "load_plugins", refuse)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for names in declared().values():
        assert all(f"  {n} " in out for n in names)


@pytest.mark.integration
def test_list_in_a_fresh_process_imports_no_torch() -> None:
    code = ("import sys; from clbench.cli import main; main(['list']); "
            "heavy = sorted(m for m in ('torch', 'torchvision', 'transformers', 'avalanche', 'numpy') "
            "if m in sys.modules); print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    assert "HEAVY []" in out and "split_mnist" in out

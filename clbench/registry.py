"""Owns the name -> plug-in registries for methods, scenarios and models."""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import importlib.util
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from clbench.errors import ConfigError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Generic[T]):
    """A mapping of lower_snake names to plug-ins; registering a name twice raises.

    ``base`` (``"module:Class"``, imported when the first plug-in registers) is the class every
    plug-in must subclass; ``check`` returns what is wrong with a plug-in (None when nothing).
    """

    def __init__(self, kind: str, base: str | None = None,
                 check: Callable[[Any], str | None] | None = None) -> None:
        self.kind = kind
        self.base = base
        self.check = check
        self._items: dict[str, T] = {}

    def _validate(self, name: str, obj: Any) -> None:
        if self.base is not None:
            module, _, attr = self.base.partition(":")
            base = getattr(importlib.import_module(module), attr)
            if not (isinstance(obj, type) and issubclass(obj, base)):
                raise TypeError(f"{self.kind} {name!r}: {obj!r} must be a subclass of {base.__module__}.{attr}")
        problem = self.check(obj) if self.check is not None else None
        if problem:
            raise TypeError(f"{self.kind} {name!r}: {problem}")

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("<name>")``."""
        if not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be lower_snake_case")

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._validate(name, obj)
            self._items[name] = obj
            with contextlib.suppress(AttributeError, TypeError):
                obj.registry_name = name  # type: ignore[attr-defined]
            return obj

        return deco

    def get(self, name: str) -> T:
        """The plug-in called ``name``; an unknown name raises listing the valid ones."""
        load_plugins()
        if name not in self._items:
            raise ConfigError(self.kind, name, self.names())
        return self._items[name]

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._items)

    def describe(self, name: str) -> str:
        """First line of the plug-in's docstring."""
        return _first_line(getattr(self.get(name), "__doc__", None))

    def catalog(self) -> dict[str, str]:
        """Name -> :meth:`describe` of every plug-in, sorted by name, without importing a plug-in.

        The names and docstrings are read from the source of the plug-in modules (see
        :func:`declared`), so listing them costs milliseconds where importing them (torch and
        its kin) costs seconds; plug-ins registered at run time (a test's temporary ones) are
        added from the registry itself. ``tests/test_cli_config.py`` checks that the two agree.
        """
        static = declared()
        if not static:  # no plug-in source to read (a bytecode-only install): import them
            load_plugins()
        found = dict(static.get(self.kind, {}))
        found.update({name: _first_line(getattr(obj, "__doc__", None)) for name, obj in self._items.items()})
        return dict(sorted(found.items()))

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests that register temporary plug-ins)."""
        self._items.pop(name, None)

    @contextlib.contextmanager
    def override(self, name: str, obj: T) -> Iterator[T]:
        """Within the ``with`` block, ``name`` is ``obj``; afterwards (also on an exception) what was
        there before is back, or nothing if ``name`` was new.

        For tests that swap in a recording or failing plug-in: ``with METHODS.override(name,
        Spy): run(...)``. The plug-ins are loaded first, so a name they register is replaced, not
        shadowed. ``obj`` is stored as is (its ``registry_name`` is not set, so a subclass keeps
        its parent's).
        """
        if not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be lower_snake_case")
        load_plugins()
        saved = {name: self._items[name]} if name in self._items else {}
        self._items[name] = obj
        try:
            yield obj
        finally:
            self._items.pop(name, None)
            self._items.update(saved)


def _first_line(doc: str | None) -> str:
    doc = (doc or "").strip()
    return doc.splitlines()[0] if doc else ""


def _model_problem(cls: Any) -> str | None:
    """A model plug-in declares its ``family`` (a non-empty string) and a ``Config`` dataclass;
    the optional capabilities of :mod:`clbench.models` it declares are of the right kind."""
    import dataclasses

    from clbench.modules import module_roles_problem

    family = getattr(cls, "family", None)
    if not isinstance(family, str) or not family:
        return f"declares no family (a non-empty string class attribute), got {family!r}"
    if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
        return "declares no Config dataclass"
    if not isinstance(getattr(cls, "is_pretrained", False), bool):
        return f"declares is_pretrained = {cls.is_pretrained!r}; it must be True or False"
    for name in ("lm_eval_handle", "embed", "head_parameter_names"):
        if hasattr(cls, name) and not callable(getattr(cls, name)):
            return f"declares {name} but it is not a method"
    if hasattr(cls, "module_roles"):
        return module_roles_problem(cls.module_roles)
    return None


METHODS: Registry[Any] = Registry("method", base="clbench.protocol:Method")
SCENARIOS: Registry[Any] = Registry("scenario", base="clbench.protocol:Scenario")
MODELS: Registry[Any] = Registry("model", base="torch.nn:Module", check=_model_problem)

register_method = METHODS.register
register_scenario = SCENARIOS.register
register_model = MODELS.register

_PLUGIN_PACKAGES = ("clbench.models", "clbench.vit", "clbench.text_models", "clbench.backbones", "methods", "scenarios")
_loaded = False


def load_plugins() -> None:
    """Import the plug-in packages once (their modules register themselves)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for pkg in _PLUGIN_PACKAGES:
        importlib.import_module(pkg)


@functools.cache
def declared() -> dict[str, dict[str, str]]:
    """Kind -> {name: first docstring line} of the plug-ins that the plug-in packages declare with
    a ``@register_<kind>("<name>")`` decorator on a class or function, read with :mod:`ast` from
    their source files (nothing is imported).

    The files read are those :func:`load_plugins` imports: each module of ``_PLUGIN_PACKAGES``
    and, for a package, the submodules its ``__init__`` imports by name.
    """
    out: dict[str, dict[str, str]] = {}
    for path in (p for pkg in _PLUGIN_PACKAGES for p in _plugin_files(pkg)):
        text = path.read_text(encoding="utf-8")
        if "@register_" not in text:
            continue
        for node in ast.walk(ast.parse(text, str(path))):
            if not isinstance(node, ast.ClassDef | ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name)
                        and deco.func.id.startswith("register_") and len(deco.args) == 1
                        and isinstance(deco.args[0], ast.Constant) and isinstance(deco.args[0].value, str)):
                    kind = deco.func.id.removeprefix("register_")
                    out.setdefault(kind, {})[deco.args[0].value] = _first_line(ast.get_docstring(node))
    return out


def _plugin_files(module: str) -> list[Path]:
    """The source file of ``module`` and, for a package, of the submodules its ``__init__``
    imports (``from pkg import a, b`` / ``from . import a`` / ``import pkg.a``), recursively."""
    spec = importlib.util.find_spec(module)  # imports the parent package only (clbench: cheap)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return []
    return _module_files(module, Path(spec.origin), spec.submodule_search_locations)


def _module_files(module: str, origin: Path, locations: list[str] | None) -> list[Path]:
    files = [origin]
    if locations is None:  # a plain module
        return files
    subs: list[str] = []
    for node in ast.walk(ast.parse(origin.read_text(encoding="utf-8"), str(origin))):
        if isinstance(node, ast.ImportFrom) and (node.module == module or (node.level == 1 and not node.module)):
            subs += [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            subs += [a.name[len(module) + 1:].split(".")[0] for a in node.names if a.name.startswith(module + ".")]
    for sub in dict.fromkeys(subs):
        for loc in map(Path, locations):
            if (loc / f"{sub}.py").is_file():
                files.append(loc / f"{sub}.py")
                break
            if (loc / sub / "__init__.py").is_file():
                files += _module_files(f"{module}.{sub}", loc / sub / "__init__.py", [str(loc / sub)])
                break
    return files

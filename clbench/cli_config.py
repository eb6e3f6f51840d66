"""Owns ``clbench config``: every option of a method, scenario or model (``method=<name>``...) or
of a run-config section (``trainer``, ``eval``...) with its type, default and one-line doc.

An option's doc is read from where the code already documents it, first found walking the
option dataclass's MRO: the class docstring's ``Attributes:`` (or ``Args:``) entry, else the
comment on the field's line and the comment lines right above it. A plug-in documents a new
option in either place; ``tests/test_cli_config.py`` fails for an option of a registered plug-in
without a doc.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from clbench.errors import ConfigError

PLUGIN_KINDS = ("method", "scenario", "model")
_SECTION = re.compile(r"^(\s*)(Attributes|Args|Arguments|Parameters|Options):\s*$")
_ENTRY = re.compile(r"^\s*(\w+(?:\s*,\s*\w+)*)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_WIDTH = 100


@dataclasses.dataclass(frozen=True)
class Option:
    """One option as ``clbench config`` prints it."""

    name: str
    type: str
    default: str
    doc: str


def options_of(cls: type) -> list[Option]:
    """The settable fields of option dataclass ``cls``, in declaration order."""
    docs = option_docs(cls)
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = format_value(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = format_value(f.default_factory())
        else:
            default = "(required)"
        out.append(Option(f.name, type_label(hints[f.name]), default, docs.get(f.name, "")))
    return out


def option_docs(cls: type) -> dict[str, str]:
    """Field name -> one-line doc (see the module docstring for where it is read from)."""
    names = [f.name for f in dataclasses.fields(cls)]
    out: dict[str, str] = {}
    for klass in cls.__mro__:
        if klass is object:
            continue
        for source in (_docstring_entries(klass.__dict__.get("__doc__")), _field_comments(klass)):
            for name in names:
                if name not in out and source.get(name):
                    out[name] = source[name]
    return out


def _docstring_entries(doc: str | None) -> dict[str, str]:
    """``name: text`` entries (``a, b: text`` documents both) of a Google-style ``Attributes:``
    or ``Args:`` section; continuation lines are indented deeper than the entry."""
    out: dict[str, str] = {}
    header: int | None = None  # indent of the section header while inside a section
    entry: int | None = None  # indent of the section's entries
    names: list[str] = []
    text: list[str] = []

    def flush() -> None:
        for n in names:
            out[n] = _one_line(" ".join(text))
        names.clear()
        text.clear()

    for line in inspect.cleandoc(doc or "").splitlines():
        if m := _SECTION.match(line):
            flush()
            header, entry = len(m.group(1)), None
            continue
        if header is None or not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= header:
            flush()
            header = None
            continue
        entry = indent if entry is None else entry
        if indent == entry:
            flush()
            if m := _ENTRY.match(line):
                names.extend(n.strip() for n in m.group(1).split(","))
                text.append(m.group(2))
        elif names:
            text.append(line.strip())
    flush()
    return out


def _field_comments(klass: type) -> dict[str, str]:
    """Field name -> the comment lines right above its line plus the comment on it."""
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    trailing: dict[int, str] = {}  # line number -> comment after code on that line
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1][: tok.start[1]].strip():
            trailing[tok.start[0]] = tok.string
    out: dict[str, str] = {}
    klass_node = ast.parse(source).body[0]
    for node in klass_node.body if isinstance(klass_node, ast.ClassDef) else []:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        row = node.lineno - 1
        while row >= 1 and lines[row - 1].lstrip().startswith("#"):
            above.insert(0, lines[row - 1].strip())
            row -= 1
        on = [trailing[r] for r in range(node.lineno, (node.end_lineno or node.lineno) + 1) if r in trailing]
        parts = [c.lstrip("#").strip() for c in above + on]
        if any(parts):
            out[node.target.id] = _one_line(" ".join(parts))
    return out


def _one_line(text: str) -> str:
    """Collapse whitespace; reST roles and double backquotes become single backquotes."""
    text = re.sub(r":[\w:]+:`~?([^`]*)`", r"`\1`", text).replace("``", "`")
    return " ".join(text.split())


def type_label(tp: Any) -> str:
    """A short type label: ``int``, ``float``, ``a|b`` (choices), ``int|null``, ``list[str]``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "any"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "|".join(a if isinstance(a, str) and a else json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return "|".join(type_label(a) for a in args)
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        return f"list[{type_label(args[0]) if args else 'any'}]"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def format_value(value: Any) -> str:
    """``value`` as one would write it in a YAML file or a ``key=value`` override."""
    from clbench.options import to_plain

    try:
        return json.dumps(to_plain(value), ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def render(title: str, prefix: str, cls: type | None) -> str:
    """The block ``clbench config`` prints for one plug-in or section."""
    options = options_of(cls) if cls is not None and dataclasses.is_dataclass(cls) else []
    lines = [title]
    if not options:
        lines.append("  (no options)")
    for opt in options:
        lines.append(f"  {prefix}.{opt.name}: {opt.type} = {opt.default}")
        if opt.doc:
            lines.append(textwrap.fill(opt.doc, _WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


def sections() -> dict[str, type]:
    """The run configuration's sections (``trainer``, ``eval``...): name -> option dataclass."""
    from clbench.config import RunConfig

    out = {}
    for f in dataclasses.fields(RunConfig):
        factory = f.default_factory
        if factory is not dataclasses.MISSING and dataclasses.is_dataclass(made := factory()):
            out[f.name] = type(made)
    return out


def plugin_block(kind: str, name: str) -> str:
    """``render`` of the plug-in ``name`` of registry ``kind``; an unknown name raises
    :class:`ConfigError` listing the valid ones (without importing any plug-in)."""
    from clbench.registry import METHODS, MODELS, SCENARIOS

    reg = {"method": METHODS, "scenario": SCENARIOS, "model": MODELS}[kind]
    known = reg.catalog()
    if name not in known:
        raise ConfigError(kind, name, list(known))
    cls = reg.get(name)
    config = getattr(cls, "Config", None)
    where = f"{config.__module__}.{config.__qualname__}" if config is not None else cls.__module__
    return render(f"{kind}={name}: {known[name]}  [{where}]", kind, config)


def cmd_config(args: argparse.Namespace) -> int:
    known = sections()
    targets = list(args.targets) or list(known)
    allowed = [f"{k}=<name>" for k in PLUGIN_KINDS] + list(known)
    blocks = []
    for target in targets:
        key, eq, value = target.partition("=")
        if eq and key in PLUGIN_KINDS and value:
            blocks.append(plugin_block(key, value))
        elif not eq and target in known:
            cls = known[target]
            blocks.append(render(f"{target}: {_one_line((cls.__doc__ or '').strip().splitlines()[0])}  "
                                 f"[{cls.__module__}.{cls.__qualname__}]", target, cls))
        else:
            raise ConfigError("config", target, allowed)
    print("\n\n".join(blocks))
    if not args.targets:
        print("\nplug-in options: clbench config method=<name> | scenario=<name> | model=<name> "
              "(names: clbench list)")
    return 0


def add_config_verb(sub: Any) -> None:
    c = sub.add_parser("config", help="print every option of a method/scenario/model or section: "
                                      "type, default and doc")
    c.add_argument("targets", nargs="*", metavar="target",
                   help="method=<name>, scenario=<name>, model=<name>, or a section "
                        "(trainer, eval, foundation, tracking); none = every section")
    c.set_defaults(fn=cmd_config)

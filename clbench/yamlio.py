"""Owns reading YAML files: yaml's safe loader, duplicate keys refused, one clear error for a
file that is unreadable, not UTF-8, malformed or tagged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from clbench.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a mapping that repeats a key (YAML keeps the last silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document in ``path`` (safe loader, duplicate keys refused); an unreadable,
    non-UTF-8 or malformed file (tags included) raises one ConfigError naming it."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - safe loader subclass
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ConfigError(what, str(path), f"a readable UTF-8 YAML file ({detail})") from exc

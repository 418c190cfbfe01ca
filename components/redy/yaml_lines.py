"""A YAML loader that remembers the line of every mapping and key, so that launch files and
scenario files can name the line of a bad value."""

from __future__ import annotations

from typing import Any

import yaml


class LinedMap(dict[str, Any]):
    """A YAML mapping with the line it starts on and the line of each key (1-based)."""

    line = 0
    key_lines: dict[str, int]


class LineLoader(yaml.SafeLoader):
    """yaml.SafeLoader whose mappings are LinedMaps with string keys (else a ConstructorError
    that marks the key)."""


def _construct_map(loader: LineLoader, node: yaml.MappingNode) -> LinedMap:
    m = LinedMap()
    m.line = node.start_mark.line + 1
    m.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"keys must be strings, got {key!r}", key_node.start_mark
            )
        m[key] = loader.construct_object(value_node, deep=True)
        m.key_lines[key] = key_node.start_mark.line + 1
    return m


LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)

"""YAML for configuration files: PyYAML's safe loader, refusing a key given twice. Pure.

PyYAML keeps the last of two equal keys in a mapping without a word, so a caller listed
twice in a budget policy (or a window twice in one budget) would silently drop one of
them; for a file that decides who may spend what, that is refused instead.
"""

from __future__ import annotations

import contextlib
from typing import Any

import yaml


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor`: its keys may be overridden, as YAML says
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: SafeLoader refuses it below
            duplicate = False
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {str(key)[:63]!r} is given twice", key_node.start_mark
            )
        with contextlib.suppress(TypeError):
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load(text: str) -> Any:
    """The YAML document in `text`; yaml.YAMLError when it does not parse or a mapping
    gives a key twice."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)

"""Bounds on a config's YAML, so that a hostile file (or `--set` value) fails in one short line, quickly.

A config is read as at most MAX_CONFIG_BYTES + 1 bytes (a huge file or /dev/zero is refused after that
read), must be UTF-8, and is composed by a SafeLoader that counts while it composes, before any Python
object is built: more than MAX_ALIASES aliases, nesting deeper than MAX_DEPTH, or more than MAX_NODES
values once aliases are expanded (a "billion laughs" bomb), or an alias used inside its own anchor, are
refused. Error messages show user values through `shown` (precrop/errors.py: the classes that own a setting
echo values the same way), which cuts them to MAX_SHOWN characters.
`text_problem` and NAME_PATTERN bound the strings a config holds (see docs/security.md).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import Node

from precrop.errors import clip, shown

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: the shipped configs are under 2 KB
MAX_ALIASES = 100
MAX_DEPTH = 50  # a config is 4 levels deep: file, section, list, value
MAX_NODES = 10_000  # keys and values after expanding aliases; a full config has about 150
MAX_TEXT = 4096  # characters of any string value (paths, URIs): PATH_MAX
MAX_NAME = 100
# `name` is an MLflow tag value matched in search filters and part of a directory name
NAME_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}")
_LINE_BREAKING = frozenset({"Cc", "Zl", "Zp"})  # control characters and Unicode line/paragraph separators


class ConfigLimitError(Exception):
    """Config text beyond a bound; its message completes "<source> ..." (search.spec.config adds the source)."""


def read_config_text(path: str | Path) -> str:
    """The UTF-8 text of the file at `path`; ConfigLimitError when it is too large or not UTF-8.

    Reads at most MAX_CONFIG_BYTES + 1 bytes, so /dev/zero or a huge file fails fast. OSError propagates.
    """
    with open(path, "rb") as stream:
        data = stream.read(MAX_CONFIG_BYTES + 1)
    return _decoded(data)


def _decoded(data: bytes) -> str:
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigLimitError(f"is larger than {MAX_CONFIG_BYTES // (1 << 20)} MiB (the limit for a config)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigLimitError(f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def load_yaml(text: str) -> Any:
    """yaml.safe_load of `text` within the bounds above; ConfigLimitError beyond them, yaml.YAMLError as usual."""
    if len(text) > MAX_CONFIG_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise ConfigLimitError(f"is larger than {MAX_CONFIG_BYTES // (1 << 20)} MiB (the limit for a config)")
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except (ValueError, OverflowError) as exc:  # a value the constructor cannot build: 2020-13-45, 5000 digits
        raise ConfigLimitError(f"holds a value YAML cannot read: {clip(str(exc).splitlines()[0])}") from None
    except RecursionError:
        raise ConfigLimitError(f"nests deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def text_problem(value: str, limit: int = MAX_TEXT) -> str | None:
    """Why the string `value` cannot be a config value (too long, a control character), or None."""
    if len(value) > limit:
        return f"must be at most {limit} characters, got {len(value)}"
    bad = next((c for c in value if unicodedata.category(c) in _LINE_BREAKING), None)
    if bad is not None:
        return f"must not contain control characters, got {shown(bad)} in {shown(value)}"
    return None


def first_text_problem(config: Mapping[str, Any], limits: Mapping[str, int]) -> tuple[str, str] | None:
    """(dotted key, why) of the first string in the plain `config` that `text_problem` refuses, or None.

    `limits` gives some keys a length limit other than MAX_TEXT."""
    for key, value in _strings(config, ""):
        problem = text_problem(value, limits.get(key, MAX_TEXT))
        if problem is not None:
            return key, problem
    return None


def _strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _strings(value, f"{path}[{i}]")


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that counts aliases, depth and expanded nodes while composing (before constructing)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0
        self._nodes = 0
        self._sizes: dict[int, int] = {}  # id(node) -> its size with aliases expanded, once composed

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise ConfigLimitError(f"uses more than {MAX_ALIASES} YAML aliases (*name)")
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:  # its anchor is still open: the value would contain itself
                raise ConfigLimitError("uses a YAML alias inside its own anchor (a recursive value)")
            self._count(size)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ConfigLimitError(f"nests deeper than {MAX_DEPTH} levels")
        before = self._nodes
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._count(1)
        self._sizes[id(node)] = self._nodes - before
        return node

    def _count(self, nodes: int) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise ConfigLimitError(f"holds more than {MAX_NODES} values once its YAML aliases are expanded")

"""Config loading: YAML (and `--set key.path=value` overrides) -> the frozen sections of search/spec/config.py.

`parse_config` walks the YAML mapping against the field types, so an unknown key or a value of the wrong
type is an error naming its dotted path; `load_config` then validates the ranges (search/spec/validate.py).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from search.spec.config import ConfigError, ExperimentConfig
from search.spec.limits import ConfigLimitError, clip, load_yaml, read_config_text, shown
from search.spec.validate import validate

# list keys whose empty list means "none" (every other list must name something)
MAY_BE_EMPTY = frozenset({"model.keep"})


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML config, apply `key.path=value` overrides, and validate it (config_limits bounds the YAML)."""
    where = clip(str(path))
    try:
        text = read_config_text(path)
        raw = load_yaml(text)
    except OSError as exc:
        raise ConfigError(f"cannot read config {where}: {exc.strerror}") from exc
    except ConfigLimitError as exc:
        raise ConfigError(f"config {where} {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {clip(str(exc).splitlines()[0], 160)}") from None
    if raw is None and not overrides:  # an empty file (or only comments) would run every default unseen
        raise ConfigError(f"config {where} is empty: it needs at least a name and the sections to change "
                          "(configs/quickstart.yaml is a complete example)")  # fmt: skip
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must hold a mapping of sections, got {type(raw).__name__}")
    for override in overrides:
        apply_override(raw, override)
    config = parse_config(raw)
    validate(config)
    return with_absolute_data_dir(config)


def with_absolute_data_dir(config: ExperimentConfig, base: Path | None = None) -> ExperimentConfig:
    """A relative `data.data_dir` made absolute against the directory the search starts in: trials run in
    their own working directories, and on a cluster the same home-relative path exists on every node."""
    folder = config.data.data_dir
    if folder is None or Path(folder).expanduser().is_absolute():
        return config
    absolute = str((base or Path.cwd()) / folder)
    return dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=absolute))


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set one `a.b.c=value` (value parsed as YAML) in the raw mapping, creating sections as needed."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key.path=value, got {shown(override)}")
    try:
        value = load_yaml(text) if text.strip() else None
    except ConfigLimitError as exc:
        raise ConfigError(f"--set {clip(key)}: the value {exc}") from None
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {clip(key)}: {clip('.'.join(parts[: i + 1]))} is not a section")
        node = child
    node[parts[-1]] = value


def parse_config(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Typed config from a raw mapping; ConfigError names the first unknown key or bad value."""
    return typing.cast(ExperimentConfig, _parse_dataclass(ExperimentConfig, raw, ""))


def _parse_dataclass(cls: type, raw: Any, path: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {shown(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"unknown key {shown(where)} (allowed here: {', '.join(names)})")
    values = {k: _parse_value(hints[k], v, f"{path}.{k}" if path else k) for k, v in raw.items()}
    return cls(**values)


def _parse_value(kind: Any, value: Any, path: str) -> Any:
    """Coerce one YAML value to the field type `kind`, or raise ConfigError naming `path`."""
    if dataclasses.is_dataclass(kind):
        return _parse_dataclass(typing.cast(type, kind), value, path)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse_value(inner, value, path)
    if origin is tuple:
        items = list(value) if isinstance(value, list | tuple) else [value]
        if args[-1] is Ellipsis:
            if not items and path not in MAY_BE_EMPTY:
                raise ConfigError(f"{path} must list at least one value")
            return tuple(_parse_value(args[0], v, f"{path}[{i}]") for i, v in enumerate(items))
        if len(items) == 1:
            items = items * len(args)
        if len(items) != len(args):
            raise ConfigError(f"{path} must be [low, high] or one number, got {shown(value)}")
        return tuple(_parse_value(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, items, strict=True)))
    return _parse_scalar(kind, value, path)


def _parse_scalar(kind: type, value: Any, path: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be true or false, got {shown(value)}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be an integer, got {shown(value)}")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path} must be a number, got {shown(value)}")
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads a bare yes/no (on/off) as a boolean
            return "yes" if value else "no"
        raise ConfigError(f"{path} must be a string, got {shown(value)}")
    raise AssertionError(f"unsupported config type {kind} at {path}")

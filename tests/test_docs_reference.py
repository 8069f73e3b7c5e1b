"""The reference pages cannot drift from the code: docs/cli.md is generated from the parser, and
docs/config.md names every config key with its default."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from search.spec.config import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
UNSET = {"unset", "null"}


def test_the_cli_reference_is_generated_from_the_parser() -> None:
    out = subprocess.run([sys.executable, "scripts/cli_reference.py", "--check"], cwd=ROOT, capture_output=True,
                         text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr


def config_rows() -> dict[str, str]:
    """Section name -> the text of its row in docs/config.md's table."""
    rows = re.findall(r"^\| `(\w+)` \| (.*) \|$", (ROOT / "docs" / "config.md").read_text(), re.M)
    return dict(rows)


def documented_default(row: str, key: str) -> Any:
    """What the row writes in parentheses right after `key`, read as YAML; None when it writes no value."""
    match = re.search(rf"`{key}` \(`?(\[[^\]]*\]|[\w.+-]+)", row)
    if match is None:
        return None
    text = match.group(1)
    if text in UNSET:
        return UNSET
    value = yaml.safe_load(text)
    return [_number(v) for v in value] if isinstance(value, list) else _number(value)


def _number(value: Any) -> Any:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def comparable(default: Any) -> Any:
    return list(default) if isinstance(default, tuple) else default


def _same_kind(written: Any, actual: Any) -> bool:
    """Whether the row's value is a default at all (not prose such as "the name"), so that it can be compared."""
    return type(written) is type(actual) or {type(written), type(actual)} <= {int, float}


def test_every_config_key_is_documented_with_its_default() -> None:
    rows = config_rows()
    config = ExperimentConfig()
    checked = 0
    for section in dataclasses.fields(config):
        assert section.name in rows, f"docs/config.md has no row for `{section.name}`"
        value = getattr(config, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        for field in dataclasses.fields(value):
            row = rows[section.name]
            assert f"`{field.name}`" in row, f"docs/config.md does not name {section.name}.{field.name}"
            written, actual = documented_default(row, field.name), comparable(getattr(value, field.name))
            if written is UNSET:
                assert actual is None, f"{section.name}.{field.name}: documented unset, default is {actual!r}"
            elif written is not None and _same_kind(written, actual):
                assert written == actual, f"{section.name}.{field.name}: documented {written!r}, default {actual!r}"
                checked += 1
    assert checked >= 30  # most defaults are written as values, so most are compared


def test_the_default_reader_catches_a_wrong_default() -> None:
    """documented_default is not vacuous: a row that states another default reads as that value."""
    assert documented_default("`epochs` (12), `lr` ([0.1, 1e-3])", "epochs") == 12
    assert documented_default("`epochs` (12), `lr` ([0.1, 1e-3])", "lr") == [0.1, 0.001]
    assert documented_default("`address` (null: $RAY_ADDRESS)", "address") is UNSET

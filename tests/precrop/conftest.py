"""Shared fixtures: traced layer tables are cached per session (tracing takes about a second)."""

from __future__ import annotations

from functools import cache

from precrop.build import layer_table
from precrop.costmodel import LayerTable


@cache
def cached_table(arch: str) -> LayerTable:
    """The dense layer table of `arch` at its default classes and input size."""
    return layer_table(arch)

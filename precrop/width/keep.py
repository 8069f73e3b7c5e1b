"""Layers kept out of width allocation: every channel group a kept layer touches stays at its base width.

A user names layers by module name or glob pattern (`conv1`, `layer4.*`, `*.se.*`); a conv or linear
layer touches the groups it reads and the group it writes, and a norm the groups it normalizes, so keeping
a layer keeps its weight shape. The kept groups are marked `fixed` in a copy of the layer table, which is
what every width method already honours for groups the tracer cannot resize; their cost still counts
against the budget, so the other groups share what is left. Imports no torch.

torch-pruning's `ignored_layers` does the same for its pruners, but takes module objects, not names a
config file can hold, and does not reach a cost model solved before the model exists.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import replace

from precrop.errors import FieldError, shown
from precrop.width.costmodel import LayerTable


class KeepError(FieldError):
    """A keep pattern that names no layer of the model."""


def kept_groups(table: LayerTable, patterns: Iterable[str]) -> set[str]:
    """The groups touched by the layers and norms whose module name matches any of `patterns`."""
    kept: set[str] = set()
    for pattern in patterns:
        matched = False
        for layer in table.layers:
            if fnmatch.fnmatchcase(layer.name, pattern):
                kept.update((*layer.in_groups, layer.out_group))
                matched = True
        for norm in table.norms:
            if fnmatch.fnmatchcase(norm.name, pattern):
                kept.update(norm.groups)
                matched = True
        if not matched:
            examples = ", ".join(layer.name for layer in table.layers[:3])
            raise KeepError(f"keep pattern {shown(pattern)} matches no layer of {table.arch} (layers are named "
                            f"like {examples}; `precrop info` lists them all)", field="keep")  # fmt: skip
    return kept


def with_kept(table: LayerTable, patterns: Iterable[str]) -> LayerTable:
    """`table` with every group the `patterns` keep marked fixed (the same table when nothing is kept)."""
    kept = kept_groups(table, patterns)
    if not kept or all(table.group(g).fixed for g in kept):
        return table
    groups = tuple(replace(g, fixed=True) if g.name in kept else g for g in table.groups)
    return replace(table, groups=groups)

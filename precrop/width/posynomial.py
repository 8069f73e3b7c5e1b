"""A LayerTable's cost as a posynomial in per-group keep ratios r_g = w_g / C_g.

Every term of the exact cost is a coefficient times a product of at most two ratios (a layer's
input and output group), so with y = log r a budget is a sum of exponentials of affine functions of
y: convex. Groups that do not move contribute ratio 1 and fold into the constant. At integer widths
the posynomial reproduces LayerTable.cost exactly (the table is the source of truth; tests check it).

Imports numpy only, never torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from precrop.width.costmodel import Layer, LayerTable

Metric = str  # "params" or "macs"
METRICS: tuple[Metric, ...] = ("params", "macs")


@dataclass(frozen=True)
class Posynomial:
    """cost(y) = constant + sum_t coef[t] * exp(A[t] @ y), y = log keep ratio of each movable group."""

    groups: tuple[str, ...]
    constant: float
    coef: NDArray[np.float64]
    exponents: NDArray[np.float64]  # terms x groups, entries 0/1 (2 for a group read and written)

    def value(self, y: NDArray[np.float64]) -> float:
        """Cost at log-ratios `y`."""
        return float(self.constant + self.coef @ np.exp(self.exponents @ y))

    def values(self, ys: NDArray[np.float64]) -> NDArray[np.float64]:
        """Costs at each row of `ys` (candidates x groups)."""
        return np.asarray(self.constant + np.exp(ys @ self.exponents.T) @ self.coef, dtype=np.float64)


def _layer_terms(layer: Layer, base: dict[str, int], metric: Metric) -> Iterable[tuple[float, tuple[str, ...]]]:
    """(coefficient, groups) terms of one layer's cost at ratio 1 = base widths."""
    if layer.kind == "channel_pad":
        return
    scale = layer.positions if metric == "macs" else 1
    out = layer.out_group
    if layer.depthwise:
        yield float(base[out] * layer.kernel_area * scale), (out,)
    else:
        per_in = base[out] * layer.in_per_channel * layer.kernel_area * scale / layer.conv_groups
        for g in layer.in_groups:
            yield float(per_in * base[g]), (out, g)
    if metric == "params" and layer.bias:
        yield float(base[out]), (out,)


def posynomial(table: LayerTable, metric: Metric, movable: Iterable[str]) -> Posynomial:
    """The exact `metric` cost of `table` as a posynomial in the ratios of the `movable` groups."""
    groups = tuple(movable)
    index = {g: i for i, g in enumerate(groups)}
    base = table.base_widths
    constant = float(table.fixed_params) if metric == "params" else 0.0
    terms: dict[tuple[int, ...], float] = {}
    raw: list[tuple[float, tuple[str, ...]]] = []
    for layer in table.layers:
        raw.extend(_layer_terms(layer, base, metric))
    if metric == "params":
        raw.extend((float(n.per_channel * base[g]), (g,)) for n in table.norms for g in n.groups)
    for coef, members in raw:
        key = tuple(sorted(index[g] for g in members if g in index))
        if not key:
            constant += coef
        else:
            terms[key] = terms.get(key, 0.0) + coef
    exponents = np.zeros((len(terms), len(groups)))
    for row, key in enumerate(terms):
        for i in key:
            exponents[row, i] += 1.0
    return Posynomial(groups, constant, np.array(list(terms.values()), dtype=np.float64), exponents)

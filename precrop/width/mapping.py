"""From layer densities to per-group log keep ratios: three variants, as the paper's rule is not public.

A layer's density is r_in * r_out (a depthwise conv's is r_g), so in y = log r it is affine. Each
variant is a convex program in y with the exact posynomial budgets (see posynomial.py):

- fit:      minimize sum_l (y_in(l) + y_out(l) - log d_l)^2
- gp:       maximize sum_l (y_in(l) + y_out(l))  (a geometric program; favours widely shared groups)
- internal: `fit`, but only groups written by a single layer move; residual streams keep base width

The paper's own channel rule is not public; these are our reconstruction. A concatenated input's
log ratio is approximated in the objective by the channel-weighted mean of its parts' log ratios;
the budgets stay exact. The rows are the layers the objective (objective.py: `layer` or `path`) sums over;
every layer's cost stays in the budgets. Imports numpy, and cvxpy when a program is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from precrop.width.costmodel import Layer, LayerTable
from precrop.width.objective import scored_layers
from precrop.width.posynomial import METRICS, Posynomial, posynomial

VARIANTS = ("fit", "gp", "internal")


def movable_groups(table: LayerTable, variant: str) -> tuple[str, ...]:
    """Groups whose width the variant may change."""
    prunable = [g.name for g in table.prunable_groups]
    if variant != "internal":
        return tuple(prunable)
    writers: dict[str, int] = {}
    for layer in table.layers:
        if layer.kind != "channel_pad" and not layer.depthwise:
            writers[layer.out_group] = writers.get(layer.out_group, 0) + 1
    return tuple(g for g in prunable if writers.get(g, 0) == 1)


def density_rows(
    table: LayerTable, groups: Sequence[str], objective: str = "layer"
) -> tuple[list[Layer], NDArray[np.float64]]:
    """Layers `objective` scores that touch a movable group, and the matrix M with M @ y = log density of each."""
    index = {g: i for i, g in enumerate(groups)}
    base = table.base_widths
    layers, rows = [], []
    for layer in scored_layers(table, objective):
        row = np.zeros(len(groups))
        if layer.out_group in index:
            row[index[layer.out_group]] += 1.0
        if not layer.depthwise:
            total_in = sum(base[g] for g in layer.in_groups)
            for g in layer.in_groups:
                if g in index:
                    row[index[g]] += base[g] / total_in
        if row.any():
            layers.append(layer)
            rows.append(row)
    return layers, np.array(rows).reshape(len(rows), len(groups))


@dataclass(frozen=True)
class MappingResult:
    """Log keep ratios per movable group and the solver's status."""

    y: NDArray[np.float64]
    status: str


class ChannelMapper:
    """One variant's program for one table and set of budgets, compiled once (cvxpy Parameters)."""

    def __init__(
        self,
        table: LayerTable,
        variant: str,
        metrics: Sequence[str],
        lower: NDArray[np.float64],
        upper: NDArray[np.float64],
        objective: str = "layer",
    ) -> None:
        import cvxpy as cp  # here, not at the top: training from a saved plan needs no solver

        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        self.groups = movable_groups(table, variant)
        self.layers, self.rows = density_rows(table, self.groups, objective)
        self.posynomials: dict[str, Posynomial] = {m: posynomial(table, m, self.groups) for m in METRICS}
        self.costs = {m: self.posynomials[m] for m in metrics}
        self._scales = {m: cost.value(np.zeros(len(self.groups))) for m, cost in self.costs.items()}
        self._y = cp.Variable(len(self.groups))
        self._log_d = cp.Parameter(len(self.layers))
        self._budgets = {m: cp.Parameter(nonneg=True) for m in metrics}
        constraints = [self._y >= lower, self._y <= upper]
        for metric, cost in self.costs.items():
            constraints.append(
                (cost.coef / self._scales[metric]) @ cp.exp(cost.exponents @ self._y) <= self._budgets[metric]
            )
        if variant == "gp":
            goal = cp.Maximize(cp.sum(self.rows @ self._y))
        else:
            goal = cp.Minimize(cp.sum_squares(self.rows @ self._y - self._log_d))
        self._program = cp.Problem(goal, constraints)
        self.variant = variant

    def solve(self, log_densities: NDArray[np.float64], budgets: dict[str, float]) -> MappingResult:
        """Log keep ratios meeting `budgets` (absolute costs) closest to the densities."""
        import cvxpy as cp

        self._log_d.value = log_densities
        for metric, cost in self.costs.items():
            self._budgets[metric].value = max(budgets[metric] - cost.constant, 0.0) / self._scales[metric]
        self._program.solve(solver=cp.CLARABEL)
        status = str(self._program.status)
        if self._y.value is None or status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            raise ValueError(f"channel mapping program status: {status}")
        return MappingResult(np.asarray(self._y.value, dtype=np.float64), status)

"""Round continuous widths to a divisor, then repair greedily so the exact cost meets the budget.

Repair first steps widths down until every budget holds on the exact cost model (never silently
above it), then steps widths up while every budget still holds, so the result lands as close to the
budget as the divisor allows. Each step picks the group whose change costs the least distance from
the continuous solution per unit of budget it frees (or uses). Candidate steps are scored in one
vectorized posynomial evaluation; every accepted step is checked on the exact integer cost.
Pure Python + numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from precrop.costmodel import LayerTable
from precrop.posynomial import Posynomial


@dataclass(frozen=True)
class WidthBounds:
    """Allowed widths of one group: multiples of `step` in [low, high] (step 0: fixed at low)."""

    low: int
    high: int
    step: int


def width_bounds(base: int, divisor: int, min_width: int, expand: float) -> WidthBounds:
    """Multiples of `divisor` between max(min_width, divisor) and expand*base; base if none exist."""
    low = max(divisor, math.ceil(min_width / divisor) * divisor)
    high = math.floor(expand * base / divisor + 1e-9) * divisor
    if low > high:
        return WidthBounds(base, base, 0)
    return WidthBounds(low, high, divisor)


def round_widths(targets: Mapping[str, float], bounds: Mapping[str, WidthBounds]) -> dict[str, int]:
    """Nearest allowed width to each continuous target."""
    out = {}
    for g, t in targets.items():
        b = bounds[g]
        if b.step == 0:
            out[g] = b.low
            continue
        out[g] = int(min(max(round(t / b.step) * b.step, b.low), b.high))
    return out


def _over(table: LayerTable, widths: Mapping[str, int], budgets: Mapping[str, float]) -> bool:
    cost = table.cost(widths)
    return any(getattr(cost, m) > budgets[m] for m in budgets)


@dataclass
class _Repair:
    """State of one repair: current widths as a vector over the posynomials' groups."""

    table: LayerTable
    costs: Mapping[str, Posynomial]
    budgets: Mapping[str, float]
    groups: tuple[str, ...]
    base: NDArray[np.float64]
    widths: NDArray[np.float64]
    log_targets: NDArray[np.float64]
    weight: NDArray[np.float64]
    low: NDArray[np.float64]
    high: NDArray[np.float64]
    step: NDArray[np.float64]

    def as_dict(self) -> dict[str, int]:
        return {g: int(w) for g, w in zip(self.groups, self.widths, strict=True)}

    def best_step(self, down: bool, excluded: set[int]) -> int | None:
        """Index of the group whose one-step change scores best (None if no valid step)."""
        sign = -1.0 if down else 1.0
        new = self.widths + sign * self.step
        valid = (self.step > 0) & (new >= self.low) & (new <= self.high)
        valid[list(excluded)] = False
        candidates = np.flatnonzero(valid)
        if candidates.size == 0:
            return None
        y_now = np.log(self.widths / self.base)
        ys = np.tile(y_now, (candidates.size, 1))
        ys[np.arange(candidates.size), candidates] = np.log(new[candidates] / self.base[candidates])
        used = np.zeros(candidates.size)
        fits = np.ones(candidates.size, dtype=bool)
        for metric, posy in self.costs.items():
            after = posy.values(ys)
            used += np.abs(after - posy.value(y_now)) / self.budgets[metric]
            fits &= after <= self.budgets[metric]
        old_d = (np.log(self.widths[candidates]) - self.log_targets[candidates]) ** 2
        new_d = (np.log(new[candidates]) - self.log_targets[candidates]) ** 2
        score = self.weight[candidates] * (new_d - old_d) / np.maximum(used, 1e-300)
        ok = used > 0 if down else (used > 0) & fits
        if not ok.any():
            return None
        score[~ok] = np.inf
        return int(candidates[int(np.argmin(score))])


def repair(
    table: LayerTable,
    widths: Mapping[str, int],
    targets: Mapping[str, float],
    bounds: Mapping[str, WidthBounds],
    budgets: Mapping[str, float],
    costs: Mapping[str, Posynomial],
) -> dict[str, int]:
    """Step widths down until the exact cost meets `budgets`, then up while it still does.

    `costs` are the budgeted metrics as posynomials over exactly the groups of `targets`.
    """
    groups = tuple(targets)
    state = _Repair(
        table=table,
        costs=costs,
        budgets=budgets,
        groups=groups,
        base=np.array([table.group(g).width for g in groups], dtype=np.float64),
        widths=np.array([widths[g] for g in groups], dtype=np.float64),
        log_targets=np.log(np.maximum([targets[g] for g in groups], 1e-9)),
        weight=np.array([max(table.layers_touching(g), 1) for g in groups], dtype=np.float64),
        low=np.array([bounds[g].low for g in groups], dtype=np.float64),
        high=np.array([bounds[g].high for g in groups], dtype=np.float64),
        step=np.array([bounds[g].step for g in groups], dtype=np.float64),
    )
    for posy in costs.values():
        if posy.groups != groups:
            raise ValueError("cost posynomials must be over the target groups")
    while _over(table, state.as_dict(), budgets):
        i = state.best_step(down=True, excluded=set())
        if i is None:
            raise ValueError("budget cannot be met at the minimum widths")
        state.widths[i] -= state.step[i]
    excluded: set[int] = set()
    while (i := state.best_step(down=False, excluded=excluded)) is not None:
        state.widths[i] += state.step[i]
        if _over(table, state.as_dict(), budgets):  # float scoring said it fits; the exact cost decides
            state.widths[i] -= state.step[i]
            excluded.add(i)
    return state.as_dict()

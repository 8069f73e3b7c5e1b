"""Round continuous widths to a divisor, then repair greedily so the exact cost meets the budget.

Repair first steps widths down until every budget holds (never silently above it), then steps
widths up while every budget still holds, so the result lands as close to the budget as the
divisor allows. Each step picks the group whose change costs the least distance from the
continuous solution per unit of budget it frees (or uses). Pure Python + numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from precrop.costmodel import LayerTable


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


def _distance(widths: Mapping[str, int], log_targets: Mapping[str, float], weight: Mapping[str, int]) -> float:
    return sum(weight[g] * (math.log(widths[g]) - log_targets[g]) ** 2 for g in log_targets)


def repair(
    table: LayerTable,
    widths: dict[str, int],
    targets: Mapping[str, float],
    bounds: Mapping[str, WidthBounds],
    budgets: Mapping[str, float],
) -> dict[str, int]:
    """Step widths down until the exact cost meets `budgets`, then up while it still does."""
    log_targets = {g: math.log(max(t, 1e-9)) for g, t in targets.items()}
    weight = {g: max(table.layers_touching(g), 1) for g in targets}
    movable = [g for g in targets if bounds[g].step > 0]
    widths = dict(widths)
    while _over(table, widths, budgets):
        step = _best_step(table, widths, movable, bounds, budgets, log_targets, weight, down=True)
        if step is None:
            raise ValueError("budget cannot be met at the minimum widths")
        widths[step] -= bounds[step].step
    while True:
        step = _best_step(table, widths, movable, bounds, budgets, log_targets, weight, down=False)
        if step is None:
            return widths
        widths[step] += bounds[step].step


def _best_step(
    table: LayerTable,
    widths: dict[str, int],
    movable: list[str],
    bounds: Mapping[str, WidthBounds],
    budgets: Mapping[str, float],
    log_targets: Mapping[str, float],
    weight: Mapping[str, int],
    down: bool,
) -> str | None:
    """The group whose one-step change has the best distance-per-budget ratio (None if no valid step)."""
    now = table.cost(widths)
    now_distance = _distance(widths, log_targets, weight)
    best: tuple[float, str] | None = None
    for g in movable:
        b = bounds[g]
        new = widths[g] - b.step if down else widths[g] + b.step
        if new < b.low or new > b.high:
            continue
        trial = {**widths, g: new}
        cost = table.cost(trial)
        used = sum(abs(getattr(cost, m) - getattr(now, m)) / budgets[m] for m in budgets)
        if used <= 0:
            continue
        if not down and any(getattr(cost, m) > budgets[m] for m in budgets):
            continue
        score = (_distance(trial, log_targets, weight) - now_distance) / used
        if best is None or score < best[0]:
            best = (score, g)
    return None if best is None else best[1]


def as_array(values: Mapping[str, float], order: tuple[str, ...]) -> NDArray[np.float64]:
    """Values in group order."""
    return np.array([values[g] for g in order], dtype=np.float64)

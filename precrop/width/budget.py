"""Budget checks every allocator shares: does a cost meet the budgets, and the largest value that does.

`over_budget` and `fits` compare exact integer costs (the layer table's counts) with budgets; `fits` can
settle clear cases from a float estimate first, as the repair loop does thousands of times. The bisection
`largest_fitting` finds the boundary of any monotone "fits" test over a real interval; `largest_fitting_count`
is its exact answer over integers. Pure Python; imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from precrop.width.costmodel import Cost, LayerTable

# Relative margin inside which a float cost estimate is too close to a budget to decide on its own.
ESTIMATE_MARGIN = 1e-9


def over_budget(cost: Cost, budgets: Mapping[str, float], slack: float = 0.0) -> tuple[str, ...]:
    """The budgeted metrics ("params", "macs") whose cost exceeds budget x (1 + slack), in `budgets` order."""
    return tuple(metric for metric, budget in budgets.items() if getattr(cost, metric) > budget * (1 + slack))


def fits(
    table: LayerTable,
    widths: Mapping[str, int],
    budgets: Mapping[str, float],
    estimate: Mapping[str, float] | None = None,
) -> bool:
    """Whether the exact cost of `table` at `widths` meets every budget.

    A float `estimate` of the budgeted costs decides alone when it is clearly over some budget or clearly
    under all of them (relative margin ESTIMATE_MARGIN); otherwise, or without one, the exact cost decides.
    """
    if estimate is not None:
        if any(estimate[m] > b * (1 + ESTIMATE_MARGIN) for m, b in budgets.items()):
            return False
        if all(estimate[m] < b * (1 - ESTIMATE_MARGIN) for m, b in budgets.items()):
            return True
    return not over_budget(table.cost(widths), budgets)


def largest_fitting(fits_at: Callable[[float], bool], low: float, high: float, steps: int) -> float:
    """Bisect [low, high] `steps` times for where a monotone `fits_at` stops holding; return the fitting end.

    `fits_at(low)` is assumed and `high` is taken not to fit (neither is asked); the result fits and lies
    within (high - low) / 2**steps of the boundary.
    """
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if fits_at(middle) else (low, middle)
    return low


def largest_fitting_count(fits_at: Callable[[int], bool], low: int, high: int) -> int:
    """The largest integer in [low, high] where a monotone `fits_at` holds (`fits_at(low)` is assumed), by bisection."""
    if fits_at(high):
        return high
    steps = math.ceil(math.log2(high - low)) if high - low > 1 else 0  # halving to width <= 1 pins the integer
    return math.floor(largest_fitting(lambda x: fits_at(math.floor(x)), low, high, steps))

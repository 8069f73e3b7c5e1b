"""Round continuous widths to allowed ones, then repair greedily so the exact cost meets the budget.

Allowed widths of a group are the multiples of the divisor between the minimum width and expand x
base, plus the base width itself (a group may always stay as it is, even when its base width is not a
multiple of the divisor); a group narrower than the minimum keeps its base width.

Repair works on a *value* of the whole assignment, higher is better: for SynExp it is the SynExp
objective sum_l log d_l itself (precrop/width/objective.py), for uniform scaling the closeness to the
uniform targets. It steps widths down until every budget holds on the exact cost model (never
silently above it), picking the step that loses the least value per unit of over-budget cost it frees;
then steps widths up while every budget still holds, picking the most value per unit of cost used;
then (SynExp) trades one step down for one step up wherever that raises the value within budget. So
the result lands as close to the budget as the divisor allows. Candidates are scored in vectorized
posynomial evaluations; every accepted step is checked on the exact integer cost. Pure Python + numpy.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from precrop.width.budget import fits
from precrop.width.costmodel import LayerTable
from precrop.width.posynomial import Posynomial

Matrix = NDArray[np.float64]
Value = Callable[[Matrix], Matrix]  # ratios (candidates x groups) -> value of each candidate
Changes = NDArray[np.int64]  # changes x moves x (group, step)
MAX_SWAPS = 500


@dataclass(frozen=True)
class WidthBounds:
    """Allowed widths of one group, ascending (one entry: the group keeps that width)."""

    choices: tuple[int, ...]

    @property
    def low(self) -> int:
        """The narrowest allowed width."""
        return self.choices[0]

    @property
    def high(self) -> int:
        """The widest allowed width."""
        return self.choices[-1]

    def below(self, target: float) -> int:
        """The widest allowed width at most `target` (the narrowest if none is)."""
        return self.choices[max(bisect.bisect_right(self.choices, target) - 1, 0)]

    def above(self, target: float) -> int:
        """The narrowest allowed width at least `target` (the widest if none is)."""
        return self.choices[min(bisect.bisect_left(self.choices, target), len(self.choices) - 1)]

    def nearest(self, target: float) -> int:
        """The allowed width closest to `target` (the narrower one on a tie)."""
        at = bisect.bisect_left(self.choices, target)
        near = self.choices[max(at - 1, 0) : at + 1]
        return min(near, key=lambda w: (abs(w - target), w))


def width_bounds(base: int, divisor: int, min_width: int, expand: float) -> WidthBounds:
    """Multiples of `divisor` from max(min_width, divisor) to expand x base, and `base` itself.

    A group narrower than that floor keeps its base width: it cannot shrink, and growing it to the
    divisor would be an arbitrary jump the budget never asked for.
    """
    floor = max(divisor, math.ceil(min_width / divisor) * divisor)
    if base < floor:
        return WidthBounds((base,))
    top = math.floor(expand * base + 1e-9)
    return WidthBounds(tuple(sorted({*range(floor, top + 1, divisor), base})))


def round_widths(targets: Mapping[str, float], bounds: Mapping[str, WidthBounds]) -> dict[str, int]:
    """Nearest allowed width to each continuous target."""
    return {g: bounds[g].nearest(t) for g, t in targets.items()}


def closeness_to(targets: Mapping[str, float], base: Mapping[str, int], weight: Mapping[str, float]) -> Value:
    """Value of being near `targets`: -sum_g weight_g (log r_g - log target ratio_g)^2 (uniform's repair)."""
    groups = list(targets)
    log_t = np.log(np.maximum([targets[g] / base[g] for g in groups], 1e-12))
    w = np.array([weight[g] for g in groups], dtype=np.float64)
    return lambda ratios: np.asarray(-((np.log(ratios) - log_t) ** 2) @ w, dtype=np.float64)


@dataclass
class _Repair:
    """One repair: the choice index of every group, and how to score and cost candidate assignments."""

    table: LayerTable
    groups: tuple[str, ...]
    costs: Mapping[str, Posynomial]
    budgets: Mapping[str, float]
    value: Value
    base: Matrix
    choices: list[Matrix]
    index: list[int]

    def widths(self) -> dict[str, int]:
        return {g: int(self.choices[i][k]) for i, (g, k) in enumerate(zip(self.groups, self.index, strict=True))}

    def ratios(self) -> Matrix:
        return np.array([c[k] for c, k in zip(self.choices, self.index, strict=True)]) / self.base

    def costs_now(self) -> dict[str, float]:
        """The budgeted costs at the current widths (posynomial values: exact up to float rounding)."""
        y = np.log(self.ratios())
        return {m: posy.value(y) for m, posy in self.costs.items()}

    def over(self) -> bool:
        """Whether some budget is exceeded; the exact integer cost decides whenever floats are close."""
        return not fits(self.table, self.widths(), self.budgets, estimate=self.costs_now())

    def moves(self, sign: int) -> NDArray[np.int64]:
        """Groups that can take one step in direction `sign` (+1 wider, -1 narrower)."""
        return np.array([i for i, k in enumerate(self.index) if 0 <= k + sign < len(self.choices[i])], dtype=np.int64)

    def stepped(self, sign: int) -> Matrix:
        """Every group's ratio after one step in direction `sign` (its current ratio where it cannot step)."""
        return (
            np.array([c[min(max(k + sign, 0), len(c) - 1)] for c, k in zip(self.choices, self.index, strict=True)])
            / self.base
        )

    def candidates(self, changes: Changes) -> Matrix:
        """Ratio rows, one per change: changes[n, k] = (group, step) for the k-th move of change n."""
        rows = np.tile(self.ratios(), (len(changes), 1))
        after = {sign: self.stepped(sign) for sign in (-1, 1)}
        ids = np.arange(len(changes))
        for k in range(changes.shape[1]):
            groups, steps = changes[:, k, 0], changes[:, k, 1]
            rows[ids, groups] = np.where(steps > 0, after[1][groups], after[-1][groups])
        return rows

    def spend(self, rows: Matrix) -> tuple[Matrix, Matrix, NDArray[np.bool_]]:
        """Per candidate: value gain, budget-normalized cost added (all metrics) and whether it fits."""
        now = self.ratios()[None, :]
        gain = self.value(rows) - self.value(now)[0]
        added, fits = np.zeros(len(rows)), np.ones(len(rows), dtype=bool)
        for metric, posy in self.costs.items():
            after = posy.values(np.log(rows))
            added += (after - posy.value(np.log(now[0]))) / self.budgets[metric]
            fits &= after <= self.budgets[metric]
        return gain, added, fits

    def freed(self, rows: Matrix) -> Matrix:
        """Per candidate: budget-normalized cost freed on the metrics that are over budget."""
        now = self.costs_now()
        total = np.zeros(len(rows))
        for metric, posy in self.costs.items():
            if now[metric] > self.budgets[metric] * (1 - 1e-9):
                total += (now[metric] - posy.values(np.log(rows))) / self.budgets[metric]
        return total

    def apply(self, change: NDArray[np.int64], sign: int = 1) -> None:
        """Take the moves of one change (sign -1: undo them)."""
        for group, step in change.tolist():
            self.index[group] += sign * step


def single_steps(groups: NDArray[np.int64], sign: int) -> Changes:
    """One change per group: a single step in direction `sign`."""
    return np.stack([groups, np.full_like(groups, sign)], axis=1).reshape(-1, 1, 2)


def _step_down(state: _Repair) -> None:
    """Lower widths until the exact cost meets every budget, least value lost per over-budget cost freed."""
    while state.over():
        changes = single_steps(state.moves(-1), -1)
        rows = state.candidates(changes)
        freed = state.freed(rows)
        if not (freed > 0).any():
            raise ValueError("budget cannot be met at the minimum widths")
        gain, _, _ = state.spend(rows)
        score = np.where(freed > 0, -gain / np.maximum(freed, 1e-300), np.inf)
        state.apply(changes[int(np.argmin(score))])


def _best_fitting(state: _Repair, changes: Changes, excluded: NDArray[np.bool_], filling: bool) -> int | None:
    """Index of the fitting change with the best value gain per cost added (`filling`: any fitting step
    counts, however little it gains) or with the best positive gain (trading); None if there is none."""
    if not len(changes):
        return None
    gain, added, fits = state.spend(state.candidates(changes))
    ok = (fits if filling else fits & (gain > 1e-12)) & ~excluded
    if not ok.any():
        return None
    score = np.where(added > 0, gain / np.maximum(added, 1e-300), np.inf) if filling else gain
    return int(np.argmax(np.where(ok, score, -np.inf)))


def _fill(state: _Repair) -> None:
    """Raise widths while every budget holds, the most value per unit of budget used first."""
    refused: set[int] = set()
    while True:
        groups = state.moves(1)
        best = _best_fitting(state, single_steps(groups, 1), np.isin(groups, list(refused)), True)
        if best is None:
            return
        state.index[groups[best]] += 1
        if state.over():  # the float scoring said it fits; the exact cost decides
            state.index[groups[best]] -= 1
            refused.add(int(groups[best]))


def _trade(state: _Repair) -> None:
    """Swap one step down for one step up while that raises the value within budget, then refill."""
    for _ in range(MAX_SWAPS):
        down, up = np.meshgrid(state.moves(-1), state.moves(1), indexing="ij")
        keep = down != up
        changes = np.stack([np.stack([down[keep], -np.ones_like(down[keep])], axis=1),
                            np.stack([up[keep], np.ones_like(up[keep])], axis=1)], axis=1)  # fmt: skip
        best = _best_fitting(state, changes, np.zeros(len(changes), dtype=bool), False)
        if best is None:
            return
        state.apply(changes[best])
        if state.over():
            state.apply(changes[best], sign=-1)
            return
        _fill(state)


def repair(
    table: LayerTable,
    widths: Mapping[str, int],
    bounds: Mapping[str, WidthBounds],
    budgets: Mapping[str, float],
    costs: Mapping[str, Posynomial],
    value: Value,
    trade: bool = True,
) -> dict[str, int]:
    """Step widths down until the exact cost meets `budgets`, then up (and trade) while it still does.

    `costs` are the budgeted metrics as posynomials over the groups of `widths`, in that order; `value`
    scores ratio vectors over the same groups (higher is better).
    """
    groups = tuple(widths)
    for posy in costs.values():
        if posy.groups != groups:
            raise ValueError("cost posynomials must be over the groups being repaired")
    state = _Repair(
        table=table, groups=groups, costs=costs, budgets=budgets, value=value,
        base=np.array([table.group(g).width for g in groups], dtype=np.float64),
        choices=[np.array(bounds[g].choices, dtype=np.float64) for g in groups],
        index=[bounds[g].choices.index(widths[g]) for g in groups],
    )  # fmt: skip
    _step_down(state)
    _fill(state)
    if trade:
        _trade(state)
    return state.widths()


def best_rounding(
    table: LayerTable,
    targets: Mapping[str, float],
    bounds: Mapping[str, WidthBounds],
    budgets: Mapping[str, float],
    costs: Mapping[str, Posynomial],
    value: Value,
) -> dict[str, int]:
    """Repair from three roundings of `targets` (nearest, all down, all up) and keep the highest value.

    One greedy repair can stall in a poor local optimum when the allowed widths are coarse (a 16-wide
    group can only be 8 or 16 at divisor 8); three starts cost three repairs and never do worse than one.
    """
    starts = [
        {g: bounds[g].nearest(t) for g, t in targets.items()},
        {g: bounds[g].below(t) for g, t in targets.items()},
        {g: bounds[g].above(t) for g, t in targets.items()},
    ]
    results = [repair(table, start, bounds, budgets, costs, value) for start in starts]
    base = np.array([table.group(g).width for g in targets], dtype=np.float64)
    scores = [float(value((np.array(list(w.values()), dtype=np.float64) / base)[None, :])[0]) for w in results]
    return results[int(np.argmax(scores))]

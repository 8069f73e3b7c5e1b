"""Allocators turn a budget into a WidthPlan. SynExp (PreCrop / PreConfig) is the built-in one.

Pipeline of the SynExp allocator: density program (density.py) -> channel mapping (mapping.py) ->
rounding and repair (rounding.py). Compiled cvxpy programs are cached per table and options, so a
budget sweep re-solves without recompiling. Imports no torch.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from precrop.errors import FieldError, shown
from precrop.width.budget import over_budget
from precrop.width.costmodel import Cost, LayerTable
from precrop.width.density import CvxDensitySolver, DensityProblem, InfeasibleBudget, closed_form
from precrop.width.keep import with_kept
from precrop.width.mapping import VARIANTS, ChannelMapper, movable_groups
from precrop.width.objective import OBJECTIVES, continuous_uniform, objective_terms
from precrop.width.plan import WidthPlan
from precrop.width.posynomial import posynomial
from precrop.width.rounding import WidthBounds, best_rounding, closeness_to, repair, round_widths, width_bounds

# the density programs AllocationRequest.density_solver names: the closed form, or cvxpy as the cross-check
DENSITY_SOLVERS = ("closed_form", "cvxpy")


class BudgetError(FieldError):
    """A budget or option the allocator cannot honour (`field`: the AllocationRequest field at fault, if one is)."""


# The widest growth PreConfig may ask for. Each group's allowed widths run up to expand x base in steps of
# the divisor, so an unbounded expand (1e9) made allocation build billions of choices and hang.
MAX_EXPAND = 16


@dataclass(frozen=True)
class AllocationRequest:
    """What to allocate: budgets as fractions of the dense cost, and the width rules.

    PreCrop: expand = 1 and budgets in (0, 1]. PreConfig: expand > 1 lets groups grow up to
    expand x base, and budgets may exceed 1 (scale s: budget = s x base cost). `objective` picks the
    SynExp sum SynExp maximizes (objective.py: `layer`, the paper's, or `path`). `keep` names layers
    whose every channel group stays at base width; their cost still counts against the budgets.
    """

    params: float | None = None
    macs: float | None = None
    variant: str = "gp"
    divisor: int = 8
    min_width: int = 8
    expand: float = 1.0
    d_min: float = 0.01
    density_solver: str = "closed_form"
    objective: str = "layer"
    keep: tuple[str, ...] = ()  # layer names or glob patterns whose channel groups stay at base width (keep.py)

    def validate(self) -> None:
        """Raise BudgetError for any value a user could get wrong, naming the field at fault."""
        if self.params is None and self.macs is None:
            raise BudgetError("give a budget: --params F, --macs F or both")
        if not math.isfinite(self.expand) or not 1 <= self.expand <= MAX_EXPAND:  # first: the budgets' bound
            raise BudgetError(f"expand must be in [1, {MAX_EXPAND:g}], got {self.expand:g}", field="expand")
        for name, value in (("params", self.params), ("macs", self.macs)):
            if value is None:
                continue
            if not math.isfinite(value) or value <= 0:
                raise BudgetError(f"{name} budget must be a positive number, got {shown(value)}", field=name)
            if value > self.expand + 1e-12:
                raise BudgetError(
                    f"{name} budget {shown(value)} exceeds the expand bound {self.expand:g}; PreCrop budgets are "
                    "fractions in (0, 1], PreConfig's (expand > 1) go up to expand",
                    field=name,
                )
        choices = {"variant": VARIANTS, "objective": OBJECTIVES, "density_solver": DENSITY_SOLVERS}
        for name, allowed in choices.items():
            chosen = getattr(self, name)
            if chosen not in allowed:
                what = name.replace("_", " ")
                raise BudgetError(f"unknown {what} {shown(chosen)}; choose one of {', '.join(allowed)}", field=name)
        for name, width in (("divisor", self.divisor), ("min_width", self.min_width)):
            if width < 1:
                raise BudgetError(f"{name} must be a positive integer, got {shown(width)}", field=name)
        if not 0 < self.d_min <= 1:
            raise BudgetError(f"d_min must be in (0, 1], got {shown(self.d_min)}", field="d_min")
        if isinstance(self.keep, str) or not all(isinstance(k, str) and k for k in self.keep):
            raise BudgetError(f"keep must be a list of layer names or patterns, got {shown(self.keep)}", field="keep")

    @property
    def metrics(self) -> tuple[str, ...]:
        """The budgeted metrics in a fixed order."""
        return tuple(m for m in ("params", "macs") if getattr(self, m) is not None)

    def absolute_budgets(self, base: Cost) -> dict[str, float]:
        """Per budgeted metric, the budget in counts: its fraction times the dense model's `base` cost."""
        return {m: getattr(self, m) * getattr(base, m) for m in self.metrics}


def budgets_and_bounds(
    table: LayerTable, request: AllocationRequest
) -> tuple[dict[str, float], dict[str, WidthBounds]]:
    """Absolute budgets per metric, and the allowed widths of every prunable group."""
    budgets = request.absolute_budgets(table.cost())
    bounds = {
        g.name: width_bounds(g.width, request.divisor, request.min_width, request.expand) for g in table.prunable_groups
    }
    return budgets, bounds


def require_floor_fits(
    table: LayerTable,
    request: AllocationRequest,
    budgets: dict[str, float],
    bounds: dict[str, WidthBounds],
    movable: tuple[str, ...] | None = None,
) -> None:
    """BudgetError when even the narrowest allowed widths (of the `movable` groups; all by default) exceed a budget."""
    base = table.cost()
    moving = bounds if movable is None else {g: bounds[g] for g in movable}
    floor = table.cost({g: b.low for g, b in moving.items()})
    exceeded = over_budget(floor, budgets)
    if not exceeded:
        return
    metric = exceeded[0]
    need = getattr(floor, metric) / getattr(base, metric)
    which = "" if movable is None else f" of the {request.variant!r} mapping (it keeps residual widths at base)"
    kept = f", with the kept layers ({', '.join(request.keep)}) at base width" if request.keep else ""
    raise BudgetError(
        f"{metric} budget {getattr(request, metric)} is below what the minimum widths{which} allow "
        f"({need:.4f} of base at min width {request.min_width}, divisor {request.divisor}{kept})",
        field=metric,
    )


class SynExpAllocator:
    """PreCrop/PreConfig: maximize SynExp (sum of log layer densities) under the budgets."""

    name = "synexp"

    def __init__(self) -> None:
        self._mappers: dict[tuple[object, ...], ChannelMapper] = {}
        self._density_solvers: dict[tuple[object, ...], CvxDensitySolver] = {}

    def allocate(self, table: LayerTable, request: AllocationRequest, probe: object = None) -> WidthPlan:
        """Solve the density program, map to channels, round and repair; return the plan (`probe` is ignored)."""
        request.validate()
        table = with_kept(table, request.keep)
        start = time.perf_counter()
        base = table.cost()
        budgets, bounds = budgets_and_bounds(table, request)
        require_floor_fits(table, request, budgets, bounds)
        mapper = self._mapper(table, request, bounds)
        require_floor_fits(table, request, budgets, bounds, mapper.groups)
        log_d = self._log_densities(table, base, request, mapper, budgets)
        try:
            result = mapper.solve(log_d, budgets)
        except ValueError as exc:  # the floor fits, so this is the solver's failure, named as such
            raise BudgetError(f"the {request.variant!r} channel mapping found no solution: {exc}") from exc
        targets = {g: table.group(g).width * math.exp(y) for g, y in zip(mapper.groups, result.y, strict=True)}
        value = objective_terms(table, mapper.groups, request.objective).values
        widths = best_rounding(table, targets, bounds, budgets, mapper.costs, value)
        predicted = Cost(*(round(mapper.posynomials[m].value(result.y)) for m in ("params", "macs")))
        return allocated_plan(table, request, self.name, widths, predicted, result.status, start)

    def _mapper(self, table: LayerTable, request: AllocationRequest, bounds: dict[str, WidthBounds]) -> ChannelMapper:
        key = (table, request.variant, request.metrics, request.divisor, request.min_width, request.expand,
               request.objective)  # fmt: skip
        if key not in self._mappers:
            groups = movable_groups(table, request.variant)
            lower = np.array([math.log(bounds[g].low / table.group(g).width) for g in groups])
            upper = np.array([math.log(bounds[g].high / table.group(g).width) for g in groups])
            self._mappers[key] = ChannelMapper(table, request.variant, request.metrics, lower, upper,
                                               request.objective)  # fmt: skip
        mapper = self._mappers[key]
        return mapper

    def _log_densities(
        self,
        table: LayerTable,
        base_cost: Cost,
        request: AllocationRequest,
        mapper: ChannelMapper,
        budgets: dict[str, float],
    ) -> np.ndarray:
        """Solve the density program over the layers the mapping scores (the ones the variant can change and the
        objective sums over); the others' cost is held at base here, and the mapping's exact budgets decide."""
        base = table.base_widths
        layers = mapper.layers
        params = np.array([layer.weight_count(base) for layer in layers], dtype=np.float64)
        macs = np.array([layer.macs(base) for layer in layers], dtype=np.float64)
        problem = DensityProblem(params, macs, request.d_min, request.expand)
        fixed = {"params": base_cost.params - params.sum(), "macs": base_cost.macs - macs.sum()}
        density_budget = {m: budgets[m] - fixed[m] for m in budgets}
        if any(b <= 0 for b in density_budget.values()):
            raise BudgetError("the budget does not even cover the layers this variant cannot change")
        bp, bf = density_budget.get("params"), density_budget.get("macs")
        try:
            if request.density_solver == "cvxpy":
                key = (table, request.variant, request.metrics, request.d_min, request.expand, request.objective)
                if key not in self._density_solvers:
                    self._density_solvers[key] = CvxDensitySolver(problem, bp is not None, bf is not None)
                d = self._density_solvers[key].solve(bp, bf)
            else:
                d = closed_form(problem, bp, bf)
        except InfeasibleBudget as exc:
            raise BudgetError(str(exc)) from exc
        return np.log(d)


class UniformAllocator:
    """Uniform width scaling: one multiplier m for every group, then rounded and filled to the budget.

    The baseline every structured-pruning method is compared with, so it must spend the same budget:
    m is the real multiplier whose exact cost meets the tightest budget (continuous uniform scaling),
    widths are m x base rounded to allowed widths, and repair steps them to the budget staying as close
    to m x base as it can (without repair, divisor-8 rounding left it up to 16% under a params budget).
    """

    name = "uniform"

    def allocate(self, table: LayerTable, request: AllocationRequest, probe: object = None) -> WidthPlan:
        """Widths m x base for the continuous multiplier m of the budget, rounded and repaired to it (`probe`
        is ignored)."""
        request.validate()
        table = with_kept(table, request.keep)
        start = time.perf_counter()
        budgets, bounds = budgets_and_bounds(table, request)
        require_floor_fits(table, request, budgets, bounds)
        multiplier = min(request.expand, *(continuous_uniform(table, m, b).ratio for m, b in budgets.items()))
        groups = [g.name for g in table.prunable_groups]
        targets = {g.name: g.width * multiplier for g in table.prunable_groups}
        weight = {g: float(max(table.layers_touching(g), 1)) for g in groups}
        costs = {m: posynomial(table, m, groups) for m in budgets}
        value = closeness_to(targets, table.base_widths, weight)
        widths = repair(table, round_widths(targets, bounds), bounds, budgets, costs, value, trade=False)
        return allocated_plan(table, request, self.name, widths, table.cost(widths), "rounded and filled", start,
                              {"multiplier": round(multiplier, 6)})  # fmt: skip


def allocated_plan(
    table: LayerTable,
    request: AllocationRequest,
    allocator: str,
    widths: dict[str, int],
    predicted: Cost,
    status: str,
    started: float,
    extra_options: dict[str, Any] | None = None,
) -> WidthPlan:
    """The WidthPlan every allocator returns: its widths over the base ones, the request's budget and
    options, the exact counted cost, and the time since `started` (a perf_counter reading)."""
    options = {k: v for k, v in asdict(request).items() if k not in ("params", "macs", "keep")}
    if request.keep:  # recorded only when given, so the plans of every other request read as before
        options["keep"] = list(request.keep)
    return WidthPlan(
        arch=table.arch,
        input_shape=table.input_shape,
        num_classes=table.num_classes,
        widths={**table.base_widths, **widths},
        budget={"params": request.params, "macs": request.macs},
        base=table.cost(),
        predicted=predicted,
        counted=table.cost(widths),
        allocator=allocator,
        options={**options, **(extra_options or {})},
        solver_status=status,
        solve_ms=round((time.perf_counter() - started) * 1000, 3),
    )


def dense_plan(table: LayerTable) -> WidthPlan:
    """The plan of the unpruned model: every group at its base width (allocator `dense`)."""
    base = table.cost()
    return WidthPlan(
        arch=table.arch,
        input_shape=table.input_shape,
        num_classes=table.num_classes,
        widths=table.base_widths,
        budget={"params": None, "macs": None},
        base=base,
        predicted=base,
        counted=base,
        allocator="dense",
        options={},
        solver_status="not solved",
        solve_ms=0.0,
    )

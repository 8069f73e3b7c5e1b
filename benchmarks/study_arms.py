"""The arms of benchmarks/width_study.py: one plan per arm and budget, all at the same counted cost.

Arms:
  - `layer`, `path`: SynExp widths under either objective (precrop/width/objective.py);
  - `uniform`: uniform width scaling;
  - `synflow` (any mask method that needs no data): weight masks scored on the seeded dense model, so
    they are made in the worker that trains them (`needs_model`);
  - ablation arms `BASE:uniform-FAMILY` (for example `layer:uniform-streams`): BASE's plan with one
    family of channel groups moved to uniform scaling's widths, and the other groups repaired back to
    the budget, as close (in log width) to BASE's widths as the budget allows.

The families come from the traced layer table, not from names: `expansions` are the groups a depthwise
conv reads and writes (the conv shares its producer's mask), `head` is the group the classifier reads,
`streams` are the rest (residual streams, the stem of nets without a depthwise first block, ...).
No library offers "move these groups to other widths and repair to a budget": it is the project's own
repair (precrop/width/rounding.py) with the moved groups pinned.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from precrop.methods.registry import METHODS, realize
from precrop.width.allocate import AllocationRequest, allocated_plan, budgets_and_bounds
from precrop.width.costmodel import LOGITS_GROUP, LayerTable
from precrop.width.objective import OBJECTIVES
from precrop.width.plan import WidthPlan
from precrop.width.posynomial import posynomial
from precrop.width.rounding import WidthBounds, closeness_to, repair

FAMILIES = ("streams", "expansions", "head")
UNIFORM = "uniform"
ABLATION_DONOR = UNIFORM
ABLATION_SEPARATOR = ":uniform-"


def group_families(table: LayerTable) -> dict[str, str]:
    """The family (`streams`, `expansions` or `head`) of every prunable group of `table`."""
    expansions = {layer.out_group for layer in table.layers if layer.depthwise}
    head = {g for layer in table.layers if layer.out_group == LOGITS_GROUP for g in layer.in_groups}
    families = {}
    for group in table.prunable_groups:
        name = group.name
        families[name] = "head" if name in head else "expansions" if name in expansions else "streams"
    return families


def ablation_arm(base: str, family: str) -> str:
    """The arm name of `base` with `family` moved to uniform widths."""
    return f"{base}{ABLATION_SEPARATOR}{family}"


def parse_arm(arm: str) -> tuple[str, str | None]:
    """(base arm, moved family or None); ValueError naming a bad arm."""
    base, _, family = arm.partition(ABLATION_SEPARATOR)
    if family and family not in FAMILIES:
        raise ValueError(f"arm {arm!r}: family must be one of {', '.join(FAMILIES)}")
    if family and base not in OBJECTIVES:
        raise ValueError(f"arm {arm!r}: only SynExp plans ({', '.join(OBJECTIVES)}) can be ablated")
    if not family and base not in (*OBJECTIVES, UNIFORM) and not method_is_mask(base):
        raise ValueError(
            f"unknown arm {arm!r}: give layer, path, uniform, a data-free mask method or BASE:uniform-FAMILY"
        )
    return base, family or None


def method_is_mask(name: str) -> bool:
    """True for a registered mask method that scores the model without data (synflow, random, erk, ...)."""
    spec = METHODS.get(name)
    return spec is not None and spec.masks and not spec.needs_data


def request_for(arm: str, metric: str, budget: float) -> AllocationRequest:
    """The allocation request of `arm` at `budget` of `metric` (SynExp arms name their objective)."""
    base, _ = parse_arm(arm)
    objective = base if base in OBJECTIVES else "layer"
    if metric == "macs":
        return AllocationRequest(macs=budget, objective=objective)
    return AllocationRequest(params=budget, objective=objective)


def channel_plan(table: LayerTable, arm: str, metric: str, budget: float) -> WidthPlan:
    """The channel plan of a width arm (`layer`, `path`, `uniform` or an ablation arm) at `budget`."""
    base, family = parse_arm(arm)
    request = request_for(arm, metric, budget)
    allocator = UNIFORM if base == UNIFORM else "synexp"
    plan = realize(allocator, table, request, None).plan
    if family is None:
        return plan
    donor = realize(ABLATION_DONOR, table, request, None).plan
    moved = [g for g, f in group_families(table).items() if f == family]
    return blended_plan(table, request, plan, donor, moved, arm)


def blended_plan(
    table: LayerTable, request: AllocationRequest, base: WidthPlan, donor: WidthPlan, moved: Iterable[str], name: str
) -> WidthPlan:
    """`base` with the `moved` groups at `donor`'s widths, the rest repaired to the request's budget.

    The repair keeps the moved groups fixed and steps the others down (or up) one allowed width at a time,
    staying as close to `base`'s widths as it can, as uniform scaling's own repair does.
    """
    started = time.perf_counter()
    budgets, bounds = budgets_and_bounds(table, request)
    pinned = set(moved)
    for group in pinned:
        bounds[group] = WidthBounds((donor.widths[group],))
    groups = [g.name for g in table.prunable_groups]
    start = {g: bounds[g].nearest(base.widths[g]) for g in groups}
    weight = {g: float(max(table.layers_touching(g), 1)) for g in groups}
    value = closeness_to({g: float(base.widths[g]) for g in groups}, table.base_widths, weight)
    costs = {m: posynomial(table, m, groups) for m in budgets}
    widths = repair(table, start, bounds, budgets, costs, value, trade=False)
    extra = {"blend_base": base.allocator, "blend_donor": donor.allocator, "moved_groups": sorted(pinned)}
    return allocated_plan(table, request, name, widths, table.cost(widths), "blended and repaired", started, extra)

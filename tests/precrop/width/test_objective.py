"""The SynExp objective of rounded plans, continuous uniform scaling, and the rounding that serves them."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from precrop.width.allocate import AllocationRequest, BudgetError, SynExpAllocator, UniformAllocator
from precrop.width.costmodel import LayerTable
from precrop.width.objective import continuous_uniform, objective_terms, scored_layers, synexp_objective
from precrop.width.posynomial import posynomial
from precrop.width.rounding import WidthBounds, repair, width_bounds
from tests.precrop.conftest import cached_table


@pytest.mark.parametrize("arch", ["cifar_resnet20", "mobilenetv2_cifar", "efficientnet_b0"])
def test_vectorized_objective_matches_a_direct_count(arch: str) -> None:
    table = cached_table(arch)
    groups = [g.name for g in table.prunable_groups]
    rng = np.random.default_rng(0)
    widths = {g.name: int(rng.integers(1, g.width + 1)) for g in table.prunable_groups}
    ratios = np.array([widths[g] / table.group(g).width for g in groups])
    # independent: count every layer's kept weights with plain integer arithmetic
    direct = 0.0
    full = table.full_widths(widths)
    for layer in scored_layers(table):
        w_in = sum(full[g] for g in layer.in_groups)
        base_in = sum(table.group(g).width for g in layer.in_groups)
        kept = full[layer.out_group] * (1 if layer.depthwise else w_in)
        total = table.group(layer.out_group).width * (1 if layer.depthwise else base_in)
        direct += math.log(kept / total)
    assert synexp_objective(table, widths) == pytest.approx(direct, abs=1e-9)
    assert objective_terms(table, groups).value(ratios) == pytest.approx(direct, abs=1e-9)


def test_continuous_uniform_meets_its_cost_exactly() -> None:
    table = cached_table("cifar_resnet20")
    target = 0.5 * table.cost().macs
    ref = continuous_uniform(table, "macs", target)
    groups = [g.name for g in table.prunable_groups]
    assert posynomial(table, "macs", groups).value(np.full(len(groups), math.log(ref.ratio))) == pytest.approx(target)
    assert 0.69 < ref.ratio < 0.72  # MACs go with the ratio squared except at the stem and the classifier


def test_width_bounds_keep_the_base_width_and_groups_under_the_floor() -> None:
    assert width_bounds(20, 8, 8, 1.0).choices == (8, 16, 20)  # base not a multiple of 8: still allowed
    assert width_bounds(10, 8, 8, 2.0).choices == (8, 10, 16)
    assert width_bounds(4, 8, 8, 2.0).choices == (4,)  # under the floor: keeps its base, never forced to 8
    assert width_bounds(64, 8, 8, 1.0).choices == tuple(range(8, 65, 8))


def test_efficientnet_squeeze_groups_keep_their_base_width_at_full_budget() -> None:
    table = cached_table("efficientnet_b0")
    odd = [g for g in table.prunable_groups if g.width % 8]
    assert odd  # the SE reduction groups (10, 20, ...)
    plan = SynExpAllocator().allocate(table, AllocationRequest(macs=1.0, params=1.0))
    assert all(plan.widths[g.name] == g.width for g in odd)


def test_expand_keeps_groups_below_the_divisor_at_base() -> None:
    table = cached_table("efficientnet_b0")
    small = [g for g in table.prunable_groups if g.width < 8]
    plan = SynExpAllocator().allocate(table, AllocationRequest(macs=1.0, params=0.8, expand=2.0))
    assert all(plan.widths[g.name] == g.width for g in small)


@pytest.mark.parametrize("arch", ["efficientnet_b0", "mobilenetv2"])
def test_preconfig_at_scale_one_spends_the_same_macs(arch: str) -> None:
    plan = SynExpAllocator().allocate(cached_table(arch), AllocationRequest(macs=1.0, params=0.8, expand=2.0))
    assert 0.99 <= plan.counted.macs / plan.base.macs <= 1.0
    assert plan.counted.params <= 0.8 * plan.base.params


# ResNet-56 at 0.5 MACs: the old rounding (distance to the fitted widths) scored 0.26 nats below continuous uniform
FILL_CASES = [("cifar_resnet20", "params", 0.5), ("cifar_resnet20", "macs", 0.5), ("cifar_resnet56", "params", 0.3),
              ("cifar_resnet56", "macs", 0.5), ("mobilenetv2", "macs", 0.3)]  # fmt: skip


@pytest.mark.parametrize(("arch", "metric", "budget"), FILL_CASES)
def test_uniform_fills_its_budget_and_synexp_beats_it(arch: str, metric: str, budget: float) -> None:
    table = cached_table(arch)
    request = AllocationRequest(**{metric: budget})  # type: ignore[arg-type]
    uniform = UniformAllocator().allocate(table, request)
    synexp = SynExpAllocator().allocate(table, request)
    for plan in (uniform, synexp):
        assert 0.98 <= getattr(plan.counted, metric) / (budget * getattr(plan.base, metric)) <= 1.0
    assert synexp_objective(table, synexp.widths) > synexp_objective(table, uniform.widths)
    # and SynExp's rounded plan beats continuous uniform scaling at its own counted cost
    reference = continuous_uniform(table, metric, getattr(synexp.counted, metric))
    assert synexp_objective(table, synexp.widths) > reference.objective


def test_internal_variant_below_its_floor_is_a_budget_error() -> None:
    with pytest.raises(BudgetError, match="'internal' mapping"):
        SynExpAllocator().allocate(cached_table("cifar_resnet20"), AllocationRequest(macs=0.3, variant="internal"))


def _brute_force_best(table: LayerTable, bounds: dict[str, WidthBounds], budget: float) -> float:
    """The highest objective over every allowed width assignment within the MACs budget."""
    best = -math.inf
    names = list(bounds)
    for combo in itertools.product(*(bounds[g].choices for g in names)):
        widths = dict(zip(names, combo, strict=True))
        if table.cost(widths).macs <= budget:
            best = max(best, synexp_objective(table, widths))
    return best


def test_repair_lands_within_budget_near_the_brute_force_optimum() -> None:
    table = cached_table("cifar_resnet20")
    names = [g.name for g in table.prunable_groups]
    bounds = {g.name: width_bounds(g.width, 16, 16, 1.0) for g in table.prunable_groups}  # few choices: brute force
    assert math.prod(len(b.choices) for b in bounds.values()) <= 50_000
    budget = 0.5 * table.cost().macs
    start = {g: b.high for g, b in bounds.items()}  # far over budget: repair must step down first
    costs = {"macs": posynomial(table, "macs", names)}
    widths = repair(table, start, bounds, {"macs": budget}, costs, objective_terms(table, names).values)
    assert table.cost(widths).macs <= budget
    optimum = _brute_force_best(table, bounds, budget)
    assert synexp_objective(table, widths) >= optimum - 0.5  # greedy + trades: within half a nat

"""The allocator contract (every allocator must pass it) and the SynExp acceptance numbers."""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import pytest

from precrop.methods.channel_rank import PfsAllocator
from precrop.methods.prunenet import PruneNetAllocator
from precrop.methods.registry import METHODS, WIDTH_METHODS, realize
from precrop.nn.build import build_from_plan
from precrop.nn.counting import count_cost
from precrop.width.allocate import AllocationRequest, BudgetError, SynExpAllocator
from precrop.width.plan import WidthPlan
from precrop.width.posynomial import posynomial
from precrop.width.rounding import width_bounds
from tests.precrop.conftest import cached_table, make_probe

CASES = [
    ("cifar_resnet20", AllocationRequest(macs=0.5)),
    ("cifar_resnet20", AllocationRequest(params=0.3, variant="gp")),
    ("mobilenetv2_cifar", AllocationRequest(macs=0.6, params=0.5, variant="internal")),
    ("vgg16_bn_cifar", AllocationRequest(params=0.25, divisor=16, min_width=16)),
    ("resnet18_cifar", AllocationRequest(macs=1.2, params=0.9, expand=1.5)),
]


@pytest.fixture(autouse=True)
def quick_data_driven(monkeypatch: pytest.MonkeyPatch) -> None:
    """PFS and PruneNet with a few steps here: the contract is about widths and budgets, not about how
    well they score (tests/precrop/methods/test_channel_rank.py runs them at their defaults)."""
    for name, factory in (("pfs", partial(PfsAllocator, steps=5)), ("prunenet", partial(PruneNetAllocator, 2))):
        monkeypatch.setitem(METHODS, name, dataclasses.replace(METHODS[name], factory=factory))


@pytest.mark.parametrize("allocator_name", WIDTH_METHODS)
@pytest.mark.parametrize(("arch", "request_"), CASES)
def test_allocator_contract(allocator_name: str, arch: str, request_: AllocationRequest) -> None:
    table = cached_table(arch)
    probe = make_probe(arch) if METHODS[allocator_name].needs_model else None
    plan = realize(allocator_name, table, request_, probe).plan
    # budget met on the counted, built model
    model = build_from_plan(plan, seed=0)
    counted = count_cost(model, plan.input_shape)
    assert counted == plan.counted
    base = table.cost()
    for metric in request_.metrics:
        assert getattr(counted, metric) <= getattr(request_, metric) * getattr(base, metric)
    # widths valid
    assert set(plan.widths) == set(table.base_widths)
    for group in table.groups:
        width = plan.widths[group.name]
        if group.fixed:
            assert width == group.width
            continue
        bounds = width_bounds(group.width, request_.divisor, request_.min_width, request_.expand)
        assert width in bounds.choices
        # allowed: the base width itself, or a multiple of the divisor within [min width, expand x base]
        in_range = width % request_.divisor == 0 and request_.min_width <= width <= request_.expand * group.width
        assert width == group.width or in_range
    # filled: the tightest budget is used to within 2% (comparisons between methods are at equal cost)
    assert max(getattr(counted, m) / (getattr(request_, m) * getattr(base, m)) for m in request_.metrics) >= 0.98
    # deterministic: a fresh allocator on the same probe agrees
    assert dict(realize(allocator_name, table, request_, probe).plan.widths) == dict(plan.widths)
    if probe is None:  # a reused allocator too (synexp caches compiled programs)
        allocator = METHODS[allocator_name].factory()
        assert dict(allocator.allocate(table, request_).widths) == dict(allocator.allocate(table, request_).widths)
    # JSON round trip
    assert WidthPlan.from_json(plan.to_json()) == plan


def test_resnet50_half_macs_lands_just_under_budget() -> None:
    plan = SynExpAllocator().allocate(cached_table("resnet50"), AllocationRequest(macs=0.5))
    fraction = plan.counted.macs / plan.base.macs
    assert 0.47 <= fraction <= 0.50
    assert plan.solver_status == "optimal"


def test_preconfig_efficientnet_grows_some_groups_within_budgets() -> None:
    table = cached_table("efficientnet_b0")
    plan = SynExpAllocator().allocate(table, AllocationRequest(macs=1.0, params=0.8, expand=2.0))
    assert plan.counted.macs <= plan.base.macs
    assert plan.counted.params <= 0.8 * plan.base.params
    assert any(plan.widths[g.name] > g.width for g in table.prunable_groups)


def test_variants_differ_and_internal_keeps_streams() -> None:
    table = cached_table("cifar_resnet56")
    allocator = SynExpAllocator()
    plans = {v: allocator.allocate(table, AllocationRequest(macs=0.5, variant=v)) for v in ("fit", "gp", "internal")}
    assert dict(plans["fit"].widths) != dict(plans["gp"].widths)
    for stream in ("conv1", "layer2.0.conv2", "layer3.0.conv2"):
        assert plans["internal"].widths[stream] == table.group(stream).width


def test_cvxpy_and_closed_form_density_give_the_same_plan_cost() -> None:
    table = cached_table("mobilenetv2")
    allocator = SynExpAllocator()
    a = allocator.allocate(table, AllocationRequest(macs=0.4))
    b = allocator.allocate(table, AllocationRequest(macs=0.4, density_solver="cvxpy"))
    assert abs(a.predicted.macs - b.predicted.macs) <= 1e-4 * a.base.macs


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (AllocationRequest(macs=0.0), "positive"),
        (AllocationRequest(macs=-1.0), "positive"),
        (AllocationRequest(macs=1.5), "expand"),
        (AllocationRequest(macs=math.nan), "positive"),
        (AllocationRequest(macs=0.001), "minimum widths"),
        (AllocationRequest(macs=0.5, variant="nope"), "variant"),
        (AllocationRequest(), "budget"),
    ],
)
def test_bad_requests_raise_budget_error(request_: AllocationRequest, needle: str) -> None:
    with pytest.raises(BudgetError, match=needle):
        SynExpAllocator().allocate(cached_table("cifar_resnet20"), request_)


@pytest.mark.parametrize("arch", ["mobilenetv2", "resnet50", "efficientnet_b0"])
def test_posynomial_reproduces_table_cost_at_integer_widths(arch: str) -> None:
    import numpy as np

    table = cached_table(arch)
    groups = tuple(g.name for g in table.prunable_groups)
    rng = np.random.default_rng(3)
    widths = {g.name: int(rng.integers(1, 2 * g.width)) for g in table.prunable_groups}
    y = np.log([widths[g] / table.group(g).width for g in groups])
    cost = table.cost(widths)
    assert posynomial(table, "params", groups).value(y) == pytest.approx(cost.params, rel=1e-12)
    assert posynomial(table, "macs", groups).value(y) == pytest.approx(cost.macs, rel=1e-12)

"""The shared budget checks against brute force: exact fit checks by a direct sum over the layers, and
bisections by a linear scan."""

from __future__ import annotations

import itertools
import math

import pytest

from precrop.width.budget import fits, largest_fitting, largest_fitting_count, over_budget
from precrop.width.costmodel import ChannelGroup, Cost, Layer, LayerTable, NormTerm


def _chain() -> LayerTable:
    """input(3) -> conv a 3x3 (bias) @8x8 -> conv b 3x3 @4x4 -> linear 10 (bias); a norm on a and on b."""
    groups = (
        ChannelGroup("input", 3, True),
        ChannelGroup("a", 16),
        ChannelGroup("b", 16),
        ChannelGroup("logits", 10, True),
    )
    layers = (
        Layer("c1", "conv", ("input",), "a", kernel=(3, 3), bias=True, out_hw=(8, 8)),
        Layer("c2", "conv", ("a",), "b", kernel=(3, 3), out_hw=(4, 4)),
        Layer("fc", "linear", ("b",), "logits", bias=True),
    )
    norms = (NormTerm("bn_a", ("a",), 2), NormTerm("bn_b", ("b",), 2))
    return LayerTable("chain", (3, 8, 8), 10, groups, layers, norms)


def _direct_cost(a: int, b: int) -> tuple[int, int]:
    """Params and MACs of the chain at widths a, b, summed layer by layer from the formulas."""
    params = (a * 3 * 9 + a) + b * a * 9 + (10 * b + 10) + 2 * a + 2 * b
    macs = a * 3 * 9 * 64 + b * a * 9 * 16 + 10 * b
    return params, macs


def test_direct_cost_is_the_tables() -> None:
    assert _chain().cost() == Cost(*_direct_cost(16, 16)) == Cost(params=2986, macs=64672)


@pytest.mark.parametrize(
    ("budgets", "fitting"),
    [({"params": 1000.0}, 145), ({"macs": 30000.0}, 163), ({"params": 1000.0, "macs": 30000.0}, 139)],
)
def test_fits_agrees_with_a_direct_sum_at_every_width(budgets: dict[str, float], fitting: int) -> None:
    table = _chain()
    count = 0
    for a, b in itertools.product(range(1, 17), repeat=2):
        params, macs = _direct_cost(a, b)
        expected = params <= budgets.get("params", math.inf) and macs <= budgets.get("macs", math.inf)
        assert fits(table, {"a": a, "b": b}, budgets) == expected, (a, b)
        count += expected
    assert count == fitting


def test_a_cost_exactly_at_the_budget_fits() -> None:
    params, macs = _direct_cost(8, 8)
    assert (params, macs) == (922, 23120)
    assert fits(_chain(), {"a": 8, "b": 8}, {"params": 922.0, "macs": 23120.0})
    assert not fits(_chain(), {"a": 8, "b": 8}, {"params": 921.0})


def test_over_budget_names_the_exceeded_metrics_in_budget_order() -> None:
    cost = Cost(params=922, macs=23120)
    assert over_budget(cost, {"macs": 23119.0, "params": 921.0}) == ("macs", "params")
    assert over_budget(cost, {"params": 922.0, "macs": 23119.0}) == ("macs",)
    assert over_budget(cost, {"params": 921.0}, slack=0.01) == ()
    assert over_budget(cost, {}) == ()


def test_an_estimate_decides_clear_cases_and_the_exact_cost_close_ones() -> None:
    table, widths = _chain(), {"a": 8, "b": 8}  # exact params 922
    assert not fits(table, widths, {"params": 1000.0}, estimate={"params": 1001.0})  # clearly over: trusted
    assert fits(table, widths, {"params": 800.0}, estimate={"params": 799.0})  # clearly under: trusted
    assert fits(table, widths, {"params": 922.0}, estimate={"params": 922.0 * (1 + 1e-10)})  # close: exact says fits
    assert not fits(table, widths, {"params": 921.9999999}, estimate={"params": 921.9999999})  # close: exact says over


def test_largest_fitting_matches_a_linear_scan_of_a_fine_grid() -> None:
    grid = 1_000_000
    scanned = max(i for i in range(grid + 1) if (i / grid) ** 3 <= 0.3) / grid
    found = largest_fitting(lambda x: x**3 <= 0.3, 0.0, 1.0, steps=40)
    assert scanned == 0.669432
    assert found == pytest.approx(0.3 ** (1 / 3), abs=2**-40)
    assert found**3 <= 0.3
    assert scanned <= found < scanned + 1 / grid


def test_largest_fitting_takes_exactly_its_steps_and_keeps_the_low_end() -> None:
    asked: list[float] = []
    assert largest_fitting(lambda x: asked.append(x) or False, 2.0, 6.0, steps=3) == 2.0
    assert asked == [4.0, 3.0, 2.5]
    assert largest_fitting(lambda x: True, 0.0, 8.0, steps=0) == 0.0


def _cost_steps(k: int) -> int:
    """A monotone cost with plateaus, like a ranking's prefix rounded to multiples of 8 channels."""
    return 8 * math.ceil(k / 8) * 13 + 3 * k


@pytest.mark.parametrize(("low", "high"), [(0, 0), (0, 1), (0, 2), (0, 37), (5, 200), (0, 1000)])
def test_largest_fitting_count_matches_a_linear_scan(low: int, high: int) -> None:
    for budget in range(_cost_steps(low), _cost_steps(high) + 20, 5 if high < 300 else 29):
        scanned = max(k for k in range(low, high + 1) if _cost_steps(k) <= budget)
        assert largest_fitting_count(lambda k, b=budget: _cost_steps(k) <= b, low, high) == scanned


def test_largest_fitting_count_numbers_and_calls() -> None:
    asked: list[int] = []

    def square_fits(k: int) -> bool:
        asked.append(k)
        return k * k <= 50

    assert largest_fitting_count(square_fits, 0, 100) == 7
    assert asked[0] == 100  # the top is asked first: a prefix that fits whole is kept whole
    assert len(asked) <= 1 + math.ceil(math.log2(100))
    assert all(isinstance(k, int) for k in asked)
    assert largest_fitting_count(lambda k: k <= 100, 0, 100) == 100
    assert largest_fitting_count(lambda k: k <= 3, 3, 3) == 3
    assert largest_fitting_count(lambda k: k == 0, 0, 1) == 0

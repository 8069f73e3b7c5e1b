"""The density program: closed form equals cvxpy, KKT structure, monotone in the budget."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from precrop.width.density import CvxDensitySolver, DensityProblem, InfeasibleBudget, closed_form, objective
from precrop.width.mapping import density_rows, movable_groups
from tests.precrop.conftest import cached_table


def _problem(arch: str) -> DensityProblem:
    table = cached_table(arch)
    layers, _ = density_rows(table, movable_groups(table, "fit"))
    base = table.base_widths
    params = np.array([layer.weight_count(base) for layer in layers], dtype=float)
    macs = np.array([layer.macs(base) for layer in layers], dtype=float)
    return DensityProblem(params, macs, d_min=0.01, upper=1.0)


@pytest.mark.parametrize("arch", ["cifar_resnet56", "mobilenetv2", "resnet50"])
def test_closed_form_matches_cvxpy_at_20_budgets(arch: str) -> None:
    problem = _problem(arch)
    rng = np.random.default_rng(7)
    solvers = {kind: CvxDensitySolver(problem, kind != "macs", kind != "params") for kind in ("params", "macs", "both")}
    for i in range(20):
        kind = ("params", "macs", "both")[i % 3]
        bp = rng.uniform(0.1, 0.9) * problem.params.sum() if kind != "macs" else None
        bf = rng.uniform(0.1, 0.9) * problem.macs.sum() if kind != "params" else None
        exact = closed_form(problem, bp, bf)
        conic = solvers[kind].solve(bp, bf)
        a, b = objective(exact), objective(conic)
        assert abs(a - b) <= 1e-6 * max(1.0, abs(a)), (kind, a, b)
        if bp is not None:
            assert problem.params @ exact <= bp * (1 + 1e-9)
        if bf is not None:
            assert problem.macs @ exact <= bf * (1 + 1e-9)


def test_single_budget_equalizes_kept_params_of_unsaturated_layers() -> None:
    problem = _problem("resnet50")
    d = closed_form(problem, 0.3 * problem.params.sum(), None)
    free = (d > problem.d_min + 1e-9) & (d < problem.upper - 1e-9)
    kept = problem.params[free] * d[free]
    assert free.sum() >= 3
    assert np.allclose(kept, kept[0], rtol=1e-9)
    assert np.isclose(problem.params @ d, 0.3 * problem.params.sum(), rtol=1e-12)


def test_infeasible_budget_raises() -> None:
    problem = DensityProblem(np.array([1.0, 2.0]), np.array([1.0, 1.0]), d_min=0.5)
    with pytest.raises(InfeasibleBudget):
        closed_form(problem, 1.0, None)


weights = st.lists(st.floats(1.0, 1e6), min_size=2, max_size=12)


@settings(max_examples=60, deadline=None)
@given(params=weights, fractions=st.tuples(st.floats(0.05, 1.0), st.floats(0.05, 1.0)), upper=st.sampled_from([1, 2]))
def test_tighter_budget_never_raises_a_density(params: list[float], fractions: tuple[float, float], upper: int) -> None:
    p = np.array(params)
    problem = DensityProblem(p, p * np.linspace(1, 3, len(p)), d_min=0.01, upper=float(upper))
    tight, loose = sorted(fractions)
    d_tight = closed_form(problem, tight * p.sum(), None)
    d_loose = closed_form(problem, loose * p.sum(), None)
    assert np.all(d_tight <= d_loose * (1 + 1e-9))
    d_tight_macs = closed_form(problem, None, tight * problem.macs.sum())
    d_loose_macs = closed_form(problem, None, loose * problem.macs.sum())
    assert np.all(d_tight_macs <= d_loose_macs * (1 + 1e-9))

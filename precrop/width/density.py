"""The SynExp density program (our reconstruction of PreCrop's objective;
docs/width.md puts it in context).

    maximize  sum_l log d_l
    s.t.      sum_l P_l d_l <= B_P,   sum_l F_l d_l <= B_F   (either or both)
              d_min <= d_l <= u

Under independent per-layer keep probabilities the expected SynFlow objective factorizes into a
constant times prod_l d_l, hence the log-sum objective. Its KKT solution is
d_l = clip(1 / (lam P_l + mu F_l), d_min, u); `closed_form` finds the multipliers by root finding,
`CvxDensitySolver` solves the same program with cvxpy, compiled once with Parameters.

Imports numpy/scipy/cvxpy only, never torch; scipy and cvxpy when a program is solved, so that building
and training a model from a saved plan needs neither (the GPU machine has neither, issue 27).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float64]


class InfeasibleBudget(ValueError):
    """The budget is below what the minimum densities already cost."""


@dataclass(frozen=True)
class DensityProblem:
    """Per-layer prunable params P_l and MACs F_l, and the density bounds."""

    params: Vector
    macs: Vector
    d_min: float = 0.01
    upper: float = 1.0

    def check(self, budget_params: float | None, budget_macs: float | None) -> None:
        """Raise InfeasibleBudget if even d = d_min everywhere breaks a budget."""
        for name, weights, budget in (("params", self.params, budget_params), ("MACs", self.macs, budget_macs)):
            if budget is not None and float(weights.sum()) * self.d_min > budget:
                raise InfeasibleBudget(f"the {name} budget is below the minimum-density cost")


def objective(densities: Vector) -> float:
    """sum_l log d_l (log of the SynExp product, up to a constant)."""
    return float(np.log(densities).sum())


def _densities(problem: DensityProblem, lam: float, mu: float) -> Vector:
    denom = lam * problem.params + mu * problem.macs
    with np.errstate(divide="ignore"):
        raw = np.where(denom > 0, 1.0 / np.maximum(denom, 1e-300), np.inf)
    return np.clip(raw, problem.d_min, problem.upper)


def _multiplier(problem: DensityProblem, weights: Vector, budget: float, lam_fixed: float, mu_side: bool) -> float:
    """The multiplier (on `weights`) that makes weights . d = budget, other multiplier held fixed."""

    def usage(log_m: float) -> float:
        m = math.exp(log_m)
        lam, mu = (lam_fixed, m) if mu_side else (m, lam_fixed)
        return float(weights @ _densities(problem, lam, mu)) - budget

    at_zero = _densities(problem, lam_fixed if mu_side else 0.0, 0.0 if mu_side else lam_fixed)
    if float(weights @ at_zero) <= budget:
        return 0.0
    lo, hi = -60.0, 60.0
    while usage(lo) < 0:
        lo -= 20.0
    while usage(hi) > 0:
        hi += 20.0
    from scipy.optimize import brentq

    return math.exp(brentq(usage, lo, hi, xtol=1e-14, rtol=1e-15, maxiter=500))


def closed_form(problem: DensityProblem, budget_params: float | None, budget_macs: float | None) -> Vector:
    """KKT solution by root finding on the multiplier(s) of the active budget(s)."""
    if budget_params is None and budget_macs is None:
        raise ValueError("give a params budget, a MACs budget or both")
    problem.check(budget_params, budget_macs)
    if budget_macs is None:
        assert budget_params is not None
        return _densities(problem, _multiplier(problem, problem.params, budget_params, 0.0, False), 0.0)
    if budget_params is None:
        return _densities(problem, 0.0, _multiplier(problem, problem.macs, budget_macs, 0.0, True))
    lam_p = _multiplier(problem, problem.params, budget_params, 0.0, False)
    d = _densities(problem, lam_p, 0.0)
    if float(problem.macs @ d) <= budget_macs:
        return d
    mu_f = _multiplier(problem, problem.macs, budget_macs, 0.0, True)
    d = _densities(problem, 0.0, mu_f)
    if float(problem.params @ d) <= budget_params:
        return d

    def macs_excess(log_mu: float) -> float:
        mu = math.exp(log_mu)
        lam = _multiplier(problem, problem.params, budget_params, mu, False)
        return float(problem.macs @ _densities(problem, lam, mu)) - budget_macs

    from scipy.optimize import brentq

    log_mu = brentq(macs_excess, math.log(mu_f) - 60.0, math.log(mu_f), xtol=1e-13, maxiter=500)
    mu = math.exp(log_mu)
    return _densities(problem, _multiplier(problem, problem.params, budget_params, mu, False), mu)


class CvxDensitySolver:
    """The density program in cvxpy, compiled once; `solve` re-solves at new budgets quickly.

    Costs are normalized by their totals so that the conic solver sees O(1) numbers.
    """

    def __init__(self, problem: DensityProblem, use_params: bool, use_macs: bool) -> None:
        if not (use_params or use_macs):
            raise ValueError("use at least one budget")
        import cvxpy as cp

        self.problem = problem
        n = len(problem.params)
        self._d = cp.Variable(n)
        self._budget_p = cp.Parameter(nonneg=True)
        self._budget_f = cp.Parameter(nonneg=True)
        constraints = [self._d >= problem.d_min, self._d <= problem.upper]
        if use_params:
            constraints.append((problem.params / problem.params.sum()) @ self._d <= self._budget_p)
        if use_macs:
            constraints.append((problem.macs / problem.macs.sum()) @ self._d <= self._budget_f)
        self._program = cp.Problem(cp.Maximize(cp.sum(cp.log(self._d))), constraints)
        self.use_params, self.use_macs = use_params, use_macs
        self.status = "unsolved"

    def solve(self, budget_params: float | None, budget_macs: float | None) -> Vector:
        """Densities at the given absolute budgets (None for an unused one)."""
        import cvxpy as cp

        self.problem.check(budget_params, budget_macs)
        if self.use_params:
            assert budget_params is not None
            self._budget_p.value = budget_params / float(self.problem.params.sum())
        if self.use_macs:
            assert budget_macs is not None
            self._budget_f.value = budget_macs / float(self.problem.macs.sum())
        self._program.solve(solver=cp.CLARABEL)
        self.status = str(self._program.status)
        if self._d.value is None or self.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            raise InfeasibleBudget(f"density program status: {self.status}")
        return np.clip(np.asarray(self._d.value, dtype=np.float64), self.problem.d_min, self.problem.upper)

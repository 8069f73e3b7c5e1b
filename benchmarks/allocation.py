"""Allocation speed: cold vs warm (Parameter) cvxpy, closed form, full allocate, a 100-budget sweep.

The competitor, measured in the same run, is the naive way: rebuild and solve a fresh cvxpy
problem (budget as a constant) for every budget. Run: python benchmarks/allocation.py
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import cvxpy as cp
import numpy as np

from precrop.nn.build import layer_table
from precrop.textui import format_table
from precrop.width.allocate import AllocationRequest, SynExpAllocator
from precrop.width.density import CvxDensitySolver, DensityProblem, closed_form, objective
from precrop.width.mapping import density_rows, movable_groups

ARCHS = ["resnet50", "mobilenetv2", "efficientnet_b0", "cifar_resnet56"]


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `fn` in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def naive_solve(problem: DensityProblem, budget: float) -> np.ndarray:
    """Competitor: a fresh cvxpy problem with the budget baked in, compiled and solved from scratch."""
    d = cp.Variable(len(problem.macs))
    weights = problem.macs / problem.macs.sum()
    constraints = [d >= problem.d_min, d <= problem.upper, weights @ d <= budget / problem.macs.sum()]
    cp.Problem(cp.Maximize(cp.sum(cp.log(d))), constraints).solve(solver=cp.CLARABEL)
    return np.asarray(d.value)


def bench(arch: str) -> list[object]:
    """One table row for `arch`."""
    table = layer_table(arch)
    layers, _ = density_rows(table, movable_groups(table, "fit"))
    base = table.base_widths
    problem = DensityProblem(
        np.array([layer.weight_count(base) for layer in layers], float),
        np.array([layer.macs(base) for layer in layers], float),
    )
    total = problem.macs.sum()
    start = time.perf_counter()
    solver = CvxDensitySolver(problem, use_params=False, use_macs=True)
    solver.solve(None, 0.5 * total)
    cold = (time.perf_counter() - start) * 1000
    warm = median_ms(lambda: solver.solve(None, 0.4 * total), 10)
    naive = median_ms(lambda: naive_solve(problem, 0.4 * total), 5)
    closed = median_ms(lambda: closed_form(problem, None, 0.4 * total), 10)
    gap = abs(objective(closed_form(problem, None, 0.4 * total)) - objective(solver.solve(None, 0.4 * total)))
    rel_gap = gap / abs(objective(closed_form(problem, None, 0.4 * total)))
    allocator = SynExpAllocator()
    allocator.allocate(table, AllocationRequest(macs=0.5))
    full = median_ms(lambda: allocator.allocate(table, AllocationRequest(macs=0.45)), 10)
    budgets = np.linspace(0.2, 0.95, 100)
    start = time.perf_counter()
    for b in budgets:
        allocator.allocate(table, AllocationRequest(macs=float(b)))
    sweep = time.perf_counter() - start
    start = time.perf_counter()
    for b in budgets:
        naive_solve(problem, float(b) * total)
    naive_sweep = time.perf_counter() - start
    return [
        arch, len(layers), round(cold, 1), round(warm, 2), round(naive, 1), round(naive / warm, 1),
        round(closed, 2), f"{rel_gap:.1e}", round(full, 1), round(sweep, 2), round(naive_sweep, 2),
    ]  # fmt: skip


def main() -> None:
    """Print the benchmark table."""
    rows = [bench(arch) for arch in ARCHS]
    headers = [
        "arch", "layers", "cvxpy cold ms", "cvxpy warm ms", "naive rebuild ms", "naive/warm",
        "closed form ms", "obj rel gap", "full allocate ms", "100-budget sweep s", "naive density sweep s",
    ]  # fmt: skip
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}")
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()

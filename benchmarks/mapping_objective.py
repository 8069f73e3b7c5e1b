"""Which channel mapping serves SynExp best: the objective of the final *rounded* plan, per model and budget.

For each built-in model, budget and mapping variant, allocate with SynExp and report the rounded plan's
sum_l log d_l minus that of continuous uniform scaling at the same counted cost (the reference every
mapping must beat; positive = better than uniform), and the counted cost as a fraction of the budget.
The competitor measured in the same run is the uniform allocator (one multiplier, rounded and filled).

Run: python benchmarks/mapping_objective.py [--archs a,b] [--variants fit,gp]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence

from precrop.nn.build import layer_table
from precrop.nn.zoo import REGISTRY
from precrop.textui import format_table
from precrop.width.allocate import AllocationRequest, BudgetError, SynExpAllocator, UniformAllocator
from precrop.width.costmodel import LayerTable
from precrop.width.objective import continuous_uniform, synexp_objective
from precrop.width.plan import WidthPlan

BUDGETS = (("macs", 0.5), ("macs", 0.3), ("macs", 0.1), ("params", 0.5), ("params", 0.3))


def gap_over_uniform(table: LayerTable, plan: WidthPlan, metric: str) -> float:
    """The plan's objective minus continuous uniform scaling's at the plan's counted `metric` cost."""
    reference = continuous_uniform(table, metric, getattr(plan.counted, metric))
    return synexp_objective(table, plan.widths) - reference.objective


def cell(table: LayerTable, allocator: str, variant: str, metric: str, budget: float) -> tuple[str, str]:
    """(gap over continuous uniform in nats, counted cost / budget) of one allocation, or a note."""
    request = AllocationRequest(**{metric: budget}, variant=variant)  # type: ignore[arg-type]
    try:
        plan = (SynExpAllocator() if allocator == "synexp" else UniformAllocator()).allocate(table, request)
    except BudgetError:
        return "infeasible", "-"
    fill = getattr(plan.counted, metric) / (budget * getattr(plan.base, metric))
    return f"{gap_over_uniform(table, plan, metric):+.2f}", f"{fill:.3f}"


def run(archs: Sequence[str], variants: Sequence[str]) -> list[list[str]]:
    """One row per (arch, budget): the gap and fill of each variant and of the uniform allocator."""
    rows = []
    for arch in archs:
        table = layer_table(arch)
        for metric, budget in BUDGETS:
            row = [arch, f"{metric} {budget:g}"]
            for variant in variants:
                row.extend(cell(table, "synexp", variant, metric, budget))
            row.extend(cell(table, "uniform", "fit", metric, budget))
            rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Print the table and the machine it ran on."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(REGISTRY.names()))
    parser.add_argument("--variants", default="fit,gp")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    start = time.perf_counter()
    rows = run(args.archs.split(","), variants)
    header = ["arch", "budget"]
    for name in [*variants, "uniform"]:
        header.extend([f"{name} gap", f"{name} fill"])
    print(format_table(header, rows))
    wins = {v: sum(1 for r in rows if _beats(r, 2 + 2 * i)) for i, v in enumerate(variants)}
    print(f"\ncases with a gap > 0 over continuous uniform: {wins} of {len(rows)}")
    print(f"{platform.machine()} {platform.processor() or ''}; {time.perf_counter() - start:.0f} s")


def _beats(row: list[str], column: int) -> bool:
    try:
        return float(row[column]) > 0
    except ValueError:
        return False


if __name__ == "__main__":
    main()

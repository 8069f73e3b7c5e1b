"""`precrop allocate`: solve, print the plan, optionally save it."""

from __future__ import annotations

import argparse

from precrop.allocate import ALLOCATORS, AllocationRequest, BudgetError
from precrop.costmodel import LayerTable
from precrop.fileio import write_atomically
from precrop.inspect import describe
from precrop.plan import WidthPlan
from precrop.textui import format_table


def request_from_args(args: argparse.Namespace) -> AllocationRequest:
    """Turn CLI flags into a request; --scale is the PreConfig name for the MACs budget."""
    macs = args.macs
    if args.scale is not None:
        if macs is not None:
            raise BudgetError("give either --scale or --macs, not both (--scale S means a MACs budget of S)")
        macs = args.scale
    request = AllocationRequest(
        params=args.params, macs=macs, variant=args.variant, divisor=args.divisor,
        min_width=args.min_width, expand=args.expand, density_solver=args.solver,
    )  # fmt: skip
    request.validate()
    return request


def render_plan(plan: WidthPlan, table: LayerTable) -> str:
    """Groups with base and new widths; footer with counted cost fractions and solve time."""
    rows = [
        [g.name, g.width, plan.widths[g.name], round(plan.widths[g.name] / g.width, 3)] for g in table.prunable_groups
    ]
    b, c = plan.base, plan.counted
    asked = ", ".join(f"{k} {v:g}" for k, v in plan.budget.items() if v is not None)
    footer = (
        f"budget: {asked} of base | counted params {c.params:,} ({c.params / b.params:.4f} of base), "
        f"MACs {c.macs:,} ({c.macs / b.macs:.4f} of base) | solve {plan.solve_ms:.1f} ms, {plan.solver_status}"
    )
    return format_table(["group", "base", "new", "ratio"], rows) + "\n\n" + footer


def write_plan_atomically(plan: WidthPlan, path: str) -> None:
    """Write the plan JSON so that `path` never holds a half-written plan."""
    write_atomically(path, plan.to_json(indent=2) + "\n")


def run_allocate(args: argparse.Namespace) -> int:
    """The `precrop allocate` command."""
    request = request_from_args(args)
    table = describe(args.arch, num_classes=args.num_classes, input_size=args.input_size)
    plan = ALLOCATORS[args.allocator]().allocate(table, request)
    if args.output:
        write_plan_atomically(plan, args.output)
    if args.json:
        print(plan.to_json())
    else:
        print(render_plan(plan, table))
        if args.output:
            print(f"plan written to {args.output}")
    return 0

"""`precrop synexp PLAN...`: check plans before training with the measured proxy (precrop/methods/proxy.py).

For each plan: its measured log R/R_dense (mean +- std over the dense initialization's seeds), and what the
two SynExp objectives predict for it, halved to nats of R (each channel mask is counted by its writer and
its reader). By default each plan is followed by uniform width scaling at the same counted cost, measured
the same way: the reference an allocation must beat.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from precrop.cli_args import OneLineErrorParser, positive_int
from precrop.width.plan import WidthPlan, read_plan_file

if TYPE_CHECKING:  # torch: imported when the command runs, not when `precrop` builds its parser
    from precrop.methods.proxy import MeasuredProxy


@dataclass(frozen=True)
class ProxyRow:
    """One scored plan."""

    name: str
    plan: WidthPlan
    measured: MeasuredProxy
    predicted: dict[str, float]  # objective name -> objective / 2

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return {
            "plan": self.name, "arch": self.plan.arch, "allocator": self.plan.allocator,
            "objective": _objective_of(self.plan) or None, "macs_fraction": _fraction(self.plan, "macs"),
            "params_fraction": _fraction(self.plan, "params"), "measured_log_r": list(self.measured.per_seed),
            "measured_mean": self.measured.mean, "measured_std": self.measured.std,
            "predicted_log_r": self.predicted,
        }  # fmt: skip


def add_synexp_command(commands: argparse._SubParsersAction[OneLineErrorParser]) -> None:
    """Register `synexp`."""
    cmd = commands.add_parser("synexp", help="measure plans' SynFlow path score against the dense model (the "
                              "proxy SynExp models), beside uniform scaling at the same cost")  # fmt: skip
    cmd.add_argument("plans", nargs="+", metavar="PLAN", help="plan JSON files (precrop allocate -o ...)")
    cmd.add_argument("--seeds", type=positive_int, default=2, help="dense initializations to average (default 2)")
    cmd.add_argument("--no-uniform", action="store_true", help="do not add uniform scaling at each plan's cost")
    cmd.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")


def run_synexp(args: argparse.Namespace) -> int:
    """Score every plan (and its uniform reference), then print them."""
    seeds = tuple(range(args.seeds))
    rows = []
    for path in args.plans:
        plan = read_plan_file(path)
        rows.append(score(path, plan, seeds))
        if not args.no_uniform and plan.allocator != "uniform":
            rows.append(score(f"  uniform at {Path(path).name}'s cost", uniform_at_cost_of(plan), seeds))
    if args.json:
        for row in rows:
            print(json.dumps(row.to_dict()))
    else:
        print(render_rows(rows, len(seeds)))
    return 0


def score(name: str, plan: WidthPlan, seeds: tuple[int, ...]) -> ProxyRow:
    """Measure `plan` and compute both objectives' predictions for it."""
    from precrop.methods.proxy import measure_plan, plan_table
    from precrop.width.objective import synexp_objective

    table = plan_table(plan)
    predicted = {o: synexp_objective(table, plan.widths, o) / 2 for o in ("layer", "path")}
    return ProxyRow(name, plan, measure_plan(plan, seeds), predicted)


def uniform_at_cost_of(plan: WidthPlan) -> WidthPlan:
    """Uniform width scaling at the counted cost `plan` reached, under the metric(s) it was budgeted by."""
    from precrop.methods.proxy import plan_table
    from precrop.width.allocate import AllocationRequest, UniformAllocator

    table = plan_table(plan)

    def at_cost(metric: str) -> float | None:
        return _fraction(plan, metric) if plan.budget.get(metric) is not None else None

    request = AllocationRequest(params=at_cost("params"), macs=at_cost("macs"),
                                divisor=int(plan.options.get("divisor", 8)),
                                min_width=int(plan.options.get("min_width", 8)))  # fmt: skip
    return UniformAllocator().allocate(table, request)


def render_rows(rows: list[ProxyRow], seeds: int) -> str:
    """The table `precrop synexp` prints (columns sized to their longest entry: long plan and allocator names
    stay whole)."""
    from precrop.textui import format_table

    header = ["plan", "allocator", "objective", "MACs", "params", "measured log R/R_dense", "layer/2", "path/2"]
    body = [
        [row.name, row.plan.allocator, _objective_of(row.plan), f"{_fraction(row.plan, 'macs'):.3f}",
         f"{_fraction(row.plan, 'params'):.3f}", f"{row.measured.mean:.2f} +- {row.measured.std:.2f}",
         f"{row.predicted['layer']:.2f}", f"{row.predicted['path']:.2f}"]
        for row in rows
    ]  # fmt: skip
    legend = (f"measured: SynFlow's log path score of the cropped network minus the dense one's, {seeds} seed(s) "
              "of the dense init (higher keeps more paths); layer/2, path/2: what each SynExp objective "
              "predicts")  # fmt: skip
    return format_table(header, body) + "\n" + legend


def _objective_of(plan: WidthPlan) -> str:
    """The objective a synexp plan maximized; "" for other allocators (their options carry the request's
    default, which they ignore)."""
    return str(plan.options.get("objective", "layer")) if plan.allocator == "synexp" else ""


def _fraction(plan: WidthPlan, metric: str) -> float:
    return float(getattr(plan.counted, metric) / getattr(plan.base, metric))

"""A plan as text: each group's base and new width (width plans) or each layer's kept weights (mask plans)."""

from __future__ import annotations

from precrop.methods.masks import prunable_layers
from precrop.textui import format_table
from precrop.width.costmodel import LayerTable
from precrop.width.plan import WidthPlan


def render_plan(plan: WidthPlan, table: LayerTable) -> str:
    """A width plan's groups (base and new widths), or a mask plan's layers; then a cost footer."""
    if plan.masked:
        return render_mask_plan(plan, table)
    rows = [
        [g.name, g.width, plan.widths[g.name], round(plan.widths[g.name] / g.width, 3)] for g in table.prunable_groups
    ]
    c = plan.counted
    footer = f"counted params {c.params:,} ({_fraction(plan, 'params')}), MACs {c.macs:,} ({_fraction(plan, 'macs')})"
    return format_table(["group", "base", "new", "ratio"], rows) + "\n\n" + _footer(plan, footer)


def render_mask_plan(plan: WidthPlan, table: LayerTable) -> str:
    """Each masked layer's kept and total weights and density; the masked model's theoretical cost."""
    rows = [[name, kept, total, round(kept / total, 4)] for name, kept, total in kept_weights(plan, table)]
    s = plan.effective
    footer = (
        f"{plan.granularity} masks, dense shapes: theoretical params {s.params:,} ({_fraction(plan, 'params')}), "
        f"MACs {s.macs:,} ({_fraction(plan, 'macs')}); measured latency stays the dense model's"
    )
    return format_table(["layer", "kept", "total", "density"], rows) + "\n\n" + _footer(plan, footer)


def kept_weights(plan: WidthPlan, table: LayerTable) -> list[tuple[str, int, int]]:
    """(layer, kept weights, all weights) for every masked layer of a mask plan, in table order."""
    layers = [(x.name, x.weight_count(table.base_widths)) for x in prunable_layers(table)]
    return [(name, round(plan.densities[name] * total), total) for name, total in layers if name in plan.densities]


def _fraction(plan: WidthPlan, metric: str) -> str:
    return f"{getattr(plan.effective, metric) / getattr(plan.base, metric):.4f} of base"


def _footer(plan: WidthPlan, cost: str) -> str:
    asked = ", ".join(f"{k} {v:g}" for k, v in plan.budget.items() if v is not None)
    return f"budget: {asked} of base | {cost} | solve {plan.solve_ms:.1f} ms, {plan.solver_status}"

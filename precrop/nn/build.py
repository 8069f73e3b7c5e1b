"""Build the dense model a WidthPlan describes, re-initialized with its family's own init."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from precrop.nn.surgery import resize_to_widths
from precrop.nn.tracing import trace_layer_table
from precrop.nn.zoo import REGISTRY
from precrop.nn.zoo.inits import init_pytorch_default
from precrop.nn.zoo.sources import source_kind
from precrop.width.allocate import MAX_EXPAND
from precrop.width.costmodel import LayerTable
from precrop.width.plan import PlanError, WidthPlan


def layer_table(
    arch: str, num_classes: int | None = None, input_size: int | None = None, *, verify: bool = False
) -> LayerTable:
    """Trace the dense `arch` (defaults from the registry); `verify` checks it against counted cost.

    A model source (torchvision:, timm:, module:callable) is always verified: an architecture the tracer
    cannot describe exactly is refused here (TracingError, one line) instead of yielding a wrong plan.
    """
    spec = REGISTRY.get(arch)
    classes = num_classes or spec.num_classes
    verify = verify or source_kind(arch) is not None
    return trace_layer_table(spec.build(classes), arch, input_size or spec.input_size, classes, verify=verify)


# PreConfig grows groups by a few x at most; a plan asking for more is corrupt (or a memory bomb)
MAX_WIDTH_RATIO = MAX_EXPAND  # the widest an allocation may grow a group


def check_plan_widths(plan: WidthPlan, base: Mapping[str, int]) -> None:
    """A plan's widths must be buildable: no group wider than MAX_WIDTH_RATIO x its base width."""
    for group, width in plan.widths.items():
        if width > MAX_WIDTH_RATIO * base[group]:
            raise PlanError(
                f"plan width of {group} is {width}, more than {MAX_WIDTH_RATIO}x its base width {base[group]}"
            )


def build_from_plan(plan: WidthPlan, seed: int | None = None) -> nn.Module:
    """A plain dense nn.Module at the plan's widths, freshly initialized as the family would.

    Raises PlanError when the plan's groups do not match the architecture's.
    """
    spec = REGISTRY.get(plan.arch)
    model = spec.build(plan.num_classes)
    table = trace_layer_table(model, plan.arch, plan.input_shape[1], plan.num_classes, verify=False)
    expected = set(table.base_widths)
    if set(plan.widths) != expected:
        missing = sorted(expected - set(plan.widths))[:3]
        extra = sorted(set(plan.widths) - expected)[:3]
        raise PlanError(f"plan does not match {plan.arch}: missing groups {missing}, unknown groups {extra}")
    check_plan_widths(plan, table.base_widths)
    try:
        resize_to_widths(model, table, dict(plan.widths))
    except ValueError as exc:
        raise PlanError(f"plan widths are not valid for {plan.arch}: {exc}") from exc
    if seed is not None:
        torch.manual_seed(seed)
    (spec.init or init_pytorch_default)(model)
    return model

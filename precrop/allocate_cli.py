"""`precrop allocate`: run any registered method, print the plan, optionally save it.

Width methods print each group's base and new width; mask methods (dense shapes, zeroed weights) print
each layer's kept weights and the theoretical cost. Mask methods and the data-driven ones score the
seeded dense model, built here as a search trial builds it. Training batches come from the caller
(`trainers.allocate_cli` loads a data set); without them a data-driven method is a one-line error.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from precrop.errors import UserError
from precrop.fileio import write_atomically
from precrop.inspect import describe
from precrop.methods.plan_report import render_plan
from precrop.width.allocate import AllocationRequest, BudgetError, dense_plan
from precrop.width.costmodel import LayerTable
from precrop.width.plan import WidthPlan

if TYPE_CHECKING:
    import torch

    from precrop.methods.base import MaskResult

    Batches = tuple[tuple[torch.Tensor, torch.Tensor], ...]
    BatchSource = Callable[[int], Batches]


def request_from_args(args: argparse.Namespace) -> AllocationRequest:
    """Turn CLI flags into a request; --scale is the PreConfig name for the MACs budget."""
    macs = args.macs
    if args.scale is not None:
        if macs is not None:
            raise BudgetError("give either --scale or --macs, not both (--scale S means a MACs budget of S)")
        macs = args.scale
    request = AllocationRequest(
        params=args.params, macs=macs, variant=args.variant, divisor=args.divisor,
        min_width=args.min_width, expand=args.expand, density_solver=args.solver, objective=args.objective,
        keep=tuple(args.keep or ()),
    )  # fmt: skip
    request.validate()
    return request


def write_plan_atomically(plan: WidthPlan, path: str) -> None:
    """Write the plan JSON so that `path` never holds a half-written plan."""
    write_atomically(path, plan.to_json(indent=2) + "\n")


def allocate(
    name: str, table: LayerTable, request: AllocationRequest, seed: int, batches: BatchSource | None
) -> MaskResult:
    """Run method `name` as a search trial does: mask and data-driven methods score the seeded dense model.

    `batches(seed)` gives the training batches data-driven methods score; None when there is no data.
    """
    from precrop.methods.registry import check_feasible, method, realize

    spec = method(name)
    if not spec.needs_model:
        return realize(name, table, request, None)
    if spec.needs_data and batches is None:
        raise UserError(
            f"{name} scores the model on training batches, and `python -m precrop.cli` loads no data: "
            f"run the installed `precrop allocate ... --allocator {name} --dataset D`"
        )
    check_feasible(name, table, request)
    from precrop.methods.base import Probe
    from precrop.nn.build import build_from_plan

    dense = build_from_plan(dense_plan(table), seed=seed)
    probe_batches = batches(seed) if (spec.needs_data and batches is not None) else ()
    return realize(name, table, request, Probe(dense, probe_batches, seed))


# What the CIFAR MobileNetV2 study measured (docs/results.md section 2, issue 27): shown with every SynExp plan of
# a network with depthwise convs, so that a user compares before training one
DEPTHWISE_NOTE = (
    "note: {arch} has depthwise convs; on MobileNetV2 uniform scaling trained as well as or better than SynExp at "
    "equal MACs (docs/results.md, section 2): compare with --allocator uniform"
)


def depthwise_note(plan: WidthPlan, table: LayerTable) -> str | None:
    """The note above for a SynExp plan of a network with depthwise convs; None otherwise."""
    if plan.allocator != "synexp" or not any(layer.depthwise for layer in table.layers):
        return None
    return DEPTHWISE_NOTE.format(arch=plan.arch)


def run_allocate(args: argparse.Namespace, batches: BatchSource | None = None) -> int:
    """The `precrop allocate` command; `batches(seed)` supplies training batches for data-driven methods."""
    request = request_from_args(args)
    table = describe(args.arch, num_classes=args.num_classes, input_size=args.input_size)
    plan = allocate(args.allocator, table, request, args.seed, batches).plan
    if args.output:
        write_plan_atomically(plan, args.output)
    if args.json:
        print(plan.to_json())
    else:
        print(render_plan(plan, table))
        if plan.masked:
            print(f"masks drawn on the dense model initialized with seed {args.seed}")
        if args.output:
            print(f"plan written to {args.output}")
        if note := depthwise_note(plan, table):
            print(note)
    return 0

"""Every pruning method of the search space, by name: width allocators and mask methods.

Width allocators return a WidthPlan of narrower channel widths (the model is then built at those widths
and trained from scratch). Mask methods keep the dense widths and return boolean weight masks computed
on the very model that will be trained, so they need it (and some need training batches): `realize`
takes a Probe for those. `precrop.width.allocate.ALLOCATORS` stays the torch-free subset (synexp, uniform).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from precrop.methods.channel_rank import PfsAllocator, PruneNetAllocator
from precrop.methods.density_masks import ErkPruner, RandomPruner, SynExpFilterPruner, SynExpWeightPruner
from precrop.methods.masks import MaskResult, Probe, check_mask_request
from precrop.methods.saliency import GraspPruner, SnipPruner, SynFlowPruner
from precrop.width.allocate import (
    AllocationRequest,
    BudgetError,
    SynExpAllocator,
    UniformAllocator,
    budgets_and_bounds,
    require_floor_fits,
)
from precrop.width.costmodel import LayerTable


@dataclass(frozen=True)
class Method:
    """A registered method: its factory, whether it yields masks, and what it needs to look at."""

    name: str
    factory: Any
    masks: bool
    needs_model: bool
    needs_data: bool
    summary: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("synexp", SynExpAllocator, False, False, False, "PreCrop/PreConfig: SynExp widths (convex)"),
        Method("uniform", UniformAllocator, False, False, False, "one width multiplier for every group"),
        Method("pfs", PfsAllocator, False, True, True, "Pruning from Scratch: BN gates on random weights"),
        Method("prunenet", PruneNetAllocator, False, True, True, "global Taylor channel importance (reconstruction)"),
        Method("synflow", SynFlowPruner, True, True, False, "iterative SynFlow, 100 rounds, weight masks"),
        Method("snip", SnipPruner, True, True, True, "SNIP connection sensitivity, weight masks"),
        Method("grasp", GraspPruner, True, True, True, "GraSP gradient-signal preservation, weight masks"),
        Method("random", RandomPruner, True, True, False, "random weight masks, equal density per layer"),
        Method("erk", ErkPruner, True, True, False, "random weight masks at Erdos-Renyi-Kernel densities"),
        Method("synexp_weight", SynExpWeightPruner, True, True, False, "SynExp densities as random weight masks"),
        Method("synexp_filter", SynExpFilterPruner, True, True, False, "SynExp densities as random filter masks"),
    )
}
WIDTH_METHODS = tuple(name for name, m in METHODS.items() if not m.masks)
MASK_METHODS = tuple(name for name, m in METHODS.items() if m.masks)


def method(name: str) -> Method:
    """The registered method `name`; BudgetError lists the known ones otherwise."""
    if name not in METHODS:
        raise BudgetError(f"unknown allocator {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def realize(name: str, table: LayerTable, request: AllocationRequest, probe: Probe | None) -> MaskResult:
    """Run method `name`: a width plan (masks empty) or a mask plan with its masks.

    `probe` must be given for methods that need a model (every mask method: the masks belong to the
    probe's model, which is the one to train) and is ignored by synexp and uniform.
    """
    spec = method(name)
    if spec.needs_model and probe is None:
        raise BudgetError(f"{name} needs a probe: the seeded dense model (and training batches)")
    if spec.needs_data and probe is not None and not probe.batches:
        raise BudgetError(f"{name} needs training batches to score the model")
    if probe is None or not spec.needs_model:
        return MaskResult(spec.factory().allocate(table, request), {})
    if spec.masks:
        result: MaskResult = spec.factory().prune(table, request, probe)
        return result
    return MaskResult(spec.factory().allocate(table, request, probe), {})


def check_feasible(name: str, table: LayerTable, request: AllocationRequest) -> None:
    """BudgetError when method `name` cannot meet `request` on `table`, without running the costly part.

    synexp and uniform allocate outright; mask methods check that one weight per layer fits; pfs and
    prunenet check that the narrowest allowed widths fit.
    """
    spec = method(name)
    if spec.masks:
        check_mask_request(table, request)
    elif spec.needs_model:
        request.validate()
        budgets, bounds = budgets_and_bounds(table, request)
        require_floor_fits(table, request, budgets, bounds)
    else:
        spec.factory().allocate(table, request)

"""The one registry of pruning methods, by name: width methods and mask methods (base.py's Protocols).

Width methods (synexp, uniform, pfs, prunenet) return a WidthPlan of narrower channel widths (the model
is then built at those widths and trained from scratch). Mask methods keep the dense widths and return
boolean weight masks computed on the very model that will be trained, so they need it (and some need
training batches): `realize` takes a Probe for those. Every list of methods (`METHODS` in display order,
`WIDTH_METHODS`, `MASK_METHODS`, the CLI's `--allocator` choices, the search space's methods) comes from
this table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from precrop.methods.base import MaskMethod, MaskResult, Probe, WidthMethod
from precrop.width.allocate import (
    AllocationRequest,
    BudgetError,
    SynExpAllocator,
    UniformAllocator,
    budgets_and_bounds,
    require_floor_fits,
)
from precrop.width.costmodel import LayerTable
from precrop.width.keep import with_kept


@dataclass(frozen=True)
class _Registered:
    """What every registered method declares: its name, what it needs to look at, and a one-line summary."""

    name: str
    needs_model: bool
    needs_data: bool
    summary: str


@dataclass(frozen=True)
class WidthSpec(_Registered):
    """A registered width method and its factory."""

    factory: Callable[[], WidthMethod]
    masks: ClassVar[bool] = False


@dataclass(frozen=True)
class MaskSpec(_Registered):
    """A registered mask method and its factory (`realize` gives every one the probe its masks belong to)."""

    factory: Callable[[], MaskMethod]
    masks: ClassVar[bool] = True


Method = WidthSpec | MaskSpec


def _lazy(module: str, name: str) -> Callable[[], Any]:
    """A factory that imports `precrop.methods.<module>` only when a method is made.

    Every command's argument parser reads this table (the --allocator choices), and a parser must answer
    `--help` or a bad argument without importing torch: the torch methods are imported on first use.
    """

    def make() -> Any:
        return getattr(importlib.import_module(f"precrop.methods.{module}"), name)()

    return make


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        WidthSpec("synexp", False, False, "PreCrop/PreConfig: SynExp widths (convex)", SynExpAllocator),
        WidthSpec("uniform", False, False, "one width multiplier for every group", UniformAllocator),
        WidthSpec("pfs", True, True, "Pruning from Scratch: BN gates on random weights",
                  _lazy("channel_rank", "PfsAllocator")),
        WidthSpec("prunenet", True, True, "global Taylor channel importance (reconstruction)",
                  _lazy("prunenet", "PruneNetAllocator")),
        MaskSpec("synflow", True, False, "iterative SynFlow, 100 rounds, weight masks",
                 _lazy("saliency", "SynFlowPruner")),
        MaskSpec("snip", True, True, "SNIP connection sensitivity, weight masks", _lazy("saliency", "SnipPruner")),
        MaskSpec("grasp", True, True, "GraSP gradient-signal preservation, weight masks",
                 _lazy("saliency", "GraspPruner")),
        MaskSpec("random", True, False, "random weight masks, equal density per layer",
                 _lazy("density_masks", "RandomPruner")),
        MaskSpec("erk", True, False, "random weight masks at Erdos-Renyi-Kernel densities",
                 _lazy("density_masks", "ErkPruner")),
        MaskSpec("synexp_weight", True, False, "SynExp densities as random weight masks",
                 _lazy("density_masks", "SynExpWeightPruner")),
        MaskSpec("synexp_filter", True, False, "SynExp densities as random filter masks",
                 _lazy("density_masks", "SynExpFilterPruner")),
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
    if isinstance(spec, MaskSpec):
        _refuse_keep(spec, request)
        return spec.factory().prune(table, request, _checked_probe(spec, probe))
    given = _checked_probe(spec, probe) if spec.needs_model else None
    return MaskResult(spec.factory().allocate(table, request, given), {})


def _refuse_keep(spec: MaskSpec, request: AllocationRequest) -> None:
    """Mask methods keep every width and mask weights layer by layer: `keep` (widths at base) means nothing
    to them, so it is refused rather than silently ignored."""
    if request.keep:
        raise BudgetError(f"{spec.name} masks weights and keeps every width: keep applies to the width methods "
                          f"({', '.join(WIDTH_METHODS)})", field="keep")  # fmt: skip


def _checked_probe(spec: Method, probe: Probe | None) -> Probe:
    """`probe`; BudgetError when there is none, or when `spec` scores training batches and it has none."""
    if probe is None:
        raise BudgetError(f"{spec.name} needs a probe: the seeded dense model (and training batches)")
    if spec.needs_data and not probe.batches:
        raise BudgetError(f"{spec.name} needs training batches to score the model")
    return probe


def check_feasible(name: str, table: LayerTable, request: AllocationRequest) -> None:
    """BudgetError when method `name` cannot meet `request` on `table`, without running the costly part.

    synexp and uniform allocate outright; mask methods check that one weight per layer fits; pfs and
    prunenet check that the narrowest allowed widths fit.
    """
    spec = method(name)
    if isinstance(spec, MaskSpec):
        from precrop.methods.masks import check_mask_request

        _refuse_keep(spec, request)
        check_mask_request(table, request)
    elif spec.needs_model:
        request.validate()
        table = with_kept(table, request.keep)
        budgets, bounds = budgets_and_bounds(table, request)
        require_floor_fits(table, request, budgets, bounds)
    else:
        spec.factory().allocate(table, request)

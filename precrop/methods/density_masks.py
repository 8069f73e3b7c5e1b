"""Mask methods defined by a per-layer density vector: random, ERK, and SynExp's own densities.

`random` keeps the same fraction of every layer, `erk` (Erdos-Renyi-Kernel, Evci et al. 2020) keeps
more of small layers, each scaled to meet the budget. `synexp_weight` and `synexp_filter` take the
per-layer densities of PreCrop's channel plan (`synexp`) and realize them with random weights or random
whole filters: with `synexp` (channels) they form the granularity study, one density vector three
ways. Which weights or filters are kept is random (seeded); only the densities carry information,
which is SynExp's claim.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import torch

from precrop.methods.base import MaskResult, Masks, Probe
from precrop.methods.masks import (
    WEIGHT_BUDGET_SLACK,
    check_mask_request,
    kept_weight_cost,
    masked_plan,
    prunable_layers,
)
from precrop.width.allocate import AllocationRequest, BudgetError, SynExpAllocator
from precrop.width.budget import largest_fitting, over_budget
from precrop.width.costmodel import Layer, LayerTable

BISECTION_STEPS = 60


def scaled_densities(
    table: LayerTable, budgets: Mapping[str, float], shape: Callable[[Layer], float]
) -> dict[str, float]:
    """Densities min(1, s x shape(layer)) with the largest scale s whose exact counts meet the budgets."""
    layers = prunable_layers(table)
    widths = table.base_widths

    def counts_at(scale: float) -> dict[str, int]:
        return {x.name: _floor_count(min(1.0, scale * shape(x)), x.weight_count(widths)) for x in layers}

    def scale_fits(scale: float) -> bool:
        return _weights_fit(table, counts_at(scale), budgets)

    scale = largest_fitting(scale_fits, 0.0, 1.0 / min(shape(x) for x in layers), BISECTION_STEPS)
    return {name: count / layer.weight_count(widths)
            for (name, count), layer in zip(counts_at(scale).items(), layers, strict=True)}  # fmt: skip


def _weights_fit(table: LayerTable, counts: Mapping[str, int], budgets: Mapping[str, float]) -> bool:
    """Whether kept weights `counts` cost at most `budgets` (weight-only budgets, as masks.weight_budgets)."""
    return not over_budget(kept_weight_cost(table, counts), budgets, slack=WEIGHT_BUDGET_SLACK)


def _floor_count(density: float, size: int) -> int:
    return max(1, min(size, math.floor(density * size)))


def erk_shape(layer: Layer, widths: Mapping[str, int]) -> float:
    """ERK's raw density: (n_in + n_out + kh + kw) / (n_in * n_out * kh * kw); no kernel terms for linear."""
    n_out = widths[layer.out_group]
    n_in = layer.weight_count(widths) // max(1, n_out * layer.kernel_area)
    if layer.kind == "linear":
        return (n_in + n_out) / (n_in * n_out)
    kh, kw = layer.kernel
    return (n_in + n_out + kh + kw) / (n_in * n_out * kh * kw)


def synexp_layer_densities(table: LayerTable, request: AllocationRequest) -> dict[str, float]:
    """The per-layer densities PreCrop's channel plan for `request` realizes: kept / base weights.

    The granularity study compares one density vector realized as weights, filters and channels.
    Channels are the most constrained realization (a layer's density is r_in x r_out, widths are
    multiples of the divisor), so the vector is the one the rounded channel plan actually has; the
    weight and filter arms then realize that same vector. (Feeding them the density program's optimum
    instead would compare three different vectors: on ResNet-20 at 0.3 MACs, sum log d was -21.8,
    -22.2 and -23.7 for the weight, filter and channel arms that way.)
    """
    plan = SynExpAllocator().allocate(table, request)
    base = table.base_widths
    return {x.name: x.weight_count(plan.widths) / x.weight_count(base) for x in prunable_layers(table)}


def random_weight_masks(table: LayerTable, densities: Mapping[str, float], seed: int) -> Masks:
    """Per layer, exactly floor(d x size) (at least one) weights kept, chosen uniformly at random."""
    generator = torch.Generator().manual_seed(seed)
    masks: Masks = {}
    for layer in prunable_layers(table):
        shape = _weight_shape(layer, table.base_widths)
        size = math.prod(shape)
        keep = torch.zeros(size, dtype=torch.bool)
        keep[torch.randperm(size, generator=generator)[: _floor_count(densities[layer.name], size)]] = True
        masks[layer.name] = keep.reshape(shape)
    return masks


def random_filter_masks(table: LayerTable, densities: Mapping[str, float], seed: int,
                        budgets: Mapping[str, float]) -> Masks:  # fmt: skip
    """Per layer, round(d x filters) whole output filters kept at random; then filters are dropped from
    the layers furthest above their density until the budgets hold (so the budget is never exceeded)."""
    generator = torch.Generator().manual_seed(seed)
    layers = prunable_layers(table)
    widths = table.base_widths
    filters = {x.name: _weight_shape(x, widths)[0] for x in layers}
    kept = {x.name: max(1, min(filters[x.name], round(densities[x.name] * filters[x.name]))) for x in layers}
    per_filter = {x.name: x.weight_count(widths) // filters[x.name] for x in layers}

    def counts() -> dict[str, int]:
        return {name: kept[name] * per_filter[name] for name in kept}

    while not _weights_fit(table, counts(), budgets):
        candidates = [n for n in kept if kept[n] > 1]
        if not candidates:
            raise BudgetError("the budget is below one filter per layer")
        worst = max(candidates, key=lambda n: kept[n] / filters[n] - densities[n])
        kept[worst] -= 1
    masks: Masks = {}
    for layer in layers:
        shape = _weight_shape(layer, widths)
        rows = torch.zeros(shape[0], dtype=torch.bool)
        rows[torch.randperm(shape[0], generator=generator)[: kept[layer.name]]] = True
        masks[layer.name] = rows.reshape(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
    return masks


def _weight_shape(layer: Layer, widths: Mapping[str, int]) -> tuple[int, ...]:
    """Shape of the layer's weight tensor at `widths` (out, in/groups, kh, kw) or (out, in)."""
    n_out = widths[layer.out_group]
    if layer.kind == "linear":
        return (n_out, layer.weight_count(widths) // n_out)
    return (n_out, layer.weight_count(widths) // (n_out * layer.kernel_area), *layer.kernel)


class _ScaledDensityPruner:
    """Random weights kept at densities min(1, s x shape(layer)), the scale s fitted to the budget."""

    name = ""

    def shape(self, table: LayerTable) -> Callable[[Layer], float]:
        """The per-layer density shape this method scales."""
        raise NotImplementedError

    def prune(self, table: LayerTable, request: AllocationRequest, probe: Probe) -> MaskResult:
        """Masks for `request` on `table`; the probe supplies only the seed."""
        started = time.perf_counter()
        budgets = check_mask_request(table, request)
        densities = scaled_densities(table, budgets, self.shape(table))
        return masked_plan(table, request, self.name, random_weight_masks(table, densities, probe.seed), "weight",
                           started, "bisection")  # fmt: skip


class RandomPruner(_ScaledDensityPruner):
    """`random`: the same density in every layer (scaled to the budget), random weights kept."""

    name = "random"

    def shape(self, table: LayerTable) -> Callable[[Layer], float]:
        """Every layer alike."""
        return lambda layer: 1.0


class ErkPruner(_ScaledDensityPruner):
    """`erk`: Erdos-Renyi-Kernel densities scaled to the budget, random weights kept."""

    name = "erk"

    def shape(self, table: LayerTable) -> Callable[[Layer], float]:
        """ERK's raw density at the base widths."""
        widths = table.base_widths
        return lambda layer: erk_shape(layer, widths)


class SynExpWeightPruner:
    """`synexp_weight`: SynExp's layer densities realized as random unstructured masks."""

    name = "synexp_weight"

    def prune(self, table: LayerTable, request: AllocationRequest, probe: Probe) -> MaskResult:
        """Masks for `request` on `table`; the probe supplies only the seed."""
        started = time.perf_counter()
        check_mask_request(table, request)
        masks = random_weight_masks(table, synexp_layer_densities(table, request), probe.seed)
        return masked_plan(table, request, self.name, masks, "weight", started, "optimal")


class SynExpFilterPruner:
    """`synexp_filter`: SynExp's layer densities realized as random whole-filter masks."""

    name = "synexp_filter"

    def prune(self, table: LayerTable, request: AllocationRequest, probe: Probe) -> MaskResult:
        """Masks for `request` on `table`; the probe supplies only the seed."""
        started = time.perf_counter()
        budgets = check_mask_request(table, request)
        masks = random_filter_masks(table, synexp_layer_densities(table, request), probe.seed, budgets)
        return masked_plan(table, request, self.name, masks, "filter", started, "optimal")

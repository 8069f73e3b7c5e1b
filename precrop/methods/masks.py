"""Unstructured (weight) and filter masks on a dense model: cost, selection, application.

Mask methods keep every layer's dense shape and zero weights. What they cost in theory is the dense
cost minus what the zeroed weights would have cost (one parameter, `positions` MACs each), which is
what `masked_cost` computes from the layer table; their measured latency stays the dense one.

The prunable weights are the `weight` tensors of every conv and linear layer of the table (the first
conv and the classifier included, as SynFlow and SNIP do). Biases and norms are never masked.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from precrop.errors import UserError
from precrop.methods.base import MaskResult, Masks
from precrop.width.allocate import AllocationRequest, BudgetError, allocated_plan
from precrop.width.budget import over_budget
from precrop.width.costmodel import Cost, Layer, LayerTable
from precrop.width.plan import WidthPlan

# Weight budgets are float differences of large counts (masks.weight_budgets): a kept weight cost may
# exceed one by this relative amount, its rounding, and still meet it.
WEIGHT_BUDGET_SLACK = 1e-12


def prunable_layers(table: LayerTable) -> list[Layer]:
    """The conv/linear layers whose weights masks may zero, in table order."""
    return [layer for layer in table.layers if layer.kind != "channel_pad" and layer.weight_count(table.base_widths)]


def full_weight_cost(table: LayerTable) -> dict[str, float]:
    """Cost of all prunable weights: params (one each) and MACs (`positions` each)."""
    layers = prunable_layers(table)
    widths = table.base_widths
    return {
        "params": float(sum(x.weight_count(widths) for x in layers)),
        "macs": float(sum(x.macs(widths) for x in layers)),
    }


def weight_budgets(table: LayerTable, request: AllocationRequest) -> dict[str, float]:
    """Per budgeted metric, what the kept weights may cost (the budget minus biases, norms, fixed parts)."""
    base = table.cost()
    weight_cost = full_weight_cost(table)
    return {m: budget - (getattr(base, m) - weight_cost[m]) for m, budget in request.absolute_budgets(base).items()}


def kept_weight_cost(table: LayerTable, kept: Mapping[str, int]) -> Cost:
    """Cost of the `kept[layer]` weights of every prunable layer alone: what `weight_budgets` bound."""
    layers = prunable_layers(table)
    return Cost(params=sum(kept[x.name] for x in layers), macs=sum(kept[x.name] * x.positions for x in layers))


def masked_cost(table: LayerTable, kept: Mapping[str, int]) -> Cost:
    """Theoretical cost of the dense model with only `kept[layer]` weights left in each layer."""
    base = table.cost()
    widths = table.base_widths
    params, macs = base.params, base.macs
    for layer in prunable_layers(table):
        pruned = layer.weight_count(widths) - kept.get(layer.name, layer.weight_count(widths))
        params -= pruned
        macs -= pruned * layer.positions
    return Cost(params=params, macs=macs)


def check_mask_request(table: LayerTable, request: AllocationRequest) -> dict[str, float]:
    """Validate a mask method's request; return its weight budgets (BudgetError when unreachable)."""
    request.validate()
    if request.expand != 1.0:
        raise BudgetError("mask methods only prune: expand (PreConfig) must be 1")
    floor = masked_cost(table, {layer.name: 1 for layer in prunable_layers(table)})
    exceeded = over_budget(floor, request.absolute_budgets(table.cost()))
    if exceeded:
        raise BudgetError(f"{exceeded[0]} budget {getattr(request, exceeded[0])} leaves no weight in some layer")
    return weight_budgets(table, request)


class ScoreCollapse(UserError):
    """A pruning score that is exactly zero over a whole layer (or channel group), or not finite.

    Ranking such scores would break ties by layer order and silently empty the layer (a dead network).
    """


def check_scores(method: str, scores: Mapping[str, torch.Tensor | np.ndarray], cause: str, unit: str = "layer") -> None:
    """Raise ScoreCollapse naming `method`, the `unit`s whose scores are all zero or not finite, and `cause`."""
    tensors = {name: torch.as_tensor(values) for name, values in scores.items()}
    bad = [name for name, t in tensors.items() if not bool(torch.isfinite(t).all())]
    zero = [name for name, t in tensors.items() if name not in bad and not bool(t.any())]
    found = (("not finite", bad), ("all zero", zero))
    problems = [f"{what} in {_named(names, unit)}" for what, names in found if names]
    if problems:
        raise ScoreCollapse(f"{method} scores are {'; '.join(problems)} of {len(scores)} {unit}s: {cause}")


def _named(names: list[str], unit: str, shown: int = 4) -> str:
    """'3 layers (a, b, c)': the first `shown` names and a count of the rest."""
    listed = ", ".join(names[:shown]) + (f", ... {len(names) - shown} more" if len(names) > shown else "")
    return f"{len(names)} {unit}{'s' if len(names) > 1 else ''} ({listed})"


def select_global(table: LayerTable, scores: Mapping[str, torch.Tensor], budgets: Mapping[str, float]) -> Masks:
    """Keep the highest-scored weights, over all layers at once, while every budget still holds.

    Each weight costs 1 parameter and its layer's `positions` MACs, so a params budget keeps an exact
    count (one global threshold) and a MACs budget fills in score order. Each layer's best weight is
    always kept, so no layer is ever emptied. Ties break by layer order, then position.
    """
    layers = prunable_layers(table)
    flat = [scores[layer.name].detach().to(torch.float64).flatten().cpu().numpy() for layer in layers]
    sizes = [len(f) for f in flat]
    if any(size == 0 for size in sizes):
        raise ValueError("a prunable layer has no weights")
    priority = np.concatenate([_with_best_first(f) for f in flat])
    positions = [float(x.positions) for x in layers]
    costs = {
        "params": np.concatenate([np.ones(n) for n in sizes]),
        "macs": np.concatenate([np.full(n, p) for n, p in zip(sizes, positions, strict=True)]),
    }
    order = np.argsort(-priority, kind="stable")
    keep_count = len(order)
    for metric, budget in budgets.items():
        spent = np.cumsum(costs[metric][order])
        keep_count = min(keep_count, int(np.searchsorted(spent, budget * (1 + WEIGHT_BUDGET_SLACK), side="right")))
    kept = np.zeros(len(order), dtype=bool)
    kept[order[:keep_count]] = True
    masks: Masks = {}
    start = 0
    for layer, size in zip(layers, sizes, strict=True):
        shape = scores[layer.name].shape
        masks[layer.name] = torch.from_numpy(kept[start : start + size].copy()).reshape(shape)
        start += size
    return masks


def _with_best_first(values: np.ndarray) -> np.ndarray:
    """`values` with its (first) maximum raised to +inf: the weight a layer always keeps."""
    out = np.nan_to_num(values.astype(np.float64), nan=-np.inf)
    out[int(np.argmax(out))] = np.inf
    return out


def kept_counts(masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Kept weights per layer."""
    return {name: int(mask.sum()) for name, mask in masks.items()}


def mask_densities(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Kept fraction of every layer's weights."""
    return {name: int(mask.sum()) / mask.numel() for name, mask in masks.items()}


def masked_plan(
    table: LayerTable,
    request: AllocationRequest,
    method: str,
    masks: Masks,
    granularity: str,
    started: float,
    status: str = "masked",
) -> MaskResult:
    """The MaskResult of a mask method: dense widths, the masks' densities and their theoretical cost."""
    plan = allocated_plan(table, request, method, {}, table.cost(), status, started)
    sparse = masked_cost(table, kept_counts(masks))
    fields = {**plan.__dict__, "granularity": granularity, "densities": mask_densities(masks), "sparse": sparse}
    return MaskResult(WidthPlan(**fields), masks)


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> list[torch.utils.hooks.RemovableHandle]:
    """Zero the masked weights and keep them zero through training.

    A gradient hook multiplies each weight's gradient by its mask, so masked weights get zero gradient,
    zero momentum and (being zero) zero weight decay: SGD, Nesterov and Adam all leave them at exactly
    zero. Parameter names and the state_dict stay those of the plain dense model.
    """
    handles = []
    for name, mask in masks.items():
        weight = _weight(model, name)
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, weight {tuple(weight.shape)}")
        keep = mask.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            weight.mul_(keep)
        handles.append(weight.register_hook(lambda grad, keep=keep: grad * keep.to(grad.device)))
    return handles


def layer_weights(model: nn.Module, table: LayerTable) -> dict[str, torch.Tensor]:
    """The weight tensor of every prunable layer, by layer name."""
    return {layer.name: _weight(model, layer.name) for layer in prunable_layers(table)}


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    weight = model.get_submodule(name).weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"layer {name} has no weight tensor")
    return weight

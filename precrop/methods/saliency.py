"""Saliency-based unstructured pruning at initialization: SynFlow, SNIP and GraSP.

Every method scores each prunable weight (the `weight` of every conv and linear layer of the table),
where a higher score means "keep", and fills the weight budgets with one global ranking
(`masks.select_global`). The probe model is never modified: scores are computed on deep copies.

- SynFlow (Tanaka et al. 2020): data-free. On a copy whose parameters and floating buffers are made
  non-negative (float64, BN in eval mode) and whose activations are linear (`linearize`), R is the sum
  of the outputs for one all-ones input and a weight scores |theta * dR/dtheta|. Pruning is iterative:
  the kept cost shrinks exponentially from the full weight cost to the budget over `rounds` rounds,
  rescoring the masked network each round.
- SNIP (Lee et al. 2019): one shot, |theta * dL/dtheta| with the loss gradient over the probe batches.
- GraSP (Wang et al. 2020): one shot. With g the gradient of the loss (logits divided by a
  temperature) and H its Hessian with respect to the weights, GraSP removes the weights of highest
  -theta * (H g); the keep priority is therefore +theta * (H g).

Scores that are all zero over a layer, or not finite, raise ScoreCollapse (`masks.check_scores`)
rather than letting the global ranking silently empty that layer.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from precrop.methods.base import MaskResult, Masks, Probe
from precrop.methods.masks import (
    check_mask_request,
    check_scores,
    full_weight_cost,
    layer_weights,
    masked_plan,
    prunable_layers,
    select_global,
)
from precrop.nn.tracing import GATES
from precrop.width.allocate import AllocationRequest
from precrop.width.costmodel import INPUT_GROUP, LayerTable

Scores = dict[str, torch.Tensor]
Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]

SYNFLOW_ROUNDS = 100
GRASP_TEMPERATURE = 200.0

SYNFLOW_CAUSE = (
    "no positive path from the input through these layers to the output in the linearized copy; likely an "
    "activation or gate that saturates on positive inputs and is called as a function (not a module), "
    "a normalization that re-centres (LayerNorm, GroupNorm), or a layer whose weights are all zero"
)
SYNFLOW_LATE_CAUSE = "earlier rounds pruned every path from the input to the output; the budget is too small"
DATA_CAUSE = (
    "the loss does not depend on these layers' weights on the probe batches; likely saturated or dead "
    "activations, weights that are all zero, or a loss that is not finite"
)


# ----- SynFlow --------------------------------------------------------------------------------------
# On SynFlow's all-positive input these activations saturate (ReLU6, hard-tanh at their cap: zero
# gradient) or are not linear: the scoring copy replaces them with the identity. ReLU and its leaky
# variants are already the identity on non-negative inputs and stay.
LINEARIZED: tuple[type[nn.Module], ...] = (
    nn.Hardtanh, nn.Hardswish, nn.SiLU, nn.GELU, nn.Mish, nn.Tanh, nn.Softsign, nn.Softplus, nn.Tanhshrink,
    nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.LogSigmoid,
)  # fmt: skip
# Sigmoid-like gates (precrop.nn.tracing.GATES) saturate at 1 and zero the gradient into their branch: they
# become UnitMeanGate.


class UnitMeanGate(nn.Module):
    """SynFlow's stand-in for a sigmoid gate: its input over the input's (constant) mean, a linear map.

    Plain identity would make a gated product x * gate(x) quadratic in x: the magnitude squares at every
    gate and overflows float64 within EfficientNet-B0's 16 squeeze-excitation blocks. Dividing by the
    detached mean over the non-batch dims gives the gate's output a mean of 1, as a saturated sigmoid's,
    while dR/dtheta still flows, linearly, into the gate's branch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` divided by its detached mean over every dim but the first (by 1 where that mean is 0)."""
        mean = x.detach().mean(dim=tuple(range(1, x.dim())), keepdim=True) if x.dim() > 1 else x.detach().mean()
        return x / torch.where(mean > 0, mean, torch.ones_like(mean))


def linearize(net: nn.Module) -> nn.Module:
    """Replace, in place, every LINEARIZED activation module of `net` by nn.Identity and every gate by UnitMeanGate.

    Only modules can be replaced: an activation called as a function inside a forward (F.relu6,
    torch.sigmoid, x.clamp(max=6)) stays, and so do softmax attention and LayerNorm. None of the zoo's
    CNNs or torchvision's convolutional classifiers call a saturating one that way; where a model does
    and it zeroes a layer's scores, `check_scores` raises ScoreCollapse.
    """
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GATES):
                setattr(parent, name, UnitMeanGate())
            elif isinstance(child, LINEARIZED):
                setattr(parent, name, nn.Identity())
    return net


def positive_copy(model: nn.Module) -> nn.Module:
    """A float64, eval-mode, linearized deep copy whose parameters and floating buffers are all non-negative."""
    net = linearize(copy.deepcopy(model)).to(torch.float64).eval()
    with torch.no_grad():
        for param in net.parameters():
            param.abs_()
            param.requires_grad_(False)
        for buffer in net.buffers():
            if buffer.is_floating_point():
                buffer.abs_()
    return net


def _synflow_pass(net: nn.Module, weights: Mapping[str, torch.Tensor], input_shape: tuple[int, ...]) -> Scores:
    """|theta * dR/dtheta| for the given weights of `net`, R the output sum for one all-ones input."""
    leaves = list(weights.values())
    for weight in leaves:
        weight.requires_grad_(True)
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=leaves[0].device)
    total = net(ones).sum()
    grads = torch.autograd.grad(total, leaves)
    return {name: (w.detach() * g).abs() for (name, w), g in zip(weights.items(), grads, strict=True)}


def _set_masked(
    weights: Mapping[str, torch.Tensor], originals: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> None:
    """Write original * mask into every weight that has a mask (no autograd record)."""
    with torch.no_grad():
        for name, mask in masks.items():
            weights[name].copy_(originals[name] * mask.to(weights[name]))


def synflow_scores(model: nn.Module, table: LayerTable, masks: Mapping[str, torch.Tensor] | None = None) -> Scores:
    """SynFlow score |theta * dR/dtheta| (float64) of every prunable weight, on the masked model if `masks`."""
    net = positive_copy(model)
    weights = layer_weights(net, table)
    if masks is not None:
        _set_masked(weights, {n: w.detach().clone() for n, w in weights.items()}, masks)
    return _synflow_pass(net, weights, table.input_shape)


def round_budgets(
    budgets: Mapping[str, float], full: Mapping[str, float], round_index: int, rounds: int
) -> dict[str, float]:
    """Weight budgets of round `round_index` (1-based) of an exponential schedule; the last is `budgets`."""
    if round_index >= rounds:
        return dict(budgets)
    fraction = round_index / rounds
    return {m: full[m] * (min(b, full[m]) / full[m]) ** fraction for m, b in budgets.items()}


def _drop_pruned(scores: Scores, masks: Masks) -> Scores:
    """Scores with every already-pruned weight at -inf."""
    return {n: s.masked_fill(~masks[n].to(s.device), float("-inf")) for n, s in scores.items()}


def check_synflow_round(table: LayerTable, scores: Scores, round_index: int, rounds: int) -> None:
    """ScoreCollapse when round `round_index` (1-based) of iterative SynFlow cannot rank its scores.

    Round 1 scores the dense network: every layer must score somewhere. Later rounds may leave a layer
    that pruning disconnected (a residual branch or a shortcut conv keeps its one forced weight, and the
    network works through its other paths); they fail only on non-finite scores or when the layers that
    read the input score 0, i.e. no path from the input to the output is left.
    """
    if round_index == 1:
        check_scores("synflow", scores, SYNFLOW_CAUSE)
        return
    inputs = {x.name for x in prunable_layers(table) if INPUT_GROUP in x.in_groups}
    watched = {n: s for n, s in scores.items() if n in inputs or not bool(torch.isfinite(s).all())}
    check_scores("synflow", watched, f"round {round_index} of {rounds}: {SYNFLOW_LATE_CAUSE}")


def iterative_synflow_masks(
    model: nn.Module, table: LayerTable, budgets: Mapping[str, float], rounds: int = SYNFLOW_ROUNDS
) -> Masks:
    """Masks of iterative SynFlow: `rounds` rescorings down an exponential budget schedule."""
    if rounds < 1:
        raise ValueError(f"SynFlow needs at least one round, got {rounds}")
    net = positive_copy(model)
    weights = layer_weights(net, table)
    originals = {n: w.detach().clone() for n, w in weights.items()}
    masks: Masks = {n: torch.ones(w.shape, dtype=torch.bool) for n, w in weights.items()}
    full = full_weight_cost(table)
    for k in range(1, rounds + 1):
        _set_masked(weights, originals, masks)
        raw = _synflow_pass(net, weights, table.input_shape)
        check_synflow_round(table, raw, k, rounds)
        scores = _drop_pruned(raw, masks)
        chosen = select_global(table, scores, round_budgets(budgets, full, k, rounds))
        masks = {n: chosen[n] & masks[n] for n in masks}
    return masks


# ----- SNIP and GraSP -------------------------------------------------------------------------------
def _train_copy(model: nn.Module) -> nn.Module:
    """A train-mode deep copy of `model`."""
    return copy.deepcopy(model).train()


def _as_input(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in the dtype and on the device of `net`'s parameters, labels on that device."""
    param = next(net.parameters())
    return images.to(device=param.device, dtype=param.dtype), labels.to(param.device)


def _loss(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of `net` on one batch, logits divided by `temperature`."""
    images, labels = _as_input(net, *batch)
    return F.cross_entropy(net(images) / temperature, labels)


def _mean_gradient(
    net: nn.Module, leaves: list[torch.Tensor], batches: Batches, temperature: float
) -> list[torch.Tensor]:
    """Gradient of the mean batch loss with respect to `leaves` (no graph kept)."""
    if not batches:
        raise ValueError("data-driven saliency needs at least one batch")
    total = [torch.zeros_like(leaf) for leaf in leaves]
    for batch in batches:
        grads = torch.autograd.grad(_loss(net, batch, temperature), leaves)
        total = [t + g.detach() for t, g in zip(total, grads, strict=True)]
    return [t / len(batches) for t in total]


def snip_scores(model: nn.Module, table: LayerTable, batches: Batches) -> Scores:
    """SNIP score |theta * dL/dtheta| of every prunable weight, L the mean loss over `batches` (train mode)."""
    net = _train_copy(model)
    weights = layer_weights(net, table)
    leaves = list(weights.values())
    grads = _mean_gradient(net, leaves, batches, 1.0)
    return {name: (w.detach() * g).abs() for (name, w), g in zip(weights.items(), grads, strict=True)}


def _hessian_gradient(
    net: nn.Module, leaves: list[torch.Tensor], batches: Batches, temperature: float, direction: list[torch.Tensor]
) -> list[torch.Tensor]:
    """H v of the mean batch loss with respect to `leaves`, by double backpropagation."""
    total = [torch.zeros_like(leaf) for leaf in leaves]
    for batch in batches:
        grads = torch.autograd.grad(_loss(net, batch, temperature), leaves, create_graph=True)
        inner = torch.stack([(g * v).sum() for g, v in zip(grads, direction, strict=True)]).sum()
        hvp = torch.autograd.grad(inner, leaves)
        total = [t + h.detach() for t, h in zip(total, hvp, strict=True)]
    return [t / len(batches) for t in total]


def grasp_scores(
    model: nn.Module, table: LayerTable, batches: Batches, temperature: float = GRASP_TEMPERATURE
) -> Scores:
    """GraSP keep priority +theta * (H g) of every prunable weight (GraSP removes the lowest; train mode)."""
    net = _train_copy(model)
    weights = layer_weights(net, table)
    leaves = list(weights.values())
    gradient = _mean_gradient(net, leaves, batches, temperature)
    hg = _hessian_gradient(net, leaves, batches, temperature, gradient)
    return {name: w.detach() * h for (name, w), h in zip(weights.items(), hg, strict=True)}


# ----- pruners ----------------------------------------------------------------------------------------
@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run with the CPU generator seeded to `seed`, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class SynFlowPruner:
    """Iterative SynFlow: data-free, `rounds` rounds of an exponential schedule, global threshold."""

    name = "synflow"

    def __init__(self, rounds: int = SYNFLOW_ROUNDS) -> None:
        if rounds < 1:
            raise ValueError(f"SynFlow needs at least one round, got {rounds}")
        self.rounds = rounds

    def prune(self, table: LayerTable, request: AllocationRequest, probe: Probe) -> MaskResult:
        """Masks meeting `request` on `probe.model`, by iterative SynFlow."""
        started = time.perf_counter()
        budgets = check_mask_request(table, request)
        with _seeded(probe.seed):
            masks = iterative_synflow_masks(probe.model, table, budgets, self.rounds)
        return masked_plan(table, request, self.name, masks, "weight", started, "masked")


class SnipPruner:
    """SNIP: single-shot connection sensitivity |theta * dL/dtheta| on the probe batches, global threshold."""

    name = "snip"

    def prune(self, table: LayerTable, request: AllocationRequest, probe: Probe) -> MaskResult:
        """Masks meeting `request` on `probe.model`, by SNIP."""
        started = time.perf_counter()
        budgets = check_mask_request(table, request)
        with _seeded(probe.seed):
            scores = snip_scores(probe.model, table, probe.batches)
        check_scores(self.name, scores, DATA_CAUSE)
        masks = select_global(table, scores, budgets)
        return masked_plan(table, request, self.name, masks, "weight", started, "masked")


class GraspPruner:
    """GraSP: single-shot gradient-signal preservation on the probe batches, global threshold."""

    name = "grasp"

    def __init__(self, temperature: float = GRASP_TEMPERATURE) -> None:
        self.temperature = temperature

    def prune(self, table: LayerTable, request: AllocationRequest, probe: Probe) -> MaskResult:
        """Masks meeting `request` on `probe.model`, by GraSP."""
        started = time.perf_counter()
        budgets = check_mask_request(table, request)
        with _seeded(probe.seed):
            scores = grasp_scores(probe.model, table, probe.batches, self.temperature)
        check_scores(self.name, scores, DATA_CAUSE)
        masks = select_global(table, scores, budgets)
        return masked_plan(table, request, self.name, masks, "weight", started, "masked")

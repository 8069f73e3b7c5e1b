"""`prunenet`: a RECONSTRUCTION of PruneNet's channel ranking, not the published method.

The paper's exact importance formula is not public, so this follows its outline: a few SGD steps on a
copy of the dense model, then a first-order Taylor importance per channel divided by what one channel of
its group costs (importance per unit cost). Channels are ranked and fitted to the budget as for PFS
(precrop/methods/channel_rank.py `fit_ranking`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from precrop.methods.base import Probe
from precrop.methods.channel_rank import (
    Scores,
    channel_scales,
    cycle_batches,
    fit_ranking,
    require_probe,
    score_sites,
    shrink_bounds,
)
from precrop.methods.masks import check_scores
from precrop.width.allocate import AllocationRequest, allocated_plan, budgets_and_bounds, require_floor_fits
from precrop.width.costmodel import LayerTable
from precrop.width.keep import with_kept
from precrop.width.plan import WidthPlan

PRUNENET_CAUSE = (
    "the loss does not depend on these channels on the probe batches; likely saturated or dead activations, "
    "or a loss that is not finite"
)


# ----- PruneNet (reconstruction) ------------------------------------------------------------------
def channel_unit_costs(table: LayerTable, metric: str) -> dict[str, float]:
    """What one more channel of each prunable group costs in `metric` ("params" or "macs") at base widths."""
    base = getattr(table.cost(), metric)
    out = {}
    for group in table.prunable_groups:
        wider = getattr(table.cost({group.name: group.width + 1}), metric)
        out[group.name] = float(max(wider - base, 1))
    return out


def taylor_importance(
    table: LayerTable, model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> Scores:
    """Per channel, |sum over batch and positions of activation x dLoss/dactivation| at every site of its
    group, summed over sites and batches. `model` is used as is (its mode included); weights get no grads.

    The sum is the gradient of the loss with respect to a ones vector multiplying the site's output.
    """
    sites = score_sites(table)
    probes = [torch.ones(sum(table.group(g).width for g in groups), requires_grad=True) for _, groups in sites]
    scales = {name: _constant(p) for (name, _), p in zip(sites, probes, strict=True)}
    totals = {g.name: np.zeros(g.width) for g in table.prunable_groups}
    with channel_scales(model, scales):
        for images, labels in batches:
            grads = torch.autograd.grad(F.cross_entropy(model(images), labels), probes)
            for (_, groups), grad in zip(sites, grads, strict=True):
                _add_segments(table, groups, grad.abs().double().numpy(), totals)
    return totals


def _constant(tensor: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A scale that is always `tensor`."""
    return lambda: tensor


def _add_segments(table: LayerTable, groups: tuple[str, ...], values: np.ndarray, totals: Scores) -> None:
    """Add a site's per-channel values to its prunable groups' totals, segment by segment."""
    start = 0
    for g in groups:
        width = table.group(g).width
        if g in totals:
            totals[g] += values[start : start + width]
        start += width


class PruneNetAllocator:
    """PruneNet (reconstruction): brief SGD training, Taylor importance per unit cost, global ranking, bisection.

    Defaults: 20 SGD steps (lr 0.01, momentum 0.9, cycling over the probe batches): enough to move the
    model off its random initialization without fitting the few probe batches. Importance is divided by
    the MACs one channel of its group costs (params when only params are budgeted). The copy stays in
    train mode throughout, so norms use batch statistics when scoring as they did when training.
    """

    name = "prunenet"

    def __init__(self, train_steps: int = 20, lr: float = 0.01, momentum: float = 0.9) -> None:
        self.train_steps = train_steps
        self.lr = lr
        self.momentum = momentum

    def allocate(self, table: LayerTable, request: AllocationRequest, probe: Probe | None = None) -> WidthPlan:
        """Train briefly, score channels by Taylor importance per unit cost, keep the best within the budgets."""
        request.validate()
        table = with_kept(table, request.keep)
        start = time.perf_counter()
        budgets, _ = budgets_and_bounds(table, request)
        require_floor_fits(table, request, budgets, shrink_bounds(table, request))
        metric = "macs" if request.macs is not None else "params"
        scores = self.scores(table, require_probe(self.name, probe), metric)
        check_scores(self.name, scores, PRUNENET_CAUSE, unit="group")
        fit = fit_ranking(table, request, scores)
        options = {"train_steps": self.train_steps, "lr": self.lr, "momentum": self.momentum,
                   "cost_metric": metric, "kept_channels": fit.kept, "filled_channels": fit.filled}  # fmt: skip
        return allocated_plan(table, request, self.name, fit.widths, table.cost(fit.widths), "bisection",
                              start, options)  # fmt: skip

    def scores(self, table: LayerTable, probe: Probe, metric: str = "macs") -> Scores:
        """Taylor importance per unit `metric` cost of every channel, after brief training of a copy."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(probe.seed)
            model = self.trained_copy(probe)
            importance = taylor_importance(table, model, probe.batches)
        unit = channel_unit_costs(table, metric)
        return {g: values / unit[g] for g, values in importance.items()}

    def trained_copy(self, probe: Probe) -> nn.Module:
        """A train-mode copy of the probe model after `train_steps` SGD steps on the probe batches."""
        model = copy.deepcopy(probe.model).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum)
        for images, labels in cycle_batches(probe.batches, self.train_steps):
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        return model

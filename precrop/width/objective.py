"""The SynExp objective of a width assignment, and of continuous uniform scaling at the same cost.

SynExp scores a pruned network by sum_l log d_l, d_l the fraction of layer l's base weights that the
pruned layer keeps (the program of density.py). For a width plan, d_l = kept weights / base weights of every
conv/linear layer, so the objective of a *rounded* plan can be computed exactly and compared across
mappings, roundings and allocators.

Two objectives (OBJECTIVES), which differ only in which layers the sum runs over:

- `layer`, the paper's: every conv/linear layer. It assumes every layer's weights are masked independently.
- `path` (ours): the expected SynFlow score of a *channel*-cropped network. A SynFlow path keeps its
  product of weights only if every channel it passes through is kept, so it gains one factor r_g per
  channel mask it meets. A layer that reads and writes one mask channel by channel (a depthwise conv:
  `in_groups == (out_group,)`) moves the path along the same channel and adds no factor; a gate branch
  (`Layer.gate`) ends in a sigmoid-like gate, which SynFlow replaces by its input over the input's mean,
  so cropping the branch does not change the score at all. Both kinds are left out of the sum. Everywhere
  else each mask between a writer and its readers is counted once by the writer's output and once by each
  reader's input, as in `layer`: on networks without such layers the two objectives are the same function
  and give the same widths, bit for bit. On inverted residuals `layer` counts an expanded group three
  times (expand, depthwise, project) where a path meets it once, and over-weights it 3:2.

`continuous_uniform` is the reference every mapping must beat: one real keep ratio r for all prunable
groups, chosen so that the exact cost equals a given cost.

`ObjectiveTerms` evaluates the objective for many candidate ratio vectors at once (the repair step
scores every one-step change in one numpy call). Imports numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from precrop.width.budget import largest_fitting
from precrop.width.costmodel import Layer, LayerTable
from precrop.width.posynomial import posynomial

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

Matrix = NDArray[np.float64]

OBJECTIVES = ("layer", "path")


def adds_no_path_factor(layer: Layer) -> bool:
    """Whether a SynFlow path through `layer` meets no channel mask it had not met: a channel-by-channel layer
    (its input and output are one mask) or a gate branch (its output is normalized away)."""
    return (layer.depthwise and layer.in_groups == (layer.out_group,)) or layer.gate


def scored_layers(table: LayerTable, objective: str = "layer") -> list[Layer]:
    """The layers `objective` sums over: every conv/linear layer with weights (`path`: less those that add no
    factor to a path)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    layers = [layer for layer in table.layers if layer.kind != "channel_pad" and layer.weight_count(table.base_widths)]
    return [layer for layer in layers if not adds_no_path_factor(layer)] if objective == "path" else layers


def synexp_objective(table: LayerTable, widths: Mapping[str, int], objective: str = "layer") -> float:
    """sum_l log(kept weights / base weights) over the layers `objective` scores: 0 for the dense model."""
    base = table.base_widths
    full = table.full_widths(widths)
    layers = scored_layers(table, objective)
    return float(sum(math.log(x.weight_count(full) / x.weight_count(base)) for x in layers))


@dataclass(frozen=True)
class ObjectiveTerms:
    """log d_l = log(out @ r + out_const) + log(inp @ r + in_const) for ratios r of `groups`.

    A layer's kept weights are (output width) x (summed input widths): each factor is affine in the
    ratios of the movable groups, with groups that do not move folded into the constants.
    """

    groups: tuple[str, ...]
    out: csr_matrix  # layers x groups
    out_const: Matrix
    inp: csr_matrix  # layers x groups
    in_const: Matrix

    def values(self, ratios: Matrix) -> Matrix:
        """The objective at each row of `ratios` (candidates x groups)."""
        # the factor matrices have one or a few entries per layer: sparse products keep the repair's
        # scoring of thousands of candidate rows cheap
        out = np.asarray(self.out.dot(ratios.T)).T + self.out_const
        inp = np.asarray(self.inp.dot(ratios.T)).T + self.in_const
        return np.asarray(np.log(out * inp).sum(axis=1), dtype=np.float64)

    def value(self, ratios: Sequence[float] | Matrix) -> float:
        """The objective at one ratio vector."""
        return float(self.values(np.asarray(ratios, dtype=np.float64)[None, :])[0])


def objective_terms(table: LayerTable, groups: Sequence[str], objective: str = "layer") -> ObjectiveTerms:
    """The objective's affine factors over the ratios of `groups` (the others stay at base)."""
    index = {g: i for i, g in enumerate(groups)}
    base = table.base_widths
    layers = scored_layers(table, objective)
    out, inp = np.zeros((len(layers), len(groups))), np.zeros((len(layers), len(groups)))
    out_const, in_const = np.zeros(len(layers)), np.zeros(len(layers))
    for row, layer in enumerate(layers):
        if layer.out_group in index:
            out[row, index[layer.out_group]] = 1.0
        else:
            out_const[row] = 1.0
        if layer.depthwise:
            in_const[row] = 1.0
            continue
        total = sum(base[g] for g in layer.in_groups)
        for g in layer.in_groups:
            if g in index:
                inp[row, index[g]] += base[g] / total
            else:
                in_const[row] += base[g] / total
    from scipy.sparse import csr_matrix  # here: training from a saved plan needs no scipy

    return ObjectiveTerms(tuple(groups), csr_matrix(out), out_const, csr_matrix(inp), in_const)


@dataclass(frozen=True)
class UniformReference:
    """Continuous uniform scaling at a given cost: its keep ratio and SynExp objective."""

    ratio: float
    objective: float


def continuous_uniform(table: LayerTable, metric: str, cost: float, objective: str = "layer") -> UniformReference:
    """The real ratio r (all prunable groups scaled by r) whose exact `metric` cost is `cost`, by bisection,
    and its value of `objective`."""
    groups = [g.name for g in table.prunable_groups]
    posy = posynomial(table, metric, groups)
    if cost <= posy.constant:
        raise ValueError(f"a {metric} cost of {cost} is below the part no width can change")

    def cost_at(log_ratio: float) -> float:
        return posy.value(np.full(len(groups), log_ratio))

    high = 0.0
    while cost_at(high) < cost:
        high += 1.0
    ratio = math.exp(largest_fitting(lambda log_ratio: cost_at(log_ratio) <= cost, -60.0, high, steps=200))
    return UniformReference(ratio, objective_terms(table, groups, objective).value(np.full(len(groups), ratio)))

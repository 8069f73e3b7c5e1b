"""The measured proxy: SynFlow's path score of a cropped network, relative to the dense one it was cropped from.

SynExp is a model of the expected SynFlow score R (the sum over every input-to-output path of the product of
its |weights|) of a network pruned at initialization. This module measures R itself, so that an objective
can be checked on the structure it is applied to before anyone trains: build the dense model with its
family's init (seeded), keep each group's leading `width` channels of those very weights (the plan's
cropped network, as `resize_to_widths` slices it), and compute log R of both on SynFlow's scoring copy
(float64, |parameters|, BN in eval mode, saturating activations linearized, gates as `UnitMeanGate`) with
one all-ones input. The cropped network keeps no zeroed channels, so a gate's mean is taken over the
channels it really has.

On a chain of convolutions whose weights are all equal, R is the product of the widths and kernel areas,
so log R/R_dense is exactly the sum over the cropped groups of log(width/base): tests check that.
"""

from __future__ import annotations

import copy
import functools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from precrop.errors import UserError
from precrop.methods.saliency import positive_copy
from precrop.nn.build import build_from_plan, layer_table
from precrop.nn.surgery import resize_to_widths
from precrop.width.allocate import dense_plan
from precrop.width.costmodel import LayerTable
from precrop.width.plan import WidthPlan


class ProxyError(UserError):
    """A plan the measured proxy cannot score (one line, exit 2)."""


@dataclass(frozen=True)
class MeasuredProxy:
    """log R(cropped) - log R(dense) per seed, and their mean and standard deviation (nats)."""

    per_seed: tuple[float, ...]

    @property
    def mean(self) -> float:
        """The mean over seeds."""
        return statistics.fmean(self.per_seed)

    @property
    def std(self) -> float:
        """The sample standard deviation over seeds (0 for one seed)."""
        return statistics.stdev(self.per_seed) if len(self.per_seed) > 1 else 0.0


def log_path_score(model: nn.Module, input_shape: tuple[int, int, int]) -> float:
    """log R: the log of the output sum of SynFlow's scoring copy of `model` for one all-ones input."""
    net = positive_copy(model)
    with torch.no_grad():
        total = float(net(torch.ones((1, *input_shape), dtype=torch.float64)).sum())
    if not math.isfinite(total) or total <= 0:
        raise ProxyError(f"the path score of {type(model).__name__} is {total}: no positive path, or it overflows")
    return math.log(total)


def measure_plan(plan: WidthPlan, seeds: Sequence[int] = (0, 1)) -> MeasuredProxy:
    """log R(plan's cropped network) - log R(dense network) for each seed of the dense initialization."""
    if plan.masked:
        raise ProxyError(f"{plan.allocator} plans mask weights; the measured proxy scores width plans")
    table = plan_table(plan)
    grown = sorted(g for g, w in plan.widths.items() if w > table.base_widths[g])
    if grown:
        raise ProxyError(f"the plan grows {len(grown)} groups ({grown[0]}, ...); the proxy compares a network "
                         "with the dense one it was cropped from, so PreConfig plans that grow a group are not "
                         "scored")  # fmt: skip
    values = []
    for seed in seeds:
        dense = build_from_plan(dense_plan(table), seed=seed)
        cropped = resize_to_widths(copy.deepcopy(dense), table, dict(plan.widths))
        values.append(log_path_score(cropped, plan.input_shape) - log_path_score(dense, plan.input_shape))
    return MeasuredProxy(tuple(values))


def plan_table(plan: WidthPlan) -> LayerTable:
    """The dense layer table of the plan's architecture, classes and input size."""
    return _table(plan.arch, plan.num_classes, plan.input_shape[1])


@functools.lru_cache(maxsize=8)
def _table(arch: str, num_classes: int, input_size: int) -> LayerTable:
    """The dense architecture's layer table (traced once per process)."""
    return layer_table(arch, num_classes, input_size)

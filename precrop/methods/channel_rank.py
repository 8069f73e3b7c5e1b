"""Data-driven channel ranking: PFS (Pruning from Scratch), and what it shares with PruneNet (prunenet.py).

Both score every channel of every prunable group on a probe (the seeded dense model and a few labelled
batches), rank all channels of the network together, and keep the best ones while the exact cost model
meets the budgets. They only choose widths: the pruned model is rebuilt and trained from scratch elsewhere.

- `pfs` (Wang et al., "Pruning from Scratch", AAAI 2020): a gate per channel multiplies the output of
  each norm of the FROZEN random model; only the gates are trained (Adam), on cross-entropy plus
  lam * (mean|g| - r)^2, and clipped to [0, 1] after every step. The trained gates are the scores.
- `prunenet` (precrop/methods/prunenet.py): a RECONSTRUCTION, not the published method; its scores are a
  Taylor importance per unit cost after brief training of a copy.

Where scores attach: every norm of the layer table (its output channels are the concatenation of its
`groups`), and, for a prunable group that no norm normalizes, the output of every layer that writes it.
A residual stream is one group, so its gate (and its importance) is shared by all the norms it appears in.

From scores to widths (`fit_ranking`): order all channels by score (descending, stable: ties keep table
order), keep a prefix of k channels (each group's width is its count in the prefix, rounded to the allowed
widths; cost is monotone in k), bisect for the largest k that meets every budget, then a greedy fill walks
the rest of the ranking and keeps each further channel that still fits (a group whose next channel does
not fit is closed). The fill is what lands the cost within one cheap channel of the budget: the channel
right after the prefix may be an expensive one (an early residual stream channel costs ~2% of a ResNet-56).
Groups never grow beyond their base width, even when the request allows expansion.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from precrop.methods.base import Probe
from precrop.methods.masks import check_scores
from precrop.width.allocate import (
    AllocationRequest,
    BudgetError,
    allocated_plan,
    budgets_and_bounds,
    require_floor_fits,
)
from precrop.width.budget import fits, largest_fitting_count
from precrop.width.costmodel import LayerTable
from precrop.width.keep import with_kept
from precrop.width.plan import WidthPlan
from precrop.width.rounding import WidthBounds, round_widths, width_bounds

Scores = dict[str, np.ndarray]
Site = tuple[str, tuple[str, ...]]

# A group whose scores are all zero (or not finite) would be ranked by table order alone: ScoreCollapse.
PFS_CAUSE = "training drove every gate of these groups to 0, or the loss was not finite (lower lr or lam)"


# ----- from scores to widths ------------------------------------------------------------------------
@dataclass(frozen=True)
class ChannelRanking:
    """All channels of the prunable groups, best first: `group_index[i]` and `channel_index[i]` of rank i."""

    groups: tuple[str, ...]
    group_index: np.ndarray
    channel_index: np.ndarray

    def __len__(self) -> int:
        return len(self.group_index)

    def channel(self, rank: int) -> tuple[str, int]:
        """(group, channel) at position `rank` of the ranking."""
        return self.groups[int(self.group_index[rank])], int(self.channel_index[rank])

    def counts(self, kept: int) -> dict[str, int]:
        """Channels of each group among the first `kept` of the ranking."""
        counted = np.bincount(self.group_index[:kept], minlength=len(self.groups))
        return {g: int(c) for g, c in zip(self.groups, counted, strict=True)}


@dataclass(frozen=True)
class RankedWidths:
    """Widths chosen from a ranking: `kept` is the bisected prefix, `filled` the channels the fill added."""

    widths: dict[str, int]
    kept: int
    filled: int


def rank_channels(table: LayerTable, scores: Mapping[str, np.ndarray]) -> ChannelRanking:
    """Rank every channel of every prunable group by score, descending; ties keep table order."""
    groups = tuple(g.name for g in table.prunable_groups)
    unknown = sorted(set(scores) - set(groups))
    if unknown:
        raise ValueError(f"scores for groups that are not prunable: {unknown[:3]}")
    flat = []
    for group in table.prunable_groups:
        if group.name not in scores:
            raise ValueError(f"no scores for group {group.name!r}")
        values = np.asarray(scores[group.name], dtype=np.float64).reshape(-1)
        if values.size != group.width:
            raise ValueError(f"group {group.name!r} has {group.width} channels but {values.size} scores")
        flat.append(np.nan_to_num(values, nan=-np.inf))
    sizes = [len(v) for v in flat]
    order = np.argsort(-np.concatenate(flat), kind="stable")
    group_of = np.repeat(np.arange(len(groups)), sizes)
    channel_of = np.concatenate([np.arange(n) for n in sizes])
    return ChannelRanking(groups, group_of[order], channel_of[order])


def shrink_bounds(table: LayerTable, request: AllocationRequest) -> dict[str, WidthBounds]:
    """Allowed widths of every prunable group, capped at its base width (ranking methods never grow one)."""
    return {g.name: width_bounds(g.width, request.divisor, request.min_width, 1.0) for g in table.prunable_groups}


def widths_at(ranking: ChannelRanking, kept: int, bounds: Mapping[str, WidthBounds]) -> dict[str, int]:
    """Allowed widths when the first `kept` channels of the ranking are kept."""
    return round_widths({g: float(c) for g, c in ranking.counts(kept).items()}, bounds)


def _largest_prefix(
    table: LayerTable, ranking: ChannelRanking, bounds: Mapping[str, WidthBounds], budgets: Mapping[str, float]
) -> int:
    """Largest k whose prefix widths meet every budget (cost is monotone in k); the floor must fit."""
    return largest_fitting_count(lambda k: fits(table, widths_at(ranking, k, bounds), budgets), 0, len(ranking))


def _fill(
    table: LayerTable,
    ranking: ChannelRanking,
    kept: int,
    bounds: Mapping[str, WidthBounds],
    budgets: Mapping[str, float],
) -> tuple[dict[str, int], int]:
    """Walk the ranking after the prefix, keeping each channel that still fits; return widths and the count."""
    counts = ranking.counts(kept)
    widths = widths_at(ranking, kept, bounds)
    closed: set[str] = set()
    filled = 0
    for index in ranking.group_index[kept:]:
        group = ranking.groups[int(index)]
        if group in closed:
            continue
        width = round_widths({group: float(counts[group] + 1)}, bounds)[group]
        if width != widths[group]:
            trial = {**widths, group: width}
            if not fits(table, trial, budgets):
                closed.add(group)  # costs only grow from here, so this group's later channels cannot fit either
                continue
            widths = trial
        counts[group] += 1
        filled += 1
    return widths, filled


def fit_ranking(table: LayerTable, request: AllocationRequest, scores: Mapping[str, np.ndarray]) -> RankedWidths:
    """Keep the best-scored channels while every budget holds: bisected prefix, then greedy fill."""
    budgets, _ = budgets_and_bounds(table, request)
    bounds = shrink_bounds(table, request)
    require_floor_fits(table, request, budgets, bounds)
    ranking = rank_channels(table, scores)
    kept = _largest_prefix(table, ranking, bounds, budgets)
    widths, filled = _fill(table, ranking, kept, bounds, budgets)
    return RankedWidths(widths, kept, filled)


def widths_from_ranking(
    table: LayerTable, request: AllocationRequest, scores: Mapping[str, np.ndarray]
) -> dict[str, int]:
    """Widths of the prunable groups keeping the best-scored channels within the request's budgets."""
    return fit_ranking(table, request, scores).widths


# ----- where scores attach, and hooks that scale channels --------------------------------------------
def score_sites(table: LayerTable) -> list[Site]:
    """(module name, groups of its output channels in order): every norm, and every layer writing an un-normed group."""
    prunable = {g.name for g in table.prunable_groups}
    sites = [(n.name, n.groups) for n in table.norms if prunable.intersection(n.groups)]
    normed = {g for n in table.norms for g in n.groups}
    for layer in table.layers:
        if layer.out_group in prunable and layer.out_group not in normed:
            sites.append((layer.name, (layer.out_group,)))
    return sites


def _scale_channels(module: nn.Module, output: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`output` times a per-channel vector (channels last for LayerNorm, dim 1 otherwise)."""
    if isinstance(module, nn.LayerNorm) or output.dim() < 2:
        return output * scale
    if output.shape[1] != scale.numel():
        raise ValueError(f"{type(module).__name__} output has {output.shape[1]} channels, expected {scale.numel()}")
    return output * scale.view(1, -1, *([1] * (output.dim() - 2)))


def _scaling_hook(scale: Callable[[], torch.Tensor]) -> Callable[[nn.Module, object, torch.Tensor], torch.Tensor]:
    """A forward hook multiplying a module's output channel-wise by `scale()`."""

    def hook(module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        return _scale_channels(module, output, scale())

    return hook


@contextmanager
def channel_scales(model: nn.Module, scales: Mapping[str, Callable[[], torch.Tensor]]) -> Iterator[None]:
    """While active, the output of module `name` is multiplied channel-wise by `scales[name]()`."""
    handles = [model.get_submodule(name).register_forward_hook(_scaling_hook(scale)) for name, scale in scales.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def cycle_batches(
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]], steps: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`steps` batches, cycling over `batches`."""
    for step in range(steps):
        yield batches[step % len(batches)]


def require_probe(method: str, probe: Probe | None) -> Probe:
    """The probe, or BudgetError when there is none (or it has no batches)."""
    if probe is None or not probe.batches:
        raise BudgetError(f"{method} needs a probe: a model and training batches")
    return probe


# ----- PFS ------------------------------------------------------------------------------------------
def keep_ratio(request: AllocationRequest) -> float:
    """PFS's target mean gate r: the square root of the tighter budget (params or MACs), capped at 1.

    r is roughly the fraction of channels kept. Both the MACs and the weights of a conv scale with
    in x out width, so keeping a fraction r of every group costs about r^2: r = sqrt(budget). With both
    budgets the smaller target wins (the tighter budget binds). r only sets where the penalty pulls the
    gates; the widths themselves come from the exact-cost bisection.
    """
    budgets = [b for b in (request.macs, request.params) if b is not None]
    return min(1.0, math.sqrt(min(budgets)))


class PfsAllocator:
    """Pruning from Scratch: learn channel gates on the frozen random model, rank them globally, bisect.

    Defaults: 100 Adam steps (cycling over the probe batches) at lr 0.01, so a gate can travel about 1,
    the whole [0, 1] range, in the run. `lam=None` scales the penalty with the number of gates N as
    lam = 0.02 N: the penalty's gradient on each gate is then 2 lam (mean|g| - r) / N = 0.04 (mean|g| - r),
    comparable to the cross-entropy's per-gate gradients (about 1e-2 rms at batch 16 on the CIFAR nets)
    whatever N is. A fixed lam = 0.5 leaves that gradient 50x to 300x below the cross-entropy's on
    VGG-16 / MobileNetV2, and after 100 steps mean|g| stayed at 0.86 for r = 0.5 on VGG-16 (0.506 with 0.02 N).
    """

    name = "pfs"

    def __init__(self, steps: int = 100, lr: float = 0.01, lam: float | None = None) -> None:
        self.steps = steps
        self.lr = lr
        self.lam = lam

    def penalty_weight(self, table: LayerTable) -> float:
        """The lam in use: the constructor's, or 0.02 x the number of gates when that was None."""
        if self.lam is not None:
            return self.lam
        return 0.02 * sum(g.width for g in table.prunable_groups)

    def allocate(self, table: LayerTable, request: AllocationRequest, probe: Probe | None = None) -> WidthPlan:
        """Train the gates on the probe, then keep the highest gates within the budgets."""
        request.validate()
        table = with_kept(table, request.keep)
        start = time.perf_counter()
        budgets, _ = budgets_and_bounds(table, request)
        require_floor_fits(table, request, budgets, shrink_bounds(table, request))
        ratio = keep_ratio(request)
        gates = self.gates(table, require_probe(self.name, probe), ratio)
        check_scores(self.name, gates, PFS_CAUSE, unit="group")
        fit = fit_ranking(table, request, gates)
        options = {"steps": self.steps, "lr": self.lr, "lam": round(self.penalty_weight(table), 6),
                   "keep_ratio": round(ratio, 6), "kept_channels": fit.kept, "filled_channels": fit.filled}  # fmt: skip
        return allocated_plan(table, request, self.name, fit.widths, table.cost(fit.widths), "bisection",
                              start, options)  # fmt: skip

    def gates(self, table: LayerTable, probe: Probe, ratio: float) -> Scores:
        """Trained gate values in [0, 1] per prunable group (the probe model is left untouched)."""
        model = _frozen_copy(probe.model)
        lam = self.penalty_weight(table)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(probe.seed)
            gates = {g.name: nn.Parameter(torch.ones(g.width)) for g in table.prunable_groups}
            scales = {name: _gate_vector(table, groups, gates) for name, groups in score_sites(table)}
            optimizer = torch.optim.Adam(list(gates.values()), lr=self.lr)
            with channel_scales(model, scales):
                for images, labels in cycle_batches(probe.batches, self.steps):
                    everything = torch.cat(list(gates.values()))
                    penalty = (everything.abs().mean() - ratio) ** 2
                    loss = F.cross_entropy(model(images), labels) + lam * penalty
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():
                        for gate in gates.values():
                            gate.clamp_(0.0, 1.0)
        return {name: gate.detach().double().numpy() for name, gate in gates.items()}


def _frozen_copy(model: nn.Module) -> nn.Module:
    """A train-mode copy of `model` whose parameters need no gradient."""
    frozen = copy.deepcopy(model).train()
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    return frozen


def _gate_vector(
    table: LayerTable, groups: tuple[str, ...], gates: Mapping[str, torch.Tensor]
) -> Callable[[], torch.Tensor]:
    """The gates of a site's channels: its groups' gate segments in order, ones for fixed groups."""

    def vector() -> torch.Tensor:
        parts = [gates[g] if g in gates else torch.ones(table.group(g).width) for g in groups]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    return vector



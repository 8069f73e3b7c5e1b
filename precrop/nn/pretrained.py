"""Pretrained starts: crop a model that has weights, keeping the channels that matter most, to fine-tune.

The rule (documented in docs/width.md): a channel's importance is the L1 norm of the filter that writes
it (Li et al., "Pruning Filters for Efficient ConvNets", 2017), and a group of coupled channels (a residual
stream, written by several layers) is ranked as one: each writer's filter norms are divided by their mean
over that layer, so layers of different scale weigh alike, and summed over the group's writers. Each
group narrower than its base keeps its most important channels in their original order; the weights of
every layer and norm (BatchNorm's running statistics too) are the dense model's at those channels. Then
`recalibrate_norms` re-estimates the BatchNorm statistics on a few training batches before fine-tuning.

This leaves pruning at initialization: the widths still come from the allocation (SynExp or another
width method, which never looks at the weights), and only which channels fill them is read from the
trained weights. torch-pruning's `MagnitudeImportance` ranks channels the same way, but prunes a live
module graph in place; here the widths are fixed by a plan before the model is touched.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from precrop.errors import UserError
from precrop.nn.surgery import resize_to_widths
from precrop.width.costmodel import Layer, LayerTable


class PretrainedStartError(UserError):
    """A plan a pretrained model cannot start: a group wider than the dense model, or a grouped conv."""


@torch.no_grad()
def channel_importance(model: nn.Module, table: LayerTable) -> dict[str, torch.Tensor]:
    """Per prunable group, each channel's importance: the L1 norms of the filters writing it, each layer's
    divided by their mean, summed over the group's writers (conv, depthwise conv and linear layers)."""
    modules = dict(model.named_modules())
    scores = {g.name: torch.zeros(g.width) for g in table.prunable_groups}
    for layer in table.layers:
        if layer.kind == "channel_pad" or layer.out_group not in scores:
            continue
        weight = modules[layer.name].weight.detach().float()
        norms = weight.abs().flatten(1).sum(dim=1).cpu()
        scores[layer.out_group] += norms / norms.mean().clamp_min(1e-12)
    return scores


def chosen_channels(
    scores: Mapping[str, torch.Tensor], widths: Mapping[str, int], table: LayerTable | None = None
) -> dict[str, torch.Tensor]:
    """Per group narrower than its base: the indices of its `widths[group]` most important channels, in
    their original order (ties go to the lower index, so the choice is deterministic). With `table`, the
    output group of a channel-pad shortcut follows its input group where it can (`_follow_channel_pad`)."""
    chosen = {}
    for group, score in scores.items():
        width = widths[group]
        if width > len(score):
            raise PretrainedStartError(f"group {group} is {width} wide, wider than the pretrained model's "
                                       f"{len(score)}: a pretrained start keeps channels the model has "
                                       "(no expand > 1)")  # fmt: skip
        if width < len(score):
            chosen[group] = _best(score, range(len(score)), width)
    pads = [layer for layer in table.layers if layer.kind == "channel_pad"] if table is not None else []
    for layer in pads:  # in the table's order: a shortcut's input group is settled before its output group
        if table is not None and layer.out_group in scores:
            followed = _follow_channel_pad(layer, table, widths, scores[layer.out_group], chosen)
            if followed is not None:
                chosen[layer.out_group] = followed
    return chosen


def _best(score: torch.Tensor, candidates: Iterable[int], count: int) -> torch.Tensor:
    """The `count` highest-scoring of `candidates`, in index order."""
    order = sorted(candidates, key=lambda c: (-float(score[c]), c))
    return torch.tensor(sorted(order[:count]), dtype=torch.long)


def _follow_channel_pad(
    layer: Layer, table: LayerTable, widths: Mapping[str, int], score: torch.Tensor, chosen: Mapping[str, torch.Tensor]
) -> torch.Tensor | None:
    """The channels of an option-A shortcut's output group that keep the shortcut exact, or None when none do.

    The shortcut (`ChannelPad`) places its input channels in the middle of its output and zero-pads both
    sides, by position. Dense, output channel `left + i` is input channel `i`; cropped, the kept input
    channels land at positions `left' ...`. So the output keeps, in the middle, exactly the dense channels
    the kept input channels landed on, and on each side the best of the dense model's zero-padded channels
    on that side. When the sides do not fit (the output narrowed much less than its input), no choice is
    exact and the group keeps its ranking (the shortcut then mixes channels until fine-tuning mends it).
    """
    (in_group,) = layer.in_groups
    base_in, base_out = table.group(in_group).width, table.group(layer.out_group).width
    width_in, width_out = widths[in_group], widths[layer.out_group]
    kept_in = chosen.get(in_group, torch.arange(base_in))
    left = (base_out - base_in) // 2
    if width_out <= width_in:  # the cropped shortcut keeps its first width_out inputs
        return kept_in[:width_out] + left
    new_left = (width_out - width_in) // 2
    new_right = width_out - width_in - new_left
    if base_out <= base_in or new_left > left or new_right > base_out - base_in - left:
        return None
    sides = (_best(score, range(left), new_left), _best(score, range(left + base_in, base_out), new_right))
    return torch.cat([sides[0], kept_in + left, sides[1]])


def crop_pretrained(model: nn.Module, table: LayerTable, widths: Mapping[str, int]) -> nn.Module:
    """A copy of the trained dense `model` (traced into `table`) at `widths`, holding the weights of the
    channels `channel_importance` ranks highest; `model` is left untouched."""
    grouped = [layer.name for layer in table.layers if layer.conv_groups > 1 and not layer.depthwise]
    if grouped:
        raise PretrainedStartError(f"a pretrained start cannot choose channels across the groups of a grouped "
                                   f"conv ({grouped[0]}); start from scratch instead")  # fmt: skip
    full = table.full_widths(widths)
    channels = chosen_channels(channel_importance(model, table), full, table)
    return resize_to_widths(copy.deepcopy(model), table, full, channels)


@torch.no_grad()
def recalibrate_norms(model: nn.Module, images: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running statistics on `images` (batches, train-mode forward passes, no
    gradient), as a plain average over them; returns how many batches it saw. The model keeps its mode.

    Why: a kept channel's inputs lost the dropped channels, so the statistics the dense model gathered no
    longer describe it. Measured on a ResNet-20 trained on digits (96.5% val) and cropped to 50% of its MACs
    by SynExp: 10.6% test accuracy without it, 84.7% with 20 batches of 128 (seed 0; docs/benchmarks.md has
    3 seeds).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m, m.momentum) for m in norms]
    was_training = model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches seen
    model.train()
    seen = 0
    try:
        for batch in images:
            model(batch)
            seen += 1
    finally:
        for norm, momentum in saved:
            norm.momentum = momentum
        model.train(was_training)
    return seen

"""Resize a dense model's layers to new per-group widths, driven by its LayerTable.

Every conv, linear, norm and channel-pad module is given the shapes the widths imply. Weights that
survive keep their leading slice (so shrinking equals slicing, as torch-pruning would do); weights
of grown dimensions are freshly initialized. Training from the resized model is meant to start from
a re-initialization of the whole model with the family's own init (see the allocation step).

Given `channels` (per group, the indices of the channels to keep), a shrunk group keeps those channels
instead of the leading ones, in every layer that reads or writes it and in its norms (BatchNorm's running
statistics included): the pretrained start of precrop/nn/pretrained.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from precrop.nn.zoo.cifar_resnet import ChannelPad
from precrop.width.costmodel import Layer, LayerTable, NormTerm

Channels = Mapping[str, torch.Tensor]  # group -> indices of the base channels kept, in order


def resize_to_widths(
    model: nn.Module, table: LayerTable, widths: Mapping[str, int], channels: Channels | None = None
) -> nn.Module:
    """Resize `model` (traced into `table`) in place to `widths`, keeping the `channels` of each group that
    names them (its leading channels otherwise); returns the same model."""
    full = table.full_widths(widths)
    modules = dict(model.named_modules())
    base = table.base_widths
    for layer in table.layers:
        picks = _layer_picks(layer, base, channels) if channels else None
        _resize_layer(modules[layer.name], layer, full, picks)
    for norm in table.norms:
        pick = _concat_pick(norm.groups, base, channels) if channels else None
        _resize_norm(modules[norm.name], norm, norm.width(full), pick)
    return model


Pick = torch.Tensor | None  # indices to keep along one dimension; None: the leading slice


def _concat_pick(groups: tuple[str, ...], base: Mapping[str, int], channels: Channels) -> Pick:
    """Indices into the concatenation of `groups` (at base widths) of the channels kept; None if none is picked."""
    if not any(g in channels for g in groups):
        return None
    parts, offset = [], 0
    for g in groups:
        parts.append(channels[g] + offset if g in channels else torch.arange(offset, offset + base[g]))
        offset += base[g]
    return torch.cat(parts)


def _layer_picks(layer: Layer, base: Mapping[str, int], channels: Channels) -> tuple[Pick, Pick]:
    """Output and input indices a layer keeps (a linear layer after a flatten reads `in_per_channel`
    features per channel, channel-major; a depthwise conv's input is its output)."""
    out = channels.get(layer.out_group)
    if layer.depthwise:
        return out, None
    pick = _concat_pick(layer.in_groups, base, channels)
    if pick is not None and layer.in_per_channel > 1:
        pick = (pick[:, None] * layer.in_per_channel + torch.arange(layer.in_per_channel)).flatten()
    return out, pick


def _resized(
    old: torch.Tensor, shape: tuple[int, ...], init: torch.Tensor | None = None, picks: tuple[Pick, ...] = ()
) -> nn.Parameter:
    """A parameter of `shape` holding `old` at the picked indices of its first dimensions (the overlapping
    leading slice elsewhere), the rest from `init`."""
    new = init if init is not None else torch.zeros(shape, dtype=old.dtype, device=old.device)
    with torch.no_grad():
        for dim, pick in enumerate(picks):
            if pick is not None:
                old = old.index_select(dim, pick.to(old.device))
        overlap = tuple(slice(0, min(a, b)) for a, b in zip(old.shape, shape, strict=True))
        new[overlap] = old[overlap]
    return nn.Parameter(new, requires_grad=old.requires_grad)


def _resize_layer(
    module: nn.Module, layer: Layer, widths: Mapping[str, int], picks: tuple[Pick, Pick] | None = None
) -> None:
    w_out = widths[layer.out_group]
    w_in = layer.in_width(widths)
    picks = picks or (None, None)
    leading = picks[0] is None and picks[1] is None  # its leading channels: a layer of the right shape is done
    if isinstance(module, ChannelPad):
        module.in_channels, module.out_channels = w_in, w_out
        return
    if isinstance(module, nn.Linear):
        in_features = w_in * layer.in_per_channel
        if (module.out_features, module.in_features) == (w_out, in_features) and leading:
            return
        fresh = nn.Linear(in_features, w_out, bias=module.bias is not None).to(module.weight)
        module.weight = _resized(module.weight, (w_out, in_features), fresh.weight.data, picks)
        if module.bias is not None:
            module.bias = _resized(module.bias, (w_out,), fresh.bias.data, picks[:1])
        module.in_features, module.out_features = in_features, w_out
        return
    assert isinstance(module, nn.Conv2d), f"unexpected module type {type(module).__name__}"
    groups = w_out if layer.depthwise else layer.conv_groups
    if (module.out_channels, module.in_channels, module.groups) == (w_out, w_in, groups) and leading:
        return
    kernel = (module.kernel_size[0], module.kernel_size[1])
    fresh_conv = nn.Conv2d(w_in, w_out, kernel, groups=groups, bias=module.bias is not None).to(module.weight)
    module.weight = _resized(module.weight, tuple(fresh_conv.weight.shape), fresh_conv.weight.data, picks)
    if module.bias is not None:
        assert fresh_conv.bias is not None
        module.bias = _resized(module.bias, (w_out,), fresh_conv.bias.data, picks[:1])
    module.in_channels, module.out_channels, module.groups = w_in, w_out, groups


def _resize_norm(module: nn.Module, norm: NormTerm, width: int, pick: Pick = None) -> None:
    picks = (pick,)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.num_features == width and pick is None:
            return
        module.num_features = width
        if module.affine:
            module.weight = _resized(module.weight, (width,), torch.ones(width).to(module.weight), picks)
            module.bias = _resized(module.bias, (width,), torch.zeros(width).to(module.bias), picks)
        if module.running_mean is not None and module.running_var is not None:
            if pick is None:  # a model to re-initialize: fresh statistics
                module.running_mean = torch.zeros(width).to(module.running_mean)
                module.running_var = torch.ones(width).to(module.running_var)
            else:  # a pretrained start: the kept channels' statistics
                module.running_mean = module.running_mean.index_select(0, pick.to(module.running_mean.device))
                module.running_var = module.running_var.index_select(0, pick.to(module.running_var.device))
        return
    if isinstance(module, nn.LayerNorm):
        module.normalized_shape = (width,)
    elif isinstance(module, nn.GroupNorm):
        if width % module.num_groups:
            raise ValueError(f"{norm.name}: width {width} not divisible by {module.num_groups} groups")
        module.num_channels = width
    else:
        raise TypeError(f"cannot resize {type(module).__name__} ({norm.name})")
    if module.weight is not None:
        module.weight = _resized(module.weight, (width,), torch.ones(width).to(module.weight), picks)
    if module.bias is not None:
        module.bias = _resized(module.bias, (width,), torch.zeros(width).to(module.bias), picks)

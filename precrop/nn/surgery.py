"""Resize a dense model's layers to new per-group widths, driven by its LayerTable.

Every conv, linear, norm and channel-pad module is given the shapes the widths imply. Weights that
survive keep their leading slice (so shrinking equals slicing, as torch-pruning would do); weights
of grown dimensions are freshly initialized. Training from the resized model is meant to start from
a re-initialization of the whole model with the family's own init (see the allocation step).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from precrop.nn.zoo.cifar_resnet import ChannelPad
from precrop.width.costmodel import Layer, LayerTable, NormTerm


def resize_to_widths(model: nn.Module, table: LayerTable, widths: Mapping[str, int]) -> nn.Module:
    """Resize `model` (traced into `table`) in place to `widths`; returns the same model."""
    full = table.full_widths(widths)
    modules = dict(model.named_modules())
    for layer in table.layers:
        _resize_layer(modules[layer.name], layer, full)
    for norm in table.norms:
        _resize_norm(modules[norm.name], norm, norm.width(full))
    return model


def _resized(old: torch.Tensor, shape: tuple[int, ...], init: torch.Tensor | None = None) -> nn.Parameter:
    """A parameter of `shape` holding the overlapping leading slice of `old`, the rest from `init`."""
    new = init if init is not None else torch.zeros(shape, dtype=old.dtype, device=old.device)
    overlap = tuple(slice(0, min(a, b)) for a, b in zip(old.shape, shape, strict=True))
    with torch.no_grad():
        new[overlap] = old[overlap]
    return nn.Parameter(new, requires_grad=old.requires_grad)


def _resize_layer(module: nn.Module, layer: Layer, widths: Mapping[str, int]) -> None:
    w_out = widths[layer.out_group]
    w_in = layer.in_width(widths)
    if isinstance(module, ChannelPad):
        module.in_channels, module.out_channels = w_in, w_out
        return
    if isinstance(module, nn.Linear):
        in_features = w_in * layer.in_per_channel
        if (module.out_features, module.in_features) == (w_out, in_features):
            return
        fresh = nn.Linear(in_features, w_out, bias=module.bias is not None).to(module.weight)
        module.weight = _resized(module.weight, (w_out, in_features), fresh.weight.data)
        if module.bias is not None:
            module.bias = _resized(module.bias, (w_out,), fresh.bias.data)
        module.in_features, module.out_features = in_features, w_out
        return
    assert isinstance(module, nn.Conv2d), f"unexpected module type {type(module).__name__}"
    groups = w_out if layer.depthwise else layer.conv_groups
    if (module.out_channels, module.in_channels, module.groups) == (w_out, w_in, groups):
        return
    kernel = (module.kernel_size[0], module.kernel_size[1])
    fresh_conv = nn.Conv2d(w_in, w_out, kernel, groups=groups, bias=module.bias is not None).to(module.weight)
    module.weight = _resized(module.weight, tuple(fresh_conv.weight.shape), fresh_conv.weight.data)
    if module.bias is not None:
        assert fresh_conv.bias is not None
        module.bias = _resized(module.bias, (w_out,), fresh_conv.bias.data)
    module.in_channels, module.out_channels, module.groups = w_in, w_out, groups


def _resize_norm(module: nn.Module, norm: NormTerm, width: int) -> None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.num_features == width:
            return
        module.num_features = width
        if module.affine:
            module.weight = _resized(module.weight, (width,), torch.ones(width).to(module.weight))
            module.bias = _resized(module.bias, (width,), torch.zeros(width).to(module.bias))
        if module.running_mean is not None and module.running_var is not None:
            module.running_mean = torch.zeros(width).to(module.running_mean)
            module.running_var = torch.ones(width).to(module.running_var)
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
        module.weight = _resized(module.weight, (width,), torch.ones(width).to(module.weight))
    if module.bias is not None:
        module.bias = _resized(module.bias, (width,), torch.zeros(width).to(module.bias))

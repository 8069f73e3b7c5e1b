"""Trace a dense torch model into a pure-data LayerTable, using torch-pruning's dependency graph.

torch-pruning finds which channels are coupled (residual adds, depthwise convs, concatenations,
elementwise products such as squeeze-excitation); each coupled set becomes one ChannelGroup. Forward
hooks record every conv/linear layer's output size, and which layers feed a sigmoid-like gate (`GATES`):
those and the layers that feed only them form gate branches (`Layer.gate`). The result is checked
against counted cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from precrop.errors import UserError
from precrop.nn.counting import count_cost
from precrop.nn.pruning_lib import tp
from precrop.nn.zoo.cifar_resnet import ChannelPad
from precrop.nn.zoo.spec import first_line, shown
from precrop.width.costmodel import (
    INPUT_GROUP,
    LOGITS_GROUP,
    ChannelGroup,
    Layer,
    LayerTable,
    NormTerm,
)

RESIZABLE_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
LAYER_TYPES = (nn.Conv2d, nn.Linear, ChannelPad)
# Sigmoid-like gates: the `scale_activation` of torchvision's SqueezeExcitation (EfficientNet, MobileNetV3,
# RegNet) and timm's `gate`. A layer whose output is a gate's input starts a gate branch.
GATES: tuple[type[nn.Module], ...] = (nn.Sigmoid, nn.Hardsigmoid)


class TracingError(UserError, RuntimeError):
    """The model contains a structure the layer table cannot describe exactly (a user error: one line, exit 2)."""


class ChannelPadPruner(tp.pruner.function.BasePruningFunc):
    """Tells torch-pruning that ChannelPad's input and output channels are independent."""

    TARGET_MODULES = ChannelPad

    def prune_out_channels(self, layer: ChannelPad, idxs: Sequence[int]) -> ChannelPad:
        layer.out_channels -= len(idxs)
        return layer

    def prune_in_channels(self, layer: ChannelPad, idxs: Sequence[int]) -> ChannelPad:
        layer.in_channels -= len(idxs)
        return layer

    def get_out_channels(self, layer: ChannelPad) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ChannelPad) -> int:
        return layer.in_channels


CUSTOM_PRUNERS: dict[Any, Any] = {ChannelPad: ChannelPadPruner()}


@dataclass
class _GroupInfo:
    """Members of one dependency-graph group, gathered before names are assigned."""

    width: int
    producers: list[nn.Module] = field(default_factory=list)
    fixed: bool = False


def is_depthwise(module: nn.Module) -> bool:
    """A conv whose every output channel reads exactly one input channel of its own."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


@dataclass
class _Forward:
    """What one forward pass showed: conv/linear/pad layers in order, their output shapes, and the layers whose
    output a gate module took as its input."""

    order: list[nn.Module] = field(default_factory=list)
    shapes: dict[nn.Module, tuple[int, ...]] = field(default_factory=dict)
    gated: set[nn.Module] = field(default_factory=set)


def _record_forward(model: nn.Module, x: torch.Tensor) -> _Forward:
    """Run `model` on `x` once, recording the layers' order and shapes and which of them feed a gate."""
    seen = _Forward()
    outputs: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # the tensors stay alive, so no id is reused

    def layer_hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if module not in seen.shapes:
            seen.order.append(module)
        seen.shapes[module] = tuple(output.shape)
        outputs[id(output)] = (module, output)

    def gate_hook(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
        if inputs and id(inputs[0]) in outputs:
            seen.gated.add(outputs[id(inputs[0])][0])

    handles = [m.register_forward_hook(layer_hook) for m in model.modules() if isinstance(m, LAYER_TYPES)]
    handles += [m.register_forward_pre_hook(gate_hook) for m in model.modules() if isinstance(m, GATES)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def mark_gate_branches(layers: Sequence[Layer], gated: set[str]) -> list[Layer]:
    """`layers` with `gate` set on every layer of a gate branch: the layers in `gated` (a gate reads their
    output), then, until nothing changes, every layer whose output group has readers and is read by gate layers
    only (a squeeze-excitation block's first conv, whose hidden group only its second conv reads)."""
    branch = set(gated)
    readers: dict[str, set[str]] = {}
    for layer in layers:
        for group in layer.in_groups:
            readers.setdefault(group, set()).add(layer.name)
    changed = True
    while changed:
        changed = False
        for layer in layers:
            read_by = readers.get(layer.out_group, set())
            if layer.name not in branch and read_by and read_by <= branch:
                branch.add(layer.name)
                changed = True
    return [dataclasses.replace(layer, gate=layer.name in branch) for layer in layers]


def trace_layer_table(
    model: nn.Module, arch: str, input_size: int, num_classes: int, *, verify: bool = True
) -> LayerTable:
    """Build the LayerTable of `model` for square inputs of side `input_size`.

    Raises TracingError, with the reason, for structures the table cannot express exactly
    (channel splits and shuffles, for instance), never a silently wrong table.
    """
    try:
        table = _trace(model, arch, input_size, num_classes)
        if verify:
            verify_table(table, model)
    except TracingError:
        raise
    except (Exception, SystemExit) as exc:  # torch-pruning, or the model's own forward (even sys.exit), failing
        raise TracingError(f"cannot trace {shown(arch)}: {first_line(exc)}") from exc
    return table


def _trace(model: nn.Module, arch: str, input_size: int, num_classes: int) -> LayerTable:
    model.eval()
    x = torch.randn(1, 3, input_size, input_size)
    forward = _record_forward(model, x)
    order, shapes = forward.order, forward.shapes
    if not order:
        raise TracingError(f"{arch} has no Conv2d or Linear layer")
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=x, customized_pruners=CUSTOM_PRUNERS, verbose=False
    )
    _refuse_channel_slices(graph, arch)
    infos, out_group, in_segments, norm_group = _collect_groups(graph)
    names = {m: n for n, m in model.named_modules()}
    rank = {m: i for i, m in enumerate(order)}
    group_names = _name_groups(infos, names, rank, order[-1])
    widths_by_id = {gid: info.width for gid, info in enumerate(infos)}
    layers = []
    for module in order:
        layer = _layer_entry(module, names[module], shapes[module], out_group, in_segments, group_names, widths_by_id)
        layers.append(layer)
        if layer.kind == "conv" and layer.conv_groups > 1 and not layer.depthwise:
            for g in (*layer.in_groups, layer.out_group):
                _mark_fixed(infos, group_names, g)
    layers = mark_gate_branches(layers, {names[m] for m in forward.gated})
    norms = [
        _norm_entry(m, names[m], tuple(group_names[g] for g in gids), sum(infos[g].width for g in gids))
        for m, gids in norm_group.items()
    ]
    _check_logits(infos, group_names, arch, num_classes)
    groups = [ChannelGroup(INPUT_GROUP, 3, fixed=True)]
    for gid in sorted(group_names, key=lambda g: min(rank.get(p, len(rank)) for p in infos[g].producers)):
        name = group_names[gid]
        groups.append(ChannelGroup(name, infos[gid].width, fixed=infos[gid].fixed or name == LOGITS_GROUP))
    owners = [*order, *norm_group]
    table = LayerTable(
        arch, (3, input_size, input_size), num_classes, tuple(groups), tuple(layers), tuple(norms),
        fixed_params=_unowned_params(model, owners),
    )  # fmt: skip
    return table


def _refuse_channel_slices(graph: Any, arch: str) -> None:
    """TracingError for a forward that slices part of a tensor's channels (`x[:, a:b]`, as ReXNet does).

    The table cannot express a layer reading part of a group, and torch-pruning's index mapping through
    such slices can take practically forever on a deep model, so they are refused before grouping.
    """
    for module in graph.module2node:
        if not isinstance(module, tp.ops._SliceOp):
            continue
        sizes = tuple(getattr(module.grad_fn, "_saved_self_sym_sizes", ()) or ())
        dim = module.dim % len(sizes) if sizes else module.dim
        if dim != 1:
            continue
        whole = bool(sizes) and module.start == 0 and module.step == 1 and module.end >= sizes[1]
        if not whole:
            raise TracingError(f"{shown(arch)} slices part of a tensor's channels (x[:, a:b]); not supported")


def _check_logits(infos: list[_GroupInfo], group_names: dict[int, str], arch: str, num_classes: int) -> None:
    """The classifier must predict the `num_classes` asked for (a fixed head may build another number)."""
    for gid, name in group_names.items():
        if name == LOGITS_GROUP and infos[gid].width != num_classes:
            raise TracingError(f"{shown(arch)} outputs {infos[gid].width} classes, but {num_classes} were asked for")


def _collect_groups(
    graph: Any,
) -> tuple[
    list[_GroupInfo], dict[nn.Module, int], dict[nn.Module, list[tuple[int, int, int]]], dict[nn.Module, list[int]]
]:
    """Walk every coupled group: who produces it, who reads which slice of it, which norms it holds."""
    infos: list[_GroupInfo] = []
    out_group: dict[nn.Module, int] = {}
    in_segments: dict[nn.Module, list[tuple[int, int, int]]] = {}
    norm_group: dict[nn.Module, list[int]] = {}
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
        gid = len(infos)
        info = _GroupInfo(width=len(group[0].idxs))
        infos.append(info)
        for item in group:
            module, handler, idxs = item.dep.target.module, item.dep.handler, list(item.idxs)
            is_out = graph.is_out_channel_pruning_fn(handler)
            is_in = graph.is_in_channel_pruning_fn(handler)
            if isinstance(module, LAYER_TYPES):
                if is_depthwise(module) or is_out:
                    out_group[module] = gid
                    info.producers.append(module)
                if is_depthwise(module) or (is_in and not is_out):
                    segment = (min(int(i) for i in idxs), len(idxs), gid)
                    if segment not in in_segments.setdefault(module, []):
                        in_segments[module].append(segment)
            elif isinstance(module, RESIZABLE_NORMS):
                if gid not in norm_group.setdefault(module, []):
                    norm_group[module].append(gid)
            elif isinstance(module, nn.Module) and not any(True for _ in module.parameters(recurse=False)):
                continue  # parameter-free ops (activations, pooling) follow their producer
            else:
                info.fixed = True  # unwrapped parameters or exotic modules: keep this group's width
    return infos, out_group, in_segments, norm_group


def _name_groups(
    infos: list[_GroupInfo], names: dict[nn.Module, str], rank: dict[nn.Module, int], classifier: nn.Module
) -> dict[int, str]:
    """Name each group after its first producer in forward order; the classifier's is `logits`."""
    group_names: dict[int, str] = {}
    for gid, info in enumerate(infos):
        producers = sorted(info.producers, key=lambda m: rank.get(m, len(rank)))
        if not producers:
            raise TracingError("a channel group has no conv/linear producer")
        group_names[gid] = LOGITS_GROUP if classifier in producers else names[producers[0]]
    return group_names


def _mark_fixed(infos: list[_GroupInfo], group_names: dict[int, str], name: str) -> None:
    for gid, gname in group_names.items():
        if gname == name:
            infos[gid].fixed = True


def _layer_entry(
    module: nn.Module,
    name: str,
    out_shape: tuple[int, ...],
    out_group: dict[nn.Module, int],
    in_segments: dict[nn.Module, list[tuple[int, int, int]]],
    group_names: dict[int, str],
    group_widths: dict[int, int],
) -> Layer:
    """One Layer row for `module`."""
    if module not in out_group:
        raise TracingError(f"layer {name} is not in any channel group")
    segments = sorted(in_segments.get(module, []))
    in_groups = tuple(group_names[gid] for _, _, gid in segments) or (INPUT_GROUP,)
    covered = sum(length for _, length, _ in segments)
    out = group_names[out_group[module]]
    if isinstance(module, ChannelPad):
        return Layer(name, "channel_pad", in_groups, out)
    if isinstance(module, nn.Linear):
        in_channels = sum(group_widths[gid] for _, _, gid in segments) if segments else 3
        if module.in_features % in_channels:
            raise TracingError(f"layer {name}: {module.in_features} inputs do not split over its channels")
        positions = 1
        for d in out_shape[1:-1]:
            positions *= d
        return Layer(
            name, "linear", in_groups, out, bias=module.bias is not None,
            out_hw=(1, positions), in_per_channel=module.in_features // in_channels,
        )  # fmt: skip
    assert isinstance(module, nn.Conv2d)
    if not segments and module.in_channels != 3:
        raise TracingError(f"layer {name} reads {module.in_channels} channels from no known group")
    if segments and not is_depthwise(module) and covered != module.in_channels:
        raise TracingError(f"layer {name} reads a split of a channel group; not supported")
    kh, kw = module.kernel_size
    return Layer(
        name, "conv", in_groups, out, kernel=(kh, kw), conv_groups=module.groups,
        depthwise=is_depthwise(module), bias=module.bias is not None, out_hw=(out_shape[2], out_shape[3]),
    )  # fmt: skip


def _norm_entry(module: nn.Module, name: str, groups: tuple[str, ...], width: int) -> NormTerm:
    params = sum(p.numel() for p in module.parameters(recurse=False))
    if params % width:
        raise TracingError(f"norm layer {name} has {params} parameters for {width} channels")
    return NormTerm(name, groups, params // width)


def _unowned_params(model: nn.Module, owners: list[nn.Module]) -> int:
    """Parameters that belong to no traced layer or norm: a fixed cost (e.g. unused aux heads)."""
    owned = {id(p) for m in owners for p in m.parameters(recurse=False)}
    return sum(p.numel() for p in model.parameters() if id(p) not in owned)


def verify_table(table: LayerTable, model: nn.Module, widths: dict[str, int] | None = None) -> None:
    """Raise TracingError unless the table's prediction equals the counted cost of `model`."""
    predicted = table.cost(widths or {})
    counted = count_cost(model, table.input_shape)
    if predicted != counted:
        raise TracingError(f"cost model of {table.arch} is not exact: predicted {predicted}, counted {counted}")

"""`precrop info`: trace an architecture and present its layer table; `precrop info --list`: name models."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from precrop.errors import UserError
from precrop.textui import format_table, human
from precrop.width.costmodel import LayerTable

if TYPE_CHECKING:
    from precrop.nn.zoo import ArchSpec

SOURCES_HELP = (
    ("torchvision:<name>", "any torchvision classification model, e.g. torchvision:resnet18"),
    ("timm:<name>", "any timm model that traces, e.g. timm:mobilenetv3_small_050 "
     "(pip install 'precrop-search[timm]')"),
    ("module.path:callable", "your own constructor returning an nn.Module, e.g. mymodels:small_net; called "
     "with num_classes=N when it takes that argument"),
)  # fmt: skip


def describe(arch: str, num_classes: int | None = None, input_size: int | None = None) -> LayerTable:
    """Build `arch` densely and trace its layer table (UserError for unknown or untraceable archs)."""
    from precrop.nn.build import layer_table
    from precrop.nn.tracing import TracingError
    from precrop.nn.zoo import REGISTRY

    size = input_size or REGISTRY.get(arch).input_size
    try:
        return layer_table(arch, num_classes, size, verify=True)
    except TracingError as exc:
        raise UserError(f"{arch[:80]} at input size {size} is not supported: {exc}") from exc


def list_models(as_json: bool = False) -> str:
    """The built-in names with their descriptions, and the syntax of every model source."""
    from precrop.nn.zoo import REGISTRY

    builtins = [[s.name, s.description, s.num_classes, s.input_size] for s in REGISTRY]
    if as_json:
        return json.dumps({
            "builtins": [dict(zip(("name", "description", "num_classes", "input_size"), row, strict=True))
                         for row in builtins],
            "sources": [{"form": form, "description": text} for form, text in SOURCES_HELP],
        })  # fmt: skip
    return "\n\n".join([
        "Built-in architectures",
        format_table(["name", "description", "classes", "input"], builtins),
        "Model sources (anywhere a model is named: info, allocate, train, model.arch in a config)",
        format_table(["source", "what it builds"], [list(row) for row in SOURCES_HELP]),
    ])  # fmt: skip


def info_dict(table: LayerTable, spec: ArchSpec | None = None) -> dict[str, Any]:
    """The JSON object `precrop info --json` prints (with the spec's description and normalization)."""
    base = table.base_widths
    cost = table.cost()
    described = {} if spec is None else {"description": spec.description, "mean": spec.mean, "std": spec.std}
    return {
        "arch": table.arch,
        **described,
        "num_classes": table.num_classes,
        "input_shape": list(table.input_shape),
        "params": cost.params,
        "macs": cost.macs,
        "fixed_params": table.fixed_params,
        "groups": [
            {"name": g.name, "width": g.width, "fixed": g.fixed, "layers": table.layers_touching(g.name)}
            for g in table.groups
        ],
        "layers": [
            {
                "name": layer.name,
                "kind": layer.kind,
                "in_groups": list(layer.in_groups),
                "out_group": layer.out_group,
                "kernel": list(layer.kernel),
                "groups": layer.conv_groups,
                "depthwise": layer.depthwise,
                "bias": layer.bias,
                "out_hw": list(layer.out_hw),
                "in_per_channel": layer.in_per_channel,
                "params": layer.params(base),
                "macs": layer.macs(base),
            }
            for layer in table.layers
        ],
        "norms": [{"name": n.name, "groups": list(n.groups), "per_channel": n.per_channel} for n in table.norms],
    }


def render_info(table: LayerTable, spec: ArchSpec | None = None) -> str:
    """Human-readable groups table, layers table and totals (and the spec's input normalization)."""
    base = table.base_widths
    group_rows = [
        [g.name, g.width, table.layers_touching(g.name), "fixed" if g.fixed else "prunable"] for g in table.groups
    ]
    layer_rows = [
        [
            layer.name,
            "dwconv" if layer.depthwise else layer.kind,
            "+".join(layer.in_groups),
            layer.out_group,
            f"{layer.kernel[0]}x{layer.kernel[1]}",
            f"{layer.out_hw[0]}x{layer.out_hw[1]}",
            layer.params(base),
            layer.macs(base),
        ]
        for layer in table.layers
    ]
    cost = table.cost()
    c, h, w = table.input_shape
    footer = (
        f"{table.arch}: {len(table.prunable_groups)} prunable channel groups, {len(table.layers)} layers, "
        f"input {c}x{h}x{w}, {table.num_classes} classes\n"
        f"total: {cost.params:,} params ({human(cost.params)}), {cost.macs:,} MACs ({human(cost.macs)})"
    )
    if table.fixed_params:
        footer += f"\n{table.fixed_params:,} params outside traced layers are counted as a fixed cost"
    if spec is not None and spec.mean is not None and spec.std is not None:
        footer += f"\ndesigned for inputs normalized with mean {_floats(spec.mean)}, std {_floats(spec.std)}"
    return "\n\n".join(
        [
            "Channel groups",
            format_table(["group", "width", "layers", "status"], group_rows),
            "Layers",
            format_table(["layer", "kind", "reads", "writes", "kernel", "out", "params", "MACs"], layer_rows),
            footer,
        ]
    )


def _floats(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

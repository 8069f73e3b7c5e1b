"""The `path` objective: which layers it leaves out, and the identity contract (where no layer is left out, the
`layer` and `path` objectives give the same widths bit for bit)."""

from __future__ import annotations

import math

import pytest

from precrop.nn.build import layer_table
from precrop.nn.zoo import REGISTRY
from precrop.width.allocate import AllocationRequest, BudgetError, SynExpAllocator
from precrop.width.costmodel import ChannelGroup, Layer, LayerTable
from precrop.width.objective import adds_no_path_factor, scored_layers, synexp_objective
from tests.precrop.conftest import cached_table

# timm CNN families with neither depthwise convs nor gates (traced at 64x64, 10 classes)
TIMM_PLAIN = ["resnet10t", "regnetx_002", "repvgg_a0", "darknet17", "densenet121", "hrnet_w18_small"]


def inverted_residual() -> LayerTable:
    """stem 3->16, expand 16->48, depthwise 48, project 48->16 (added to the stream), head 16->10."""
    groups = (ChannelGroup("input", 3, fixed=True), ChannelGroup("s", 16), ChannelGroup("e", 48),
              ChannelGroup("logits", 10, fixed=True))  # fmt: skip
    layers = (
        Layer("stem", "conv", ("input",), "s", kernel=(3, 3), out_hw=(8, 8)),
        Layer("expand", "conv", ("s",), "e", out_hw=(8, 8)),
        Layer("dw", "conv", ("e",), "e", kernel=(3, 3), conv_groups=48, depthwise=True, out_hw=(8, 8)),
        Layer("project", "conv", ("e",), "s", out_hw=(8, 8)),
        Layer("head", "linear", ("s",), "logits"),
    )
    return LayerTable("toy", (3, 8, 8), 10, groups, layers)


def test_path_leaves_out_depthwise_layers_and_counts_each_other_mask_by_writer_and_reader() -> None:
    table = inverted_residual()
    assert [layer.name for layer in scored_layers(table, "path")] == ["stem", "expand", "project", "head"]
    half = {"s": 8, "e": 24}
    log_half = math.log(0.5)
    # layer: s by stem, expand, project, head (4); e by expand, dw, project (3)
    assert synexp_objective(table, half, "layer") == pytest.approx(7 * log_half)
    # path: e by its writer and its reader only (2), like any other mask
    assert synexp_objective(table, half, "path") == pytest.approx(6 * log_half)


def test_a_gate_branch_adds_no_path_factor() -> None:
    fc = Layer("se.fc2", "conv", ("h",), "e", out_hw=(1, 1), gate=True)
    dense = Layer("conv", "conv", ("e",), "e")  # reads and writes one group, but not channel by channel
    assert adds_no_path_factor(fc) and not adds_no_path_factor(dense)


def test_an_unknown_objective_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown objective 'paths'"):
        scored_layers(inverted_residual(), "paths")
    with pytest.raises(BudgetError, match="unknown objective 'paths'; choose one of layer, path"):
        AllocationRequest(macs=0.5, objective="paths").validate()


def _plain(table: LayerTable) -> bool:
    return not any(adds_no_path_factor(layer) for layer in table.layers)


PLAIN_BUILTINS = [name for name in REGISTRY.names() if not name.startswith(("mobilenet", "efficientnet"))]


def test_the_builtins_named_plain_are_the_ones_without_depthwise_or_gates() -> None:
    assert {name for name in REGISTRY.names() if _plain(cached_table(name))} == set(PLAIN_BUILTINS)


@pytest.mark.parametrize("arch", [*PLAIN_BUILTINS, *(f"timm:{name}" for name in TIMM_PLAIN)])
@pytest.mark.parametrize("budget", [{"macs": 0.4}, {"params": 0.5}, {"macs": 0.6, "params": 0.6}])
def test_layer_and_path_give_the_same_widths_where_no_layer_is_left_out(arch: str, budget: dict[str, float]) -> None:
    table = cached_table(arch) if not arch.startswith("timm:") else _timm_table(arch)
    assert _plain(table)
    allocator = SynExpAllocator()
    layer = allocator.allocate(table, AllocationRequest(**budget, objective="layer"))
    path = allocator.allocate(table, AllocationRequest(**budget, objective="path"))
    assert dict(layer.widths) == dict(path.widths)
    assert layer.options["objective"] == "layer" and path.options["objective"] == "path"


def _timm_table(arch: str) -> LayerTable:
    pytest.importorskip("timm")
    return _traced(arch)


_TRACED: dict[str, LayerTable] = {}


def _traced(arch: str) -> LayerTable:
    if arch not in _TRACED:
        _TRACED[arch] = layer_table(arch, 10, 64)
    return _TRACED[arch]


def test_path_moves_width_from_expansions_to_streams_on_mobilenetv2() -> None:
    """Issue 27's finding: `layer` narrows MobileNetV2's streams to 8-40 channels and keeps expansions full."""
    table = cached_table("mobilenetv2_cifar")
    allocator = SynExpAllocator()
    plans = {o: allocator.allocate(table, AllocationRequest(macs=0.3, objective=o)) for o in ("layer", "path")}
    streams = ["features.2.conv.2", "features.4.conv.2", "features.7.conv.2", "features.17.conv.2"]
    expansions = ["features.8.conv.0.0", "features.17.conv.0.0"]
    assert all(plans["path"].widths[g] > plans["layer"].widths[g] for g in streams)
    assert all(plans["path"].widths[g] < plans["layer"].widths[g] for g in expansions)
    for objective, plan in plans.items():  # each plan is the better one under its own objective
        other = plans["path" if objective == "layer" else "layer"]
        assert synexp_objective(table, plan.widths, objective) > synexp_objective(table, other.widths, objective)

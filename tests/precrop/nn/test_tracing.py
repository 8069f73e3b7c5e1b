"""The traced layer table must predict the counted cost of every built-in arch exactly."""

from __future__ import annotations

import random

import pytest

from precrop.nn.counting import count_cost
from precrop.nn.surgery import resize_to_widths
from precrop.nn.tracing import TracingError, trace_layer_table
from precrop.nn.zoo import REGISTRY, build_model
from precrop.nn.zoo.cifar_resnet import CifarResNet
from precrop.width.costmodel import LayerTable

BUILTINS = REGISTRY.names()


def _table(arch: str, input_size: int | None = None) -> LayerTable:
    spec = REGISTRY.get(arch)
    size = input_size or spec.input_size
    return trace_layer_table(spec.build(spec.num_classes), arch, size, spec.num_classes, verify=False)


def _random_widths(table: LayerTable, seed: int, grow: bool) -> dict[str, int]:
    rng = random.Random(seed)
    top = 2 if grow else 1
    return {g.name: rng.randint(max(1, g.width // 4), g.width * top) for g in table.prunable_groups}


@pytest.mark.parametrize("arch", BUILTINS)
def test_prediction_equals_count_at_base_and_random_widths(arch: str) -> None:
    table = _table(arch)
    assert table.cost() == count_cost(build_model(arch), table.input_shape)
    assert len(table.prunable_groups) >= 3
    for seed, grow in ((1, False), (2, False), (3, True)):
        widths = _random_widths(table, seed, grow)
        model = resize_to_widths(build_model(arch), table, widths)
        counted = count_cost(model, table.input_shape)
        predicted = table.cost(widths)
        assert predicted.params == counted.params, (arch, seed)
        assert predicted.macs == counted.macs, (arch, seed)
        assert predicted.params < table.cost().params or grow


@pytest.mark.parametrize(
    ("arch", "params", "macs", "rel"),
    [
        ("resnet50", 25_557_032, 4.09e9, 0.005),
        ("cifar_resnet20", 0.27e6, 40.6e6, 0.005),
        ("mobilenetv2", 3.50e6, 300e6, 0.005),
        ("efficientnet_b0", 5.29e6, 0.39e9, 0.015),
    ],
)
def test_known_totals(arch: str, params: float, macs: float, rel: float) -> None:
    cost = _table(arch).cost()
    if arch == "resnet50":
        assert cost.params == 25_557_032
    assert cost.params == pytest.approx(params, rel=0.01)
    assert cost.macs == pytest.approx(macs, rel=rel)


def test_exact_cifar_resnet20_numbers() -> None:
    cost = _table("cifar_resnet20").cost()
    assert (cost.params, cost.macs) == (269_722, 40_551_040)


def test_cifar_resnet_groups_match_native_constructor() -> None:
    """Widths applied to the traced table cost the same as CifarResNet built natively at those widths."""
    table = _table("cifar_resnet20")
    streams = (12, 24, 40)
    inner = [8, 16, 10, 20, 24, 32, 48, 56, 64]
    widths = {"conv1": streams[0], "layer2.0.conv2": streams[1], "layer3.0.conv2": streams[2]}
    for i, width in enumerate(inner):
        widths[f"layer{i // 3 + 1}.{i % 3}.conv1"] = width
    assert set(widths) == {g.name for g in table.prunable_groups}
    native = CifarResNet(20, 10, stream_widths=streams, inner_widths=inner)
    assert table.cost(widths) == count_cost(native, (3, 32, 32))


def test_residual_stream_is_one_group() -> None:
    table = _table("resnet50")
    stage1 = table.group("layer1.0.conv3")
    assert stage1.width == 256
    writers = [layer.name for layer in table.layers if layer.out_group == stage1.name]
    assert writers == ["layer1.0.conv3", "layer1.0.downsample.0", "layer1.1.conv3", "layer1.2.conv3"]


def test_depthwise_conv_shares_its_producers_group() -> None:
    table = _table("mobilenetv2")
    dw = next(layer for layer in table.layers if layer.name == "features.2.conv.1.0")
    assert dw.depthwise
    assert dw.in_groups == (dw.out_group,) == ("features.2.conv.0.0",)


def test_squeeze_excitation_couples_to_the_depthwise_group() -> None:
    table = _table("efficientnet_b0")
    fc2 = next(layer for layer in table.layers if layer.name == "features.1.0.block.1.fc2")
    dw = next(layer for layer in table.layers if layer.name == "features.1.0.block.0.0")
    assert fc2.out_group == dw.out_group
    assert fc2.out_hw == (1, 1)


def test_torchvision_concat_model_is_exact() -> None:
    arch = "torchvision:densenet121"
    table = _table(arch, input_size=64)
    assert len(table.prunable_groups) > 100
    widths = _random_widths(table, seed=4, grow=False)
    model = resize_to_widths(build_model(arch), table, widths)
    assert table.cost(widths) == count_cost(model, table.input_shape)


def test_unsupported_channel_shuffle_raises_clearly() -> None:
    with pytest.raises(TracingError, match="shufflenet"):
        _table("torchvision:shufflenet_v2_x0_5", input_size=64)

"""The pure cost model: hand-computed numbers, validation, JSON round trip, no torch import."""

from __future__ import annotations

import pytest

from precrop.width.costmodel import ChannelGroup, Cost, Layer, LayerTable, NormTerm


def _toy_table() -> LayerTable:
    """input(3) -> conv a(8) 3x3 @16x16 -> depthwise a 3x3 @8x8 -> conv b(4) 1x1 -> cat(a, b) -> linear over 2x2."""
    groups = (
        ChannelGroup("input", 3, fixed=True),
        ChannelGroup("a", 8),
        ChannelGroup("b", 4),
        ChannelGroup("logits", 10, fixed=True),
    )
    layers = (
        Layer("stem", "conv", ("input",), "a", kernel=(3, 3), bias=True, out_hw=(16, 16)),
        Layer("dw", "conv", ("a",), "a", kernel=(3, 3), conv_groups=8, depthwise=True, out_hw=(8, 8)),
        Layer("pw", "conv", ("a",), "b", out_hw=(8, 8)),
        Layer("fc", "linear", ("a", "b"), "logits", bias=True, in_per_channel=4),
    )
    norms = (NormTerm("bn_a", ("a",), 2), NormTerm("bn_cat", ("a", "b"), 2))
    return LayerTable("toy", (3, 16, 16), 10, groups, layers, norms, fixed_params=5)


def test_base_cost_matches_hand_count() -> None:
    stem = 8 * 3 * 9 + 8
    dw = 8 * 9
    pw = 4 * 8
    fc = 10 * (8 + 4) * 4 + 10
    norms = 2 * 8 + 2 * 12
    macs = 8 * 3 * 9 * 256 + 8 * 9 * 64 + 4 * 8 * 64 + 10 * 12 * 4
    assert _toy_table().cost() == Cost(params=stem + dw + pw + fc + norms + 5, macs=macs)


def test_cost_at_narrower_widths() -> None:
    cost = _toy_table().cost({"a": 5, "b": 2})
    params = (5 * 27 + 5) + 5 * 9 + 2 * 5 + (10 * 7 * 4 + 10) + 2 * 5 + 2 * 7 + 5
    macs = 5 * 27 * 256 + 5 * 9 * 64 + 2 * 5 * 64 + 10 * 7 * 4
    assert cost == Cost(params=params, macs=macs)


def test_grouped_conv_divides_input_channels() -> None:
    layer = Layer("g", "conv", ("x",), "y", kernel=(3, 3), conv_groups=4, out_hw=(2, 2))
    assert layer.params({"x": 16, "y": 8}) == 8 * 4 * 9
    assert layer.macs({"x": 16, "y": 8}) == 8 * 4 * 9 * 4


@pytest.mark.parametrize(
    ("widths", "message"),
    [
        ({"nope": 3}, "unknown channel group"),
        ({"a": 0}, "positive integer"),
        ({"a": 2.5}, "positive integer"),
        ({"logits": 5}, "fixed"),
    ],
)
def test_invalid_widths_are_rejected(widths: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _toy_table().cost(widths)


def test_unknown_group_reference_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown group"):
        LayerTable("bad", (3, 8, 8), 2, (ChannelGroup("input", 3, True),), (Layer("l", "conv", ("input",), "z"),))


def test_json_round_trip_preserves_table_and_cost() -> None:
    table = _toy_table()
    again = LayerTable.from_json(table.to_json())
    assert again == table
    assert again.cost({"a": 3}) == table.cost({"a": 3})


def test_other_schema_version_is_rejected() -> None:
    data = _toy_table().to_dict()
    data["schema_version"] = 99
    with pytest.raises(ValueError, match="schema version"):
        LayerTable.from_dict(data)


def test_layers_touching_counts_readers_and_writers() -> None:
    table = _toy_table()
    assert table.layers_touching("a") == 4  # stem writes, dw reads+writes (counted once), pw and fc read
    assert table.layers_touching("b") == 2


"""The study's arms: families from the traced graph, and ablation plans that pin one family at equal cost."""

from __future__ import annotations

import pytest
from study_arms import FAMILIES, ablation_arm, channel_plan, group_families, parse_arm

from precrop.nn.build import layer_table
from precrop.width.objective import OBJECTIVES


@pytest.fixture(scope="module")
def mbv2():
    return layer_table("mobilenetv2_cifar", 10, 32)


def test_mobilenetv2_families_follow_the_graph(mbv2):
    families = group_families(mbv2)
    # 17 blocks: the stem feeds block 1's depthwise conv, blocks 2-17 expand; 7 stream widths (one per
    # stage: a stage's blocks share their residual stream) and the 1x1 conv before the classifier
    assert sorted(g for g, f in families.items() if f == "head") == ["features.18.0"]
    assert sum(f == "expansions" for f in families.values()) == 17
    assert families["features.0.0"] == "expansions"
    streams = sorted(g for g, f in families.items() if f == "streams")
    assert streams == sorted(["features.1.conv.1", "features.2.conv.2", "features.4.conv.2", "features.7.conv.2",
                              "features.11.conv.2", "features.14.conv.2", "features.17.conv.2"])  # fmt: skip


def test_resnet_has_no_expansions():
    families = group_families(layer_table("cifar_resnet20", 10, 32))
    assert "expansions" not in families.values()
    assert list(families.values()).count("head") == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_ablation_pins_the_family_at_uniform_widths_within_budget(mbv2, family):
    uniform = channel_plan(mbv2, "uniform", "macs", 0.3)
    path = channel_plan(mbv2, "path", "macs", 0.3)
    blend = channel_plan(mbv2, ablation_arm("path", family), "macs", 0.3)
    families = group_families(mbv2)
    moved = [g for g, f in families.items() if f == family]
    assert all(blend.widths[g] == uniform.widths[g] for g in moved)
    assert any(blend.widths[g] != path.widths[g] for g in moved)  # the move changes something
    # equal counted cost: at most the budget, and within one 8-channel step of it (repair fills up)
    base = mbv2.cost().macs
    assert blend.counted.macs <= 0.3 * base
    assert blend.counted.macs >= 0.29 * base
    assert blend.options["moved_groups"] == sorted(moved)


def test_arm_names_are_checked():
    assert parse_arm("layer") == ("layer", None)
    assert parse_arm("path:uniform-streams") == ("path", "streams")
    assert parse_arm("synflow") == ("synflow", None)
    with pytest.raises(ValueError, match="family"):
        parse_arm("path:uniform-tails")
    with pytest.raises(ValueError, match="only SynExp"):
        parse_arm("uniform:uniform-head")
    with pytest.raises(ValueError, match="unknown arm"):
        parse_arm("snip")  # needs data: the study has none at allocation
    assert set(OBJECTIVES) <= {"layer", "path"}

"""Layers kept out of allocation (precrop/width/keep.py): which groups a pattern keeps, and the contract every
width method must pass with kept layers: kept groups at base width, budgets met on the built model."""

from __future__ import annotations

import dataclasses
from functools import cache, partial

import pytest

from precrop.errors import UserError
from precrop.methods.channel_rank import PfsAllocator
from precrop.methods.prunenet import PruneNetAllocator
from precrop.methods.registry import METHODS, WIDTH_METHODS, check_feasible, realize
from precrop.nn.build import build_from_plan, layer_table
from precrop.nn.counting import count_cost
from precrop.width.allocate import AllocationRequest, BudgetError
from precrop.width.costmodel import ChannelGroup, Layer, LayerTable, NormTerm
from precrop.width.keep import KeepError, kept_groups, with_kept
from precrop.width.plan import WidthPlan
from tests.precrop.conftest import make_probe


def _chain() -> LayerTable:
    """input -> a -> b -> c -> logits, a norm on b."""
    groups = (ChannelGroup("input", 3, fixed=True), ChannelGroup("a", 16), ChannelGroup("b", 32),
              ChannelGroup("c", 64), ChannelGroup("logits", 10, fixed=True))  # fmt: skip
    layers = (Layer("stem", "conv", ("input",), "a", (3, 3), out_hw=(8, 8)),
              Layer("body.conv", "conv", ("a",), "b", (3, 3), out_hw=(8, 8)),
              Layer("head.conv", "conv", ("b",), "c", (1, 1), out_hw=(8, 8)),
              Layer("fc", "linear", ("c",), "logits", bias=True))  # fmt: skip
    return LayerTable("chain", (3, 8, 8), 10, groups, layers, (NormTerm("body.bn", ("b",), 2),))


def test_a_kept_layer_keeps_the_groups_it_reads_and_writes() -> None:
    table = _chain()
    assert kept_groups(table, ["body.conv"]) == {"a", "b"}
    assert kept_groups(table, ["fc"]) == {"c", "logits"}
    assert kept_groups(table, ["*.conv"]) == {"a", "b", "c"}
    assert kept_groups(table, ["body.bn"]) == {"b"}  # a norm keeps what it normalizes
    assert kept_groups(table, []) == set()
    kept = with_kept(table, ["stem"])
    assert [g.name for g in kept.prunable_groups] == ["b", "c"]
    assert kept.cost() == table.cost()  # the kept groups still count
    assert with_kept(table, ["fc"]).group("c").fixed and not table.group("c").fixed  # a copy; the table is frozen
    assert with_kept(table, []) is table


def test_a_pattern_that_matches_nothing_names_itself_and_where_to_look() -> None:
    with pytest.raises(KeepError) as info:
        kept_groups(_chain(), ["stem", "layer4.*"])
    assert str(info.value) == ("keep pattern 'layer4.*' matches no layer of chain (layers are named like stem, "
                               "body.conv, head.conv; `precrop info` lists them all)")  # fmt: skip
    assert info.value.field == "keep"


@pytest.mark.parametrize("keep", ["conv1", ("conv1", ""), (3,)])
def test_keep_must_be_a_list_of_names(keep: object) -> None:
    with pytest.raises(BudgetError, match="keep must be a list of layer names or patterns") as info:
        AllocationRequest(macs=0.5, keep=keep).validate()  # type: ignore[arg-type]
    assert info.value.field == "keep"


def test_a_budget_the_kept_layers_leave_no_room_for_is_one_line() -> None:
    table = layer_table("cifar_resnet20")
    request = AllocationRequest(macs=0.5, keep=("conv1", "layer3.*"))
    with pytest.raises(BudgetError) as info:
        realize("synexp", table, request, None)
    assert str(info.value) == ("macs budget 0.5 is below what the minimum widths allow (0.5855 of base at min "
                               "width 8, divisor 8, with the kept layers (conv1, layer3.*) at base width)")  # fmt: skip
    with pytest.raises(BudgetError, match=r"0\.5855 of base"):
        check_feasible("pfs", table, request)


def test_mask_methods_refuse_keep_rather_than_ignore_it() -> None:
    table = layer_table("cifar_resnet20")
    with pytest.raises(BudgetError, match="synflow masks weights and keeps every width: keep applies to"):
        check_feasible("synflow", table, AllocationRequest(macs=0.5, keep=("conv1",)))


@cache
def _table(arch: str) -> LayerTable:
    if arch.startswith("timm:"):
        pytest.importorskip("timm")
        return layer_table(arch, 10, 64)
    return layer_table(arch)


# built-in and timm models; the kept layers touch the stem, a stage, a depthwise block with SE, the classifier
KEEP_CASES = [
    ("cifar_resnet20", AllocationRequest(macs=0.7, keep=("conv1", "layer3.*"))),
    ("mobilenetv2_cifar", AllocationRequest(params=0.6, keep=("features.0.*", "features.2.*", "classifier*"))),
    ("timm:mobilenetv3_small_050", AllocationRequest(macs=0.7, keep=("conv_stem", "blocks.1.*", "blocks.2.0.se.*"))),
]


@pytest.fixture(autouse=True)
def quick_data_driven(monkeypatch: pytest.MonkeyPatch) -> None:
    """PFS and PruneNet with a few steps (as in test_allocators.py): this is about widths and budgets."""
    for name, factory in (("pfs", partial(PfsAllocator, steps=5)), ("prunenet", partial(PruneNetAllocator, 2))):
        monkeypatch.setitem(METHODS, name, dataclasses.replace(METHODS[name], factory=factory))


@pytest.mark.parametrize("allocator_name", WIDTH_METHODS)
@pytest.mark.parametrize(("arch", "request_"), KEEP_CASES, ids=[c[0] for c in KEEP_CASES])
def test_every_width_method_keeps_the_kept_groups_and_meets_the_budget(
    allocator_name: str, arch: str, request_: AllocationRequest
) -> None:
    table = _table(arch)
    kept = kept_groups(table, request_.keep)
    assert len(kept) >= 3
    probe = _probe(arch, table) if METHODS[allocator_name].needs_model else None
    plan = realize(allocator_name, table, request_, probe).plan
    assert {g: plan.widths[g] for g in kept} == {g: table.group(g).width for g in kept}
    assert any(plan.widths[g.name] < g.width for g in table.prunable_groups if g.name not in kept)
    model = build_from_plan(WidthPlan.from_json(plan.to_json()), seed=0)  # as a trial rebuilds it
    counted = count_cost(model, plan.input_shape)  # a second counter, on the built model
    assert counted == plan.counted
    base = table.cost()
    for metric in request_.metrics:
        assert getattr(counted, metric) <= getattr(request_, metric) * getattr(base, metric)
    assert plan.options["keep"] == list(request_.keep)


def _probe(arch: str, table: LayerTable) -> object:
    if arch.startswith("timm:"):  # conftest's probe builds the built-in tables only
        import torch

        from precrop.methods.base import Probe
        from precrop.width.allocate import dense_plan

        generator = torch.Generator().manual_seed(100)
        images = torch.randn(8, *table.input_shape, generator=generator)
        batch = (images, torch.randint(0, 10, (8,), generator=generator))
        return Probe(build_from_plan(dense_plan(table), seed=0), (batch,), 0)
    return make_probe(arch)


def test_crop_keeps_the_named_layers_of_a_model_it_is_handed() -> None:
    import torch

    import precrop
    from precrop.nn.zoo import REGISTRY

    dense = REGISTRY.get("cifar_resnet20").build(10)
    model, plan = precrop.crop(dense, torch.zeros(1, 3, 32, 32), macs=0.7, keep=["conv1", "layer3.*"])
    assert model.conv1.weight.shape == dense.conv1.weight.shape
    assert model.layer3[2].conv2.weight.shape == dense.layer3[2].conv2.weight.shape
    assert model.layer1[0].conv1.weight.shape[0] < dense.layer1[0].conv1.weight.shape[0]
    assert plan.counted.macs <= 0.7 * plan.base.macs
    with pytest.raises(UserError, match=r"keep pattern 'fc\.\*' matches no layer"):
        precrop.crop(dense, torch.zeros(1, 3, 32, 32), macs=0.7, keep=["fc.*"])

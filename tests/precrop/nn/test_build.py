"""A model built from a plan starts as one built natively at those widths would."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from precrop.nn.build import build_from_plan
from precrop.nn.zoo.cifar_models import VGGCifar
from precrop.nn.zoo.cifar_resnet import CifarResNet
from precrop.width.allocate import AllocationRequest, SynExpAllocator
from precrop.width.plan import PlanError, WidthPlan
from tests.precrop.conftest import cached_table


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def _assert_same_init_statistics(built: nn.Module, native: nn.Module) -> None:
    built_w, native_w = _weights(built), _weights(native)
    assert list(built_w) == list(native_w)
    for name, w in built_w.items():
        v = native_w[name]
        assert w.shape == v.shape, name
        if w.numel() >= 4000:  # sampling error of the std is below about 3% here
            assert w.std().item() == pytest.approx(v.std().item(), rel=0.1), name
            assert abs(w.mean().item()) < 4 * v.std().item() / math.sqrt(w.numel()), name
    for m in built.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
            assert torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)


def test_cifar_resnet_plan_matches_native_initialization() -> None:
    plan = SynExpAllocator().allocate(cached_table("cifar_resnet56"), AllocationRequest(macs=0.4))
    w = plan.widths
    streams = [w["conv1"], w["layer2.0.conv2"], w["layer3.0.conv2"]]
    inner = [w[f"layer{s}.{b}.conv1"] for s in (1, 2, 3) for b in range(9)]
    torch.manual_seed(1)
    native = CifarResNet(56, 10, stream_widths=streams, inner_widths=inner)
    built = build_from_plan(plan, seed=2)
    _assert_same_init_statistics(built, native)
    x = torch.randn(4, 3, 32, 32)
    assert built(x).shape == native(x).shape == (4, 10)


def test_vgg_plan_matches_native_initialization() -> None:
    table = cached_table("vgg16_bn_cifar")
    plan = SynExpAllocator().allocate(table, AllocationRequest(params=0.3))
    convs = [layer for layer in table.layers if layer.kind == "conv"]
    widths = iter(plan.widths[layer.out_group] for layer in convs)
    config = tuple(entry if entry == "M" else next(widths) for entry in VGGCifar().config_entries)
    torch.manual_seed(1)
    native = VGGCifar(10, config)
    _assert_same_init_statistics(build_from_plan(plan, seed=3), native)


def test_built_weights_are_fresh_not_sliced() -> None:
    plan = SynExpAllocator().allocate(cached_table("cifar_resnet20"), AllocationRequest(macs=0.5))
    a, b = build_from_plan(plan, seed=0), build_from_plan(plan, seed=0)
    c = build_from_plan(plan, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_plan_from_another_arch_is_refused() -> None:
    plan = SynExpAllocator().allocate(cached_table("cifar_resnet20"), AllocationRequest(macs=0.5))
    data = plan.to_dict()
    data["arch"] = "cifar_resnet32"
    with pytest.raises(PlanError, match="does not match cifar_resnet32"):
        build_from_plan(WidthPlan.from_dict(data))
    data["schema_version"] = 7
    with pytest.raises(PlanError, match="schema version"):
        WidthPlan.from_dict(data)

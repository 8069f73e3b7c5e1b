"""The model registry is strict and names its valid entries."""

from __future__ import annotations

import pytest
from torch import nn

from precrop.nn.zoo import REGISTRY, ArchSpec, DuplicateArchError, Registry, UnknownArchError, build_model

EXPECTED = [
    "cifar_resnet20", "cifar_resnet32", "cifar_resnet56", "resnet18_cifar", "vgg16_bn_cifar",
    "mobilenetv2_cifar", "mobilenetv2", "resnet50", "efficientnet_b0",
]  # fmt: skip


def test_builtin_names() -> None:
    assert REGISTRY.names() == EXPECTED


def test_duplicate_name_is_an_error() -> None:
    registry = Registry()
    spec = ArchSpec("tiny", lambda n: nn.Linear(4, n), 2, 4, "tiny")
    registry.register(spec)
    with pytest.raises(DuplicateArchError, match="tiny"):
        registry.register(spec)
    with pytest.raises(DuplicateArchError):
        REGISTRY.register(ArchSpec("resnet50", lambda n: nn.Linear(4, n), 2, 4, "again"))


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownArchError) as info:
        REGISTRY.get("nope")
    assert "'nope'" in str(info.value)
    assert all(name in str(info.value) for name in EXPECTED)
    assert "timm:<name>" in str(info.value) and "module.path:callable" in str(info.value)


def test_names_with_a_colon_are_reserved_for_model_sources() -> None:
    registry = Registry()
    for name in ("torchvision:tiny", "timm:tiny", "mine:tiny"):
        with pytest.raises(DuplicateArchError, match="reserved for model sources"):
            registry.register(ArchSpec(name, lambda n: nn.Linear(4, n), 2, 4, "tiny"))


def test_torchvision_prefix_builds_any_classifier() -> None:
    model = build_model("torchvision:mobilenet_v3_small", num_classes=7)
    assert isinstance(model, nn.Module)
    assert model.classifier[-1].out_features == 7
    with pytest.raises(UnknownArchError, match="fasterrcnn"):
        REGISTRY.get("torchvision:fasterrcnn_resnet50_fpn")


@pytest.mark.parametrize("arch", EXPECTED)
def test_num_classes_is_a_parameter(arch: str) -> None:
    from precrop.nn.tracing import trace_layer_table

    spec = REGISTRY.get(arch)
    table = trace_layer_table(build_model(arch, num_classes=3), arch, spec.input_size, 3, verify=False)
    assert table.group("logits").width == 3

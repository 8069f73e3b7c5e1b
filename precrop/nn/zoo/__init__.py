"""The model zoo: built-in architectures, the registry that names them, and model sources (sources.py)."""

from __future__ import annotations

from torch import nn

from precrop.nn.zoo.cifar_models import mobilenetv2_cifar, resnet18_cifar, vgg16_bn_cifar
from precrop.nn.zoo.cifar_resnet import CifarResNet
from precrop.nn.zoo.inits import (
    Init,
    init_cifar_resnet,
    init_torchvision_efficientnet,
    init_torchvision_mobilenetv2,
    init_torchvision_resnet,
    init_vgg_cifar,
)
from precrop.nn.zoo.registry import ArchSpec, DuplicateArchError, ModelSourceError, Registry, UnknownArchError

__all__ = [
    "REGISTRY",
    "ArchSpec",
    "DuplicateArchError",
    "ModelSourceError",
    "Registry",
    "UnknownArchError",
    "build_model",
]


def _cifar_resnet(depth: int) -> ArchSpec:
    def build(num_classes: int) -> nn.Module:
        return CifarResNet(depth, num_classes)

    return ArchSpec(
        f"cifar_resnet{depth}", build, 10, 32, f"CIFAR ResNet-{depth} (option-A shortcuts)", init_cifar_resnet
    )


def _tv(name: str, tv_name: str, description: str, init: Init) -> ArchSpec:
    def build(num_classes: int) -> nn.Module:
        import torchvision  # on first use: see precrop/nn/zoo/cifar_models.py's docstring

        return torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes)

    return ArchSpec(name, build, 1000, 224, description, init)


REGISTRY = Registry()
for _spec in (
    _cifar_resnet(20),
    _cifar_resnet(32),
    _cifar_resnet(56),
    ArchSpec("resnet18_cifar", resnet18_cifar, 10, 32, "ResNet-18 with a CIFAR stem", init_torchvision_resnet),
    ArchSpec("vgg16_bn_cifar", vgg16_bn_cifar, 10, 32, "VGG-16 with BatchNorm, CIFAR head", init_vgg_cifar),
    ArchSpec(
        "mobilenetv2_cifar", mobilenetv2_cifar, 10, 32, "MobileNetV2, CIFAR strides", init_torchvision_mobilenetv2
    ),
    _tv("mobilenetv2", "mobilenet_v2", "torchvision MobileNetV2 (ImageNet)", init_torchvision_mobilenetv2),
    _tv("resnet50", "resnet50", "torchvision ResNet-50 (ImageNet)", init_torchvision_resnet),
    _tv("efficientnet_b0", "efficientnet_b0", "torchvision EfficientNet-B0 (ImageNet)", init_torchvision_efficientnet),
):
    REGISTRY.register(_spec)


def build_model(arch: str, num_classes: int | None = None) -> nn.Module:
    """Build the dense model `arch` with fresh weights (`num_classes` defaults to the arch's)."""
    spec = REGISTRY.get(arch)
    return spec.build(num_classes if num_classes is not None else spec.num_classes)

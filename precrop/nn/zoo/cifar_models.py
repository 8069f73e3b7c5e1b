"""CIFAR-sized (32x32) variants of ImageNet families: ResNet-18, VGG-16-BN, MobileNetV2.

torchvision is imported by the builders that use it, not at the top: `torchvision.models` imports
torchvision.ops and with it torch._dynamo, about a CPU-second that every search driver, trial process and
`precrop` command paid even for a CIFAR ResNet (see also precrop/nn/pruning_lib.py).
"""

from __future__ import annotations

import torch
from torch import nn

VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip

# torchvision's MobileNetV2 table with the second stage at stride 1 (the usual CIFAR setting).
MOBILENETV2_CIFAR_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision ResNet-18 with a 3x3 stride-1 stem and no max-pool (32x32 inputs)."""
    import torchvision  # on first use: see the module docstring

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


class VGGCifar(nn.Module):
    """VGG-16 with BatchNorm for small images: 13 conv-BN-ReLU layers, global pool, one linear."""

    def __init__(self, num_classes: int = 10, config: tuple[int | str, ...] = VGG16_CONFIG) -> None:
        super().__init__()
        self.config_entries = config
        layers: list[nn.Module] = []
        in_width = 3
        for entry in config:
            if entry == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            width = int(entry)
            layers += [nn.Conv2d(in_width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
            layers.append(nn.ReLU(inplace=True))
            in_width = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_width, num_classes)
        init_vgg_cifar(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def init_vgg_cifar(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs, BN gamma=1 beta=0, N(0, 0.01) linear with zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def vgg16_bn_cifar(num_classes: int = 10) -> nn.Module:
    """VGG-16-BN for 32x32 inputs."""
    return VGGCifar(num_classes)


def mobilenetv2_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision MobileNetV2 with a stride-1 stem and stride-1 second stage (32x32 inputs)."""
    import torchvision  # on first use: see the module docstring

    model = torchvision.models.MobileNetV2(num_classes=num_classes, inverted_residual_setting=MOBILENETV2_CIFAR_SETTING)
    stem = model.features[0][0]
    assert isinstance(stem, nn.Conv2d)
    stem.stride = (1, 1)
    return model

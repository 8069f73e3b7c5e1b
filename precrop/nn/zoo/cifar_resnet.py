"""CIFAR ResNet-20/32/56 (He et al. 2016, section 4.2) with parameter-free option-A shortcuts.

The stage-transition shortcut subsamples spatially and zero-pads the channels, so residual streams of
different stages are *not* coupled: each stage's stream is its own channel group. It is written as
the `ChannelPad` module (with a torch-pruning pruner) so that the dependency graph sees that
decoupling instead of tracing through a raw `F.pad`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

BASE_STREAM_WIDTHS = (16, 32, 64)


class ChannelPad(nn.Module):
    """Option-A shortcut: subsample by `stride`, then zero-pad (or crop) channels to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        if extra < 0:
            return x[:, : self.out_channels]
        left = extra // 2
        return F.pad(x, (0, 0, 0, 0, left, extra - left))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    def __init__(self, in_width: int, inner_width: int, out_width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_width, inner_width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner_width)
        self.conv2 = nn.Conv2d(inner_width, out_width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_width)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_width != out_width:
            self.shortcut = ChannelPad(in_width, out_width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; every width can be set (stream per stage, inner per block)."""

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        stream_widths: Sequence[int] = BASE_STREAM_WIDTHS,
        inner_widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        if inner_widths is None:
            inner_widths = [w for w in stream_widths for _ in range(blocks_per_stage)]
        if len(stream_widths) != 3 or len(inner_widths) != 3 * blocks_per_stage:
            raise ValueError("need 3 stream widths and one inner width per block")
        self.conv1 = nn.Conv2d(3, stream_widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stream_widths[0])
        inner = iter(inner_widths)
        stages: list[nn.Sequential] = []
        in_width = stream_widths[0]
        for stage, out_width in enumerate(stream_widths):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(BasicBlock(in_width, next(inner), out_width, stride))
                in_width = out_width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(stream_widths[2], num_classes)
        init_cifar_resnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def init_cifar_resnet(model: nn.Module) -> None:
    """The family's init: Kaiming-normal (fan_in) convs, BN gamma=1 beta=0, PyTorch-default linear."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            m.reset_parameters()

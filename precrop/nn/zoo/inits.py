"""Each family's own weight initialization, applied to a model after its widths change.

A narrowed model must start exactly as one built natively at those widths would: fan-in/fan-out
based schemes depend on the new shapes, so the whole model is re-initialized after resizing.
The torchvision recipes mirror the loops at the end of torchvision's model constructors.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

from torch import nn

from precrop.nn.zoo.cifar_models import init_vgg_cifar
from precrop.nn.zoo.cifar_resnet import init_cifar_resnet

Init = Callable[[nn.Module], None]


def _norms_to_identity(m: nn.Module) -> None:
    if isinstance(m, nn.BatchNorm2d | nn.GroupNorm) and m.weight is not None:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def init_torchvision_resnet(model: nn.Module) -> None:
    """torchvision ResNet: Kaiming-normal fan_out convs, BN 1/0, PyTorch-default linear."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            m.reset_parameters()
        _norms_to_identity(m)


def _init_mobile_family(model: nn.Module, init_linear: Callable[[nn.Linear], object]) -> None:
    """Shared by MobileNetV2 and EfficientNet: Kaiming-normal fan_out convs, zero conv bias, BN 1/0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            init_linear(m)
            nn.init.zeros_(m.bias)
        _norms_to_identity(m)


def init_torchvision_mobilenetv2(model: nn.Module) -> None:
    """torchvision MobileNetV2: Kaiming-normal fan_out convs, BN 1/0, N(0, 0.01) linear."""
    _init_mobile_family(model, lambda m: nn.init.normal_(m.weight, 0, 0.01))


def init_torchvision_efficientnet(model: nn.Module) -> None:
    """torchvision EfficientNet: Kaiming-normal fan_out convs, BN 1/0, U(+-1/sqrt(out)) linear."""

    def uniform(m: nn.Linear) -> None:
        bound = 1.0 / math.sqrt(m.out_features)
        nn.init.uniform_(m.weight, -bound, bound)

    _init_mobile_family(model, uniform)


def init_pytorch_default(model: nn.Module) -> None:
    """Every module's own reset_parameters (used for torchvision:<name> models)."""
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()


def call_own_init(model: nn.Module) -> None:
    """The model's own `init_weights()` when it has one that takes no argument (timm's ResNet, ...)."""
    own = getattr(model, "init_weights", None)
    if not callable(own):
        return
    try:
        signature = inspect.signature(own)
    except (TypeError, ValueError):
        return
    required = [
        p for p in signature.parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]  # fmt: skip
    if not required:
        own()


def init_user_model(model: nn.Module) -> None:
    """A `module.path:callable` model: PyTorch's default init of every layer, then its own `init_weights()`."""
    init_pytorch_default(model)
    call_own_init(model)


def init_timm_cnn(model: nn.Module) -> None:
    """A timm model: the recipe most of timm's CNN families share, then the model's own `init_weights()`.

    timm applies each family's init inside its constructor (module-level `_init_weights` functions that
    are not part of its API), so after resizing we use what ResNet, EfficientNet, RegNet, DLA and others
    have in common: default layer init, Kaiming-normal fan_out convs with zero bias, norms at 1/0.
    """
    init_pytorch_default(model)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        _norms_to_identity(m)
    call_own_init(model)


__all__ = [
    "Init",
    "call_own_init",
    "init_cifar_resnet",
    "init_pytorch_default",
    "init_timm_cnn",
    "init_torchvision_efficientnet",
    "init_torchvision_mobilenetv2",
    "init_torchvision_resnet",
    "init_user_model",
    "init_vgg_cifar",
]

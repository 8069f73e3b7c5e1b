"""The torch side of the recipe: the device, the SGD optimizer (no decay on norms and biases) and the
learning-rate schedule. The hyperparameters themselves are trainers/recipe.py, which imports no torch."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from trainers.recipe import RecipeError, TrainConfig


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; asking for CUDA without one is a RecipeError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"device {name} requested but no CUDA device is available")
    return device


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only; none on BatchNorm parameters and biases (ndim <= 1)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with (by default) Nesterov momentum."""
    return torch.optim.SGD(
        parameter_groups(model, config.weight_decay),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: linear warmup then cosine to zero, or torch's OneCycleLR."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        warm_fraction = min(max(config.warmup_epochs / config.epochs, 0.01), 0.99)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total, pct_start=warm_fraction, anneal_strategy="cos"
        )
    warmup = round(config.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _WarmupCosine(warmup, total))


class _WarmupCosine:
    """lr multiplier: linear from 1/(warmup+1) to 1 over `warmup` steps, then half a cosine to 0."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup = warmup
        self.total = total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

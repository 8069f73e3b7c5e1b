"""The training recipe: hyperparameters, the SGD optimizer and the learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from precrop.errors import UserError

SCHEDULES = ("cosine", "onecycle")


class RecipeError(UserError):
    """A hyperparameter value that cannot work."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters and run options of one training run."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    amp: bool = True
    channels_last: bool = True
    eval_batch_size: int = 1024
    workers: int = 4

    def validate(self) -> None:
        """Raise RecipeError naming the first value that cannot work."""
        positive_ints = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size}
        for name, value in positive_ints.items():
            if value < 1:
                raise RecipeError(f"{name} must be at least 1, got {value}")
        checks: dict[str, tuple[float, float, float, bool]] = {
            "lr": (self.lr, 0.0, math.inf, False),
            "momentum": (self.momentum, 0.0, 1.0, True),
            "weight_decay": (self.weight_decay, 0.0, math.inf, True),
            "label_smoothing": (self.label_smoothing, 0.0, 1.0, True),
            "warmup_epochs": (self.warmup_epochs, 0.0, float(self.epochs), True),
        }
        for name, (number, low, high, low_ok) in checks.items():
            too_low = number < low if low_ok else number <= low
            if not math.isfinite(number) or too_low or number > high:
                bound = f"[{low}, {high}]" if low_ok else f"({low}, {high}]"
                raise RecipeError(f"{name} must be a finite number in {bound}, got {number}")
        if self.schedule not in SCHEDULES:
            raise RecipeError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise RecipeError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.workers < 0:
            raise RecipeError(f"workers must be >= 0, got {self.workers}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


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

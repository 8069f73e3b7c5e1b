"""The training recipe: hyperparameters and run options, checked; their torch side is trainers/optim.py."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from precrop.errors import FieldError, shown

SCHEDULES = ("cosine", "onecycle")
# the devices training runs on: torch.device parses more (mps, xpu, ...), none of which this trainer supports
DEVICE = re.compile(r"auto|cpu|cuda(:(0|[1-9][0-9]{0,2}))?")  # torch refuses a leading zero (cuda:01)


class RecipeError(FieldError):
    """A hyperparameter value that cannot work (`field`: the TrainConfig field at fault, if one is)."""


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
        """Raise RecipeError naming the first value that cannot work (its message and its `field`)."""
        positive_ints = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size}
        for name, value in positive_ints.items():
            if value < 1:
                raise RecipeError(f"{name} must be at least 1, got {shown(value)}", field=name)
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
                raise RecipeError(f"{name} must be a finite number in {bound}, got {shown(number)}", field=name)
        if self.schedule not in SCHEDULES:
            choices = ", ".join(SCHEDULES)
            raise RecipeError(f"schedule must be one of {choices}, got {shown(self.schedule)}", field="schedule")
        if not DEVICE.fullmatch(self.device):
            raise RecipeError(f"device must be auto, cpu or cuda[:N], got {shown(self.device)}", field="device")
        if self.workers < 0:
            raise RecipeError(f"workers must be >= 0, got {shown(self.workers)}", field="workers")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)



"""The search space: config ranges -> Ray Tune domains, and one sampled point -> allocation + recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray import tune

from precrop.allocate import AllocationRequest
from search.config import SpaceConfig
from trainers.recipe import TrainConfig

# sampled on a log scale: they span orders of magnitude
LOG_SCALE = ("lr", "weight_decay")


def param_space(space: SpaceConfig) -> dict[str, Any]:
    """Tune domains for every searched dimension; a fixed value becomes a one-element choice."""
    ranges: dict[str, tuple[float, float]] = {
        "budget": space.budget,
        "lr": space.lr,
        "weight_decay": space.weight_decay,
        "label_smoothing": space.label_smoothing,
    }
    domains: dict[str, Any] = {
        "allocator": tune.choice(list(space.allocators)),
        "batch_size": tune.choice(list(space.batch_size)),
    }
    for name, (low, high) in ranges.items():
        if low == high:
            domains[name] = tune.choice([low])
        elif name in LOG_SCALE and low > 0:
            domains[name] = tune.loguniform(low, high)
        else:
            domains[name] = tune.uniform(low, high)
    return domains


@dataclass(frozen=True)
class TrialPoint:
    """One sampled point of the space, typed."""

    allocator: str
    budget: float
    lr: float
    weight_decay: float
    label_smoothing: float
    batch_size: int
    # set per trial by studies (a grid over variants or seeds); None means the config's value
    variant: str | None = None
    seed: int | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrialPoint:
        """Read the point Tune passes to a trial."""
        return cls(
            allocator=str(config["allocator"]),
            budget=float(config["budget"]),
            lr=float(config["lr"]),
            weight_decay=float(config["weight_decay"]),
            label_smoothing=float(config["label_smoothing"]),
            batch_size=int(config["batch_size"]),
            variant=None if config.get("variant") is None else str(config["variant"]),
            seed=None if config.get("seed") is None else int(config["seed"]),
        )

    def allocation_request(self, space: SpaceConfig) -> AllocationRequest:
        """The width allocation this point asks for."""
        macs = self.budget if space.budget_metric == "macs" else None
        params = self.budget if space.budget_metric == "params" else None
        return AllocationRequest(
            params=params,
            macs=macs,
            variant=self.variant or space.variant,
            divisor=space.divisor,
            min_width=space.min_width,
            expand=space.expand,
        )

    def train_config(self, space: SpaceConfig, seed: int, workers: int, device: str = "auto") -> TrainConfig:
        """The training recipe this point asks for (`workers` DataLoader processes for file data sets)."""
        return TrainConfig(
            epochs=space.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            label_smoothing=self.label_smoothing,
            schedule=space.schedule,
            warmup_epochs=min(space.warmup_epochs, float(space.epochs)),
            seed=seed,
            device=device,
            workers=workers,
        )

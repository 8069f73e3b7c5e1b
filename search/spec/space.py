"""The search space: config ranges -> Ray Tune domains, one sampled point -> allocation + recipe, and the
config's data section -> the data request every trainer call gets."""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any, Literal

from ray import tune

from precrop.width.allocate import AllocationRequest
from search.spec.config import ExperimentConfig, SpaceConfig
from trainers.datasets import DataRequest
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


def initial_points(space: SpaceConfig, count: int, seed: int) -> list[dict[str, Any]]:
    """The search's first `count` points: budgets spread evenly (log scale) over the budget range.

    Why: the product is a front over the whole cost range, and a handful of purely random first
    budgets often leaves one end of it empty (8 quickstart trials drew budgets only from 0.21 to
    0.98). The budgets are the centres of `count` equal slices of [log low, log high], taken from
    both ends inwards so the first trials to run bracket the range; allocators take turns; the other
    dimensions are drawn at random from their ranges, seeded, as the sampler's own random start would.
    """
    rng = random.Random(seed)
    low, high = space.budget
    centres = [low * (high / low) ** ((i + 0.5) / count) for i in range(count)]
    ends_first = [centres[i // 2] if i % 2 == 0 else centres[count - 1 - i // 2] for i in range(count)]
    points = []
    for i, budget in enumerate(ends_first):
        points.append({
            "allocator": space.allocators[i % len(space.allocators)], "budget": budget,
            "lr": _draw(rng, space.lr, log=True), "weight_decay": _draw(rng, space.weight_decay, log=True),
            "label_smoothing": _draw(rng, space.label_smoothing, log=False),
            "batch_size": space.batch_size[rng.randrange(len(space.batch_size))],
        })  # fmt: skip
    return points


def _draw(rng: random.Random, bounds: tuple[float, float], log: bool) -> float:
    low, high = bounds
    if low == high:
        return low
    if log and low > 0:
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    return rng.uniform(low, high)


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
            objective=space.objective,
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


# what the data is loaded for: a trial trains on it; the end of a search evaluates the front on its test
# split; the preflight check needs only its classes and image shape
DataUse = Literal["train", "test", "shape"]


def data_request(config: ExperimentConfig, use: DataUse = "train") -> DataRequest:
    """The one DataRequest of the config's `data` section, for `use`."""
    data = config.data
    request = DataRequest(data.name, data_dir=data.data_dir, download=data.download, val_fraction=data.val_fraction,
                          seed=config.search.seed, image_size=data.image_size, resident=data.resident,
                          train_subset=data.train_subset)  # fmt: skip
    if use == "test":  # the trials downloaded the data; the training subset does not matter for the test split
        return dataclasses.replace(request, download=False, train_subset=None, with_test=True)
    if use == "shape":  # nothing is trained: no subset, and image folders are not read into memory
        resident = "no" if data.name == "imagefolder" else "auto"
        return dataclasses.replace(request, seed=0, train_subset=None, resident=resident)
    return request

"""The search space: config ranges -> Ray Tune domains, one sampled point -> allocation + recipe, and the
config's data section -> the data request every trainer call gets."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from precrop.width.allocate import AllocationRequest
from search.spec.config import ExperimentConfig, SpaceConfig
from trainers.datasets import DataRequest
from trainers.recipe import TrainConfig

# sampled on a log scale: they span orders of magnitude
LOG_SCALE = ("lr", "weight_decay")


def param_space(space: SpaceConfig) -> dict[str, Any]:
    """Tune domains for every searched dimension; a fixed value becomes a one-element choice."""
    from ray import tune  # here, not above: loading a config (which resolves trial specs) needs no Ray

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
    def from_config(cls, config: Mapping[str, Any]) -> TrialPoint:
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


@dataclass(frozen=True)
class TrialSpec:
    """One trial, resolved once from its sampled point and the config: the allocation it asks for, the
    recipe it trains with, and its seed.

    The trial, the params its run logs and `precrop reconcile` all read this, so each rule (a study's seed
    or variant overrides the config's) is written once here, and each setting is checked by the class that
    owns it (AllocationRequest, TrainConfig). Config validation resolves the corners of the space with it
    (search/spec/validate.py), so a config those classes would refuse stops before anything runs.
    """

    point: TrialPoint
    request: AllocationRequest
    recipe: TrainConfig  # device auto and no DataLoader workers: where it runs is the trial's to set
    seed: int

    @property
    def allocator(self) -> str:
        """The method that allocates this trial's widths or masks."""
        return self.point.allocator

    @classmethod
    def resolve(cls, config: ExperimentConfig, sampled: Mapping[str, Any]) -> TrialSpec:
        """The spec of the point Tune passes to a trial (BudgetError or RecipeError when it cannot work)."""
        point = TrialPoint.from_config(sampled)
        seed = point.seed if point.seed is not None else config.search.seed
        request = allocation_request(config.space, point.budget, point.variant, config.model.keep)
        recipe = training_recipe(config.space, point, seed)
        request.validate()
        recipe.validate()
        return cls(point, request, recipe, seed)


def allocation_request(
    space: SpaceConfig, budget: float, variant: str | None = None, keep: tuple[str, ...] = ()
) -> AllocationRequest:
    """The width allocation at `budget` (a fraction of `space.budget_metric`) with the layers `keep` names at
    base width (`model.keep`); `variant` overrides the config's."""
    return AllocationRequest(
        params=budget if space.budget_metric == "params" else None,
        macs=budget if space.budget_metric == "macs" else None,
        variant=variant or space.variant,
        objective=space.objective,
        divisor=space.divisor,
        min_width=space.min_width,
        expand=space.expand,
        keep=keep,
    )


def training_recipe(space: SpaceConfig, point: TrialPoint, seed: int) -> TrainConfig:
    """The training recipe of a sampled point: its searched values, the rest from the config."""
    return TrainConfig(
        epochs=space.epochs,
        batch_size=point.batch_size,
        lr=point.lr,
        weight_decay=point.weight_decay,
        label_smoothing=point.label_smoothing,
        schedule=space.schedule,
        warmup_epochs=space.warmup_epochs,
        seed=seed,
        workers=0,
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

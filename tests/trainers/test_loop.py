"""The training loop: learns digits quickly, resumes exactly, stops cleanly on a non-finite loss."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from precrop.nn.zoo import REGISTRY, build_model
from trainers.datasets import DataRequest, DataSet
from trainers.load import load_dataset
from trainers.loop import Trainer, evaluate, train
from trainers.optim import make_optimizer, make_scheduler, parameter_groups
from trainers.recipe import RecipeError, TrainConfig

TIMING_KEYS = ("epoch_seconds", "images_per_s")


@pytest.fixture(scope="module")
def digits() -> DataSet:
    return load_dataset(DataRequest("digits", seed=0, with_test=True))


@pytest.fixture(scope="module")
def synthetic() -> DataSet:
    return load_dataset(DataRequest("synthetic", seed=0))


def fresh_model(arch: str = "cifar_resnet20", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, 10)
    init = REGISTRY.get(arch).init
    assert init is not None
    init(model)
    return model


def test_cifar_resnet_learns_digits_to_90_percent_in_10_epochs(digits: DataSet) -> None:
    """Accuracy only: training speed is measured by benchmarks/throughput.py, never asserted in a test."""
    config = TrainConfig(epochs=10, batch_size=64, lr=0.1, seed=0)
    model = fresh_model()
    result = train(model, digits, config)
    assert result.status == "completed"
    assert len(result.history) == 10
    assert result.final["val_acc"] >= 0.90
    trainer = Trainer(model, digits, config)
    assert digits.test is not None
    test = evaluate(model, trainer.batches(digits.test, 512))
    assert test["accuracy"] >= 0.90


def _without_timings(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in history]


class _Interrupt(Exception):
    pass


def test_stopping_at_epoch_k_and_resuming_gives_the_same_final_metrics(synthetic: DataSet) -> None:
    config = TrainConfig(epochs=4, batch_size=32, lr=0.05, seed=3, warmup_epochs=0.5)
    straight = train(fresh_model("cifar_resnet20", seed=7), synthetic, config)

    saved: dict[str, Any] = {}

    def stop_after_two(metrics: dict[str, float], state: dict[str, Any]) -> None:
        if metrics["epoch"] == 2:
            saved.update(state)
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(fresh_model("cifar_resnet20", seed=7), synthetic, config, report=stop_after_two)
    # a different initial model: everything must come from the saved state
    resumed = train(fresh_model("cifar_resnet20", seed=99), synthetic, config, resume=saved)
    assert resumed.status == straight.status == "completed"
    assert _without_timings(resumed.history) == _without_timings(straight.history)


def test_resume_with_a_changed_recipe_is_refused(synthetic: DataSet) -> None:
    config = TrainConfig(epochs=1, batch_size=32, seed=0)
    states: list[dict[str, Any]] = []
    train(fresh_model(), synthetic, config, report=lambda m, s: states.append(s))
    changed = TrainConfig(epochs=1, batch_size=32, seed=0, lr=0.2)
    with pytest.raises(RecipeError, match=r"recipe changed \(lr: saved 0.1, now 0.2\)"):
        train(fresh_model(), synthetic, changed, resume=states[-1])


def test_nan_learning_rate_is_refused_before_training() -> None:
    with pytest.raises(RecipeError, match="lr must be a finite number"):
        TrainConfig(lr=math.nan).validate()


def test_nan_learning_rate_inside_the_loop_stops_with_its_reason(synthetic: DataSet) -> None:
    trainer = Trainer(fresh_model(), synthetic, TrainConfig(epochs=3, batch_size=32))
    trainer.scheduler.base_lrs = [math.nan for _ in trainer.scheduler.base_lrs]
    for group in trainer.optimizer.param_groups:
        group["lr"] = math.nan
    reports: list[dict[str, float]] = []
    result = trainer.run(lambda m, s: reports.append(m))
    assert result.status == "diverged"
    assert "non-finite" in result.reason and "learning rate nan" in result.reason
    assert reports == [] and result.history == []


def test_exploding_learning_rate_stops_with_its_reason(synthetic: DataSet) -> None:
    result = train(fresh_model(), synthetic, TrainConfig(epochs=3, batch_size=32, lr=1e12, warmup_epochs=0))
    assert result.status == "diverged"
    assert "epoch 1" in result.reason and "lower --lr" in result.reason


def test_no_weight_decay_on_batchnorm_and_biases() -> None:
    model = build_model("resnet18_cifar", 10)
    decay, no_decay = parameter_groups(model, 5e-4)
    convs_and_linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert {id(p) for p in decay["params"]} == {id(p) for p in convs_and_linears}
    assert no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def lr_trace(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate of every step of a run with `config`."""
    optimizer = make_optimizer(torch.nn.Linear(2, 2), config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    lrs = []
    for _ in range(config.epochs * steps_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["nesterov"] is True
    return lrs


def test_warmup_then_cosine_schedule_values() -> None:
    lrs = lr_trace(TrainConfig(epochs=10, lr=0.4, warmup_epochs=1), steps_per_epoch=10)
    assert lrs[0] == pytest.approx(0.4 / 11)
    assert lrs[10] == pytest.approx(0.4)
    assert lrs[55] == pytest.approx(0.2)
    assert lrs[-1] < 0.001


def test_onecycle_schedule_peaks_at_lr() -> None:
    lrs = lr_trace(TrainConfig(epochs=4, lr=0.3, schedule="onecycle", warmup_epochs=1), steps_per_epoch=5)
    assert max(lrs) == pytest.approx(0.3)
    assert lrs.index(max(lrs)) == 4

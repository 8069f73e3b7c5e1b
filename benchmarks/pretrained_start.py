"""Pretrained starts against training from scratch, on a ResNet-20 trained here on digits.

For each allocator and MACs budget: the cropped model's test accuracy before any fine-tuning (channels of
largest filter L1 norm, or the leading channels, both with BatchNorm statistics re-estimated; and fresh
initialization), then after the same short recipe from the trained weights and from scratch, over seeds.

    python benchmarks/pretrained_start.py [--budgets 0.7 0.5 0.3] [--epochs 2] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from precrop.methods.registry import realize
from precrop.nn.build import build_from_plan, layer_table
from precrop.nn.pretrained import crop_pretrained
from precrop.nn.surgery import resize_to_widths
from precrop.nn.zoo import REGISTRY, build_model
from precrop.textui import format_table
from precrop.width.allocate import AllocationRequest
from trainers.datasets import DataRequest, DataSet
from trainers.load import load_dataset
from trainers.loop import Trainer, evaluate, train
from trainers.recipe import TrainConfig
from trainers.start import recalibrated


def _accuracy(model: torch.nn.Module, data: DataSet) -> float:
    assert data.test is not None
    trainer = Trainer(model, data, TrainConfig(epochs=1))
    return float(evaluate(model.eval(), trainer.batches(data.test, 512))["accuracy"])


def _dense(data: DataSet, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("cifar_resnet20", data.num_classes)
    init = REGISTRY.get("cifar_resnet20").init
    assert init is not None
    init(model)
    train(model, data, TrainConfig(epochs=10, batch_size=64, lr=0.1, seed=seed))
    return model


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.7, 0.5, 0.3])
    parser.add_argument("--allocators", nargs="+", default=["synexp", "uniform"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_dataset(DataRequest("digits", seed=0, with_test=True))
    table = layer_table("cifar_resnet20", data.num_classes, data.image_shape[1])
    recipe = TrainConfig(epochs=args.epochs, batch_size=64, lr=args.lr, warmup_epochs=0)
    cells: dict[tuple[str, float], dict[str, list[float]]] = {}
    for seed in args.seeds:
        dense = _dense(data, seed)
        print(f"seed {seed}: dense test accuracy {_accuracy(dense, data):.1%}", flush=True)
        for allocator in args.allocators:
            for budget in args.budgets:
                plan = realize(allocator, table, AllocationRequest(macs=budget), None).plan
                cell = cells.setdefault((allocator, budget), {})
                ranked = recalibrated(crop_pretrained(dense, table, plan.widths), data, seed)
                leading = recalibrated(resize_to_widths(copy.deepcopy(dense), table, dict(plan.widths)), data, seed)
                scratch = build_from_plan(plan, seed=seed)
                cell.setdefault("start L1", []).append(_accuracy(ranked, data))
                cell.setdefault("start leading", []).append(_accuracy(leading, data))
                cell.setdefault("start scratch", []).append(_accuracy(scratch, data))
                train(ranked, data, TrainConfig(**{**recipe.to_dict(), "seed": seed}))
                train(scratch, data, TrainConfig(**{**recipe.to_dict(), "seed": seed}))
                cell.setdefault("tuned L1", []).append(_accuracy(ranked, data))
                cell.setdefault("trained scratch", []).append(_accuracy(scratch, data))
    columns = ["start L1", "start leading", "start scratch", "tuned L1", "trained scratch"]
    rows = []
    for (allocator, budget), cell in cells.items():
        paired = [a - b for a, b in zip(cell["tuned L1"], cell["trained scratch"], strict=True)]
        rows.append([allocator, budget, *(_mean_sd(cell[c]) for c in columns), _mean_sd(paired, points=True)])
    print(f"\ntest accuracy, mean +- sd over seeds {args.seeds}; recipe: {args.epochs} epochs at lr {args.lr}")
    print(format_table(["allocator", "MACs", *columns, "tuned - scratch"], rows))


def _mean_sd(values: list[float], points: bool = False) -> str:
    scale, unit = (100, " pt") if points else (100, "%")
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * scale:.1f} +- {sd * scale:.1f}{unit}"


if __name__ == "__main__":
    main()

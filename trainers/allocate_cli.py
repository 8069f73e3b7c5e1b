"""`precrop allocate` with data: the precrop command plus --dataset, for SNIP, GraSP, PFS and PruneNet.

With --dataset the layer table takes the data set's classes and input size, and data-driven methods
score the same probe batches a search trial gives them (`probe_batches` with the trial's counts).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from precrop.cli import add_allocate_command as add_precrop_allocate
from precrop.cli_args import OneLineErrorParser, positive_int
from precrop.errors import UserError
from precrop.methods.registry import METHODS, method

if TYPE_CHECKING:  # the parser (add_allocate_command) must not import torch; the command imports it
    from trainers.batches import Batch
    from trainers.datasets import DataSet

DATA_METHODS = tuple(name for name, m in METHODS.items() if m.needs_data)


def add_allocate_command(commands: argparse._SubParsersAction[OneLineErrorParser]) -> OneLineErrorParser:
    """Register `allocate` with the data options data-driven methods need."""
    alloc = add_precrop_allocate(commands)
    alloc.add_argument("--dataset", help=f"training data for {', '.join(DATA_METHODS)}: digits, cifar10, cifar100, "
                       "imagefolder or synthetic (also sets --num-classes and --input-size)")  # fmt: skip
    alloc.add_argument("--data-dir", help="where the data set lives (cifar: the folder with the batches)")
    alloc.add_argument("--download", action="store_true", help="download CIFAR when missing (needs internet)")
    alloc.add_argument("--val-fraction", type=float, default=0.1, help="share of train held out, as `train` does")
    alloc.add_argument("--image-size", type=positive_int, help="imagefolder from files: crop side (default 224)")
    return alloc


def run_allocate(args: argparse.Namespace) -> int:
    """The `precrop allocate` command: load --dataset when given, then allocate as precrop does."""
    from precrop.allocate_cli import request_from_args
    from precrop.allocate_cli import run_allocate as run_precrop_allocate

    if args.dataset is None:
        if method(args.allocator).needs_data:
            raise UserError(f"{args.allocator} scores the model on training batches: give --dataset D (e.g. digits)")
        return run_precrop_allocate(args)
    from trainers.datasets import DataRequest
    from trainers.load import load_dataset

    request_from_args(args)  # a bad budget fails before any data is read
    data = load_dataset(
        DataRequest(
            args.dataset, data_dir=args.data_dir, download=args.download, val_fraction=args.val_fraction,
            seed=args.seed, image_size=args.image_size,
        )
    )  # fmt: skip
    shaped = argparse.Namespace(**{**vars(args), **data_shape(args, data)})
    return run_precrop_allocate(shaped, lambda seed: probe(data, seed))


def data_shape(args: argparse.Namespace, data: DataSet) -> dict[str, int]:
    """The table's classes and input size from the data set; UserError when the flags say otherwise."""
    shape = {"num_classes": data.num_classes, "input_size": data.image_shape[1]}
    for key, value in shape.items():
        given = getattr(args, key)
        if given is not None and given != value:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} {given} does not match {data.name} ({value}); leave it out with --dataset")
    return shape


def probe(data: DataSet, seed: int) -> tuple[Batch, ...]:
    """The training batches a search trial with this seed gives data-driven methods."""
    from trainers.batches import PROBE_BATCH_SIZE, PROBE_BATCHES, probe_batches

    return probe_batches(data, PROBE_BATCHES, PROBE_BATCH_SIZE, seed)

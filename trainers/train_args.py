"""The `precrop train` arguments and the recipe they describe; no torch, so that `precrop --help` and a
mistyped flag answer at once (the command itself is trainers/cli.py)."""

from __future__ import annotations

import argparse

from precrop.cli_args import OneLineErrorParser, positive_int, seed_int
from trainers.recipe import SCHEDULES, TrainConfig


def add_train_command(commands: argparse._SubParsersAction[OneLineErrorParser]) -> None:
    """Register `train` and its options."""
    train = commands.add_parser("train", help="train one model (dense or from a plan) on a data set")
    model = train.add_mutually_exclusive_group(required=True)
    model.add_argument("--arch", help="train the dense architecture: a built-in name or model source "
                       "(see precrop info --list)")
    model.add_argument("--plan", help="train the cropped model a plan JSON describes")
    train.add_argument("--init", default="scratch", choices=("scratch", "pretrained"),
                       help="scratch (default: the family's own init) or pretrained: start a --plan from its "
                       "dense model's trained weights (a module.path:callable source), keeping the channels with "
                       "the largest filter L1 norms, BatchNorm statistics re-estimated (docs/width.md)")  # fmt: skip
    train.add_argument("--dataset", required=True, help="digits, cifar10, cifar100, imagefolder or synthetic")
    train.add_argument("--data-dir", help="where the data set lives (cifar: the folder with the batches)")
    train.add_argument("--download", action="store_true", help="download CIFAR when missing (needs internet)")
    train.add_argument("--val-fraction", type=float, default=0.1, help="share of train held out for validation")
    train.add_argument("--image-size", type=positive_int, help="imagefolder from files: crop side (default 224)")
    train.add_argument("--resident", default="auto", choices=("auto", "yes", "no"), help="keep images in memory")
    defaults = TrainConfig()
    train.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    train.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    train.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    train.add_argument("--momentum", type=float, default=defaults.momentum)
    train.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="not on BN or biases")
    train.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    train.add_argument("--schedule", default=defaults.schedule, choices=SCHEDULES)
    train.add_argument("--warmup-epochs", type=float, default=defaults.warmup_epochs)
    train.add_argument("--seed", type=seed_int, default=defaults.seed)
    train.add_argument("--device", default=defaults.device, help="auto (CUDA when present), cpu, cuda[:N]")
    train.add_argument("--compile", action="store_true", help="torch.compile the model")
    train.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    train.add_argument("--workers", type=int, default=defaults.workers, help="DataLoader workers (file data)")
    train.add_argument("--test", action="store_true", help="also evaluate the test split at the end")
    train.add_argument("--no-measure", action="store_true", help="skip the latency measurement at the end")
    train.add_argument("-o", "--output", help="run directory: plan.json, model.pt, preprocess.json, metrics.json, "
                       "train_state.pt")
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT/train_state.pt")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The training recipe the flags describe (validated)."""
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, schedule=args.schedule,
        warmup_epochs=args.warmup_epochs, seed=args.seed, device=args.device, compile=args.compile,
        amp=not args.no_amp, workers=args.workers,
    )  # fmt: skip
    config.validate()
    return config

"""The `precrop` console script: every command of every layer, assembled at the top layer.

Commands are imported lazily by handler so `precrop info` never pays for the training stack.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from precrop.cli import add_precrop_commands, new_parser, run_precrop_command, run_reporting_user_errors
from trainers.cli import add_train_command


def build_parser() -> argparse.ArgumentParser:
    """The full `precrop` argument parser."""
    parser, commands = new_parser()
    add_precrop_commands(commands)
    add_train_command(commands)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "train":
        from trainers.cli import run_train

        return run_train(args)
    return run_precrop_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `precrop` console script."""
    return run_reporting_user_errors(_dispatch, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

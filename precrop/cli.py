"""The `info` and `allocate` commands of the `precrop` command line; user errors exit with code 2.

The full `precrop` command (with `train`, and later `search`) is assembled in `search/cli.py`, the top
layer; this module only knows the commands of the precrop package so that it imports nothing above it.
`python -m precrop.cli` runs just these commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from precrop.errors import UserError

EXIT_USER_ERROR = 2


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


MAX_SEED = 2**32 - 1  # numpy's SeedSequence and torch.manual_seed both take seeds in [0, 2**32)


def seed_int(text: str) -> int:
    """An argparse type: a random seed, an integer in [0, 2**32)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {MAX_SEED}, got {text[:40]!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {MAX_SEED}, got {value}")
    return value


def new_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[OneLineErrorParser]]:
    """The top-level `precrop` parser and its (empty) sub-command set."""
    parser = OneLineErrorParser(prog="precrop", description="Structured pruning of CNNs at initialization.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    return parser, commands


def add_precrop_commands(commands: argparse._SubParsersAction[OneLineErrorParser]) -> None:
    """Register `info` and `allocate` (without data loading)."""
    add_info_command(commands)
    add_allocate_command(commands)


def add_info_command(commands: argparse._SubParsersAction[OneLineErrorParser]) -> None:
    """Register `info`."""
    info = commands.add_parser("info", help="show a model's channel groups, layers and exact cost")
    info.add_argument("arch", help="a built-in name (see `precrop info --list`) or torchvision:<name>")
    info.add_argument("--num-classes", type=positive_int, default=None, help="default: the arch's")
    info.add_argument("--input-size", type=positive_int, default=None, help="square input side")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def add_allocate_command(commands: argparse._SubParsersAction[OneLineErrorParser]) -> OneLineErrorParser:
    """Register `allocate` with every method of the registry; return its parser (trainers adds data options)."""
    from precrop.methods.registry import METHODS

    alloc = commands.add_parser("allocate", help="widths or weight masks for a params and/or MACs budget")
    alloc.add_argument("arch")
    alloc.add_argument("--macs", type=float, help="MACs budget as a fraction of the dense model")
    alloc.add_argument("--params", type=float, help="parameter budget as a fraction of the dense model")
    alloc.add_argument("--allocator", default="synexp", choices=tuple(METHODS), metavar="METHOD",
                       help=f"one of {', '.join(METHODS)} (default synexp: PreCrop/PreConfig)")  # fmt: skip
    alloc.add_argument("--seed", type=seed_int, default=0,
                       help="seed of the dense model mask methods, pfs, prunenet score")
    alloc.add_argument("--variant", default="gp", help="channel mapping: gp (default), fit or internal")
    alloc.add_argument("--divisor", type=positive_int, default=8, help="widths are multiples of this")
    alloc.add_argument("--min-width", type=positive_int, default=8, help="no group narrower than this")
    alloc.add_argument("--expand", type=float, default=1.0, help="PreConfig: groups may grow to U x base")
    alloc.add_argument("--scale", type=float, help="PreConfig: MACs budget = S x base (S may exceed 1)")
    alloc.add_argument("--solver", default="closed_form", help="density program: closed_form or cvxpy")
    alloc.add_argument("--num-classes", type=positive_int, default=None)
    alloc.add_argument("--input-size", type=positive_int, default=None)
    alloc.add_argument("--json", action="store_true", help="print the plan JSON")
    alloc.add_argument("-o", "--output", help="write the plan JSON to this file")
    return alloc


def build_parser() -> argparse.ArgumentParser:
    """A parser with the precrop package's commands only."""
    parser, commands = new_parser()
    add_precrop_commands(commands)
    return parser


def run_precrop_command(args: argparse.Namespace) -> int:
    """Run `info` or `allocate`."""
    if args.command == "info":
        return _run_info(args)
    if args.command == "allocate":
        from precrop.allocate_cli import run_allocate

        return run_allocate(args)
    raise AssertionError(f"unhandled command {args.command}")


def run_reporting_user_errors(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call `handler`; a UserError becomes one line on stderr and exit code 2."""
    try:
        return handler(args)
    except UserError as exc:
        print(f"precrop: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m precrop.cli`: the info and allocate commands."""
    return run_reporting_user_errors(run_precrop_command, build_parser().parse_args(argv))


def _run_info(args: argparse.Namespace) -> int:
    from precrop.inspect import describe, info_dict, render_info

    table = describe(args.arch, num_classes=args.num_classes, input_size=args.input_size)
    if args.json:
        print(json.dumps(info_dict(table)))
    else:
        print(render_info(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())

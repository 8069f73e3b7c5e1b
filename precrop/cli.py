"""The `info`, `allocate` and `synexp` commands of the `precrop` command line; user errors exit with code 2.

The full `precrop` command (with `train`, and later `search`) is assembled in `search/cli.py`, the top
layer; this module only knows the commands of the precrop package so that it imports nothing above it.
`python -m precrop.cli` runs just these commands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from precrop.cli_args import EXIT_USER_ERROR, OneLineErrorParser, positive_int, seed_int
from precrop.errors import UserError, clip

EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a process SIGPIPE ended
EXIT_INTERRUPTED = 128 + 2  # ... and for one SIGINT (Ctrl-C) ended


def package_version() -> str:
    """The installed distribution's version, else the source tree's `precrop.__version__`."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("precrop-search")
    except PackageNotFoundError:
        from precrop import __version__

        return __version__


def new_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[OneLineErrorParser]]:
    """The top-level `precrop` parser (with --version) and its (empty) sub-command set."""
    parser = OneLineErrorParser(prog="precrop", description="Structured pruning of CNNs at initialization.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    return parser, commands


def add_precrop_commands(commands: argparse._SubParsersAction[OneLineErrorParser]) -> None:
    """Register `info`, `allocate` (without data loading) and `synexp`."""
    from precrop.proxy_cli import add_synexp_command

    add_info_command(commands)
    add_allocate_command(commands)
    add_synexp_command(commands)


def add_info_command(commands: argparse._SubParsersAction[OneLineErrorParser]) -> None:
    """Register `info`."""
    info = commands.add_parser("info", help="show a model's channel groups, layers and exact cost")
    info.add_argument("arch", nargs="?", help="a built-in name, torchvision:<name>, timm:<name> or "
                      "module.path:callable (see `precrop info --list`)")  # fmt: skip
    info.add_argument("--list", action="store_true", help="list the built-in names and the model sources")
    info.add_argument("--num-classes", type=positive_int, default=None, help="default: the arch's")
    info.add_argument("--input-size", type=positive_int, default=None, help="square input side")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def add_allocate_command(commands: argparse._SubParsersAction[OneLineErrorParser]) -> OneLineErrorParser:
    """Register `allocate` with every method of the registry; return its parser (trainers adds data options)."""
    from precrop.methods.registry import METHODS
    from precrop.width.mapping import VARIANTS
    from precrop.width.objective import OBJECTIVES

    alloc = commands.add_parser("allocate", help="widths or weight masks for a params and/or MACs budget")
    alloc.add_argument("arch", help="a built-in name or a model source (see `precrop info --list`)")
    alloc.add_argument("--macs", type=float, help="MACs budget as a fraction of the dense model")
    alloc.add_argument("--params", type=float, help="parameter budget as a fraction of the dense model")
    alloc.add_argument("--allocator", default="synexp", choices=tuple(METHODS), metavar="METHOD",
                       help=f"one of {', '.join(METHODS)} (default synexp: PreCrop/PreConfig)")  # fmt: skip
    alloc.add_argument(
        "--seed", type=seed_int, default=0, help="seed of the dense model mask methods, pfs, prunenet score"
    )
    alloc.add_argument("--variant", default="gp", choices=VARIANTS, type=one_of("variant", VARIANTS),
                       help=f"channel mapping: {', '.join(VARIANTS)} (default gp)")  # fmt: skip
    alloc.add_argument("--objective", default="layer", choices=OBJECTIVES, type=one_of("objective", OBJECTIVES),
                       help="what SynExp sums: layer (the paper's, every layer) or path (each channel mask once "
                       "per path: depthwise convs and gate branches add nothing; see docs/method.md)")  # fmt: skip
    alloc.add_argument("--divisor", type=positive_int, default=8, help="widths are multiples of this")
    alloc.add_argument("--min-width", type=positive_int, default=8, help="no group narrower than this")
    alloc.add_argument("--keep", action="append", metavar="LAYER", help="keep this layer's channel groups at base "
                       "width (a module name or glob pattern such as 'layer4.*'; repeat for more); the budget "
                       "still counts them")  # fmt: skip
    alloc.add_argument("--expand", type=float, default=1.0, help="PreConfig: groups may grow to U x base")
    alloc.add_argument("--scale", type=float, help="PreConfig: MACs budget = S x base (S may exceed 1)")
    solvers = density_solvers()
    alloc.add_argument("--solver", default="closed_form", choices=solvers, type=one_of("density solver", solvers),
                       help=f"density program: {', '.join(solvers)} (default closed_form)")  # fmt: skip
    alloc.add_argument("--num-classes", type=positive_int, default=None)
    alloc.add_argument("--input-size", type=positive_int, default=None)
    alloc.add_argument("--json", action="store_true", help="print the plan JSON")
    alloc.add_argument("-o", "--output", help="write the plan JSON to this file")
    return alloc


def one_of(what: str, allowed: Sequence[str]) -> Callable[[str], str]:
    """An argparse type for a fixed set of names: the error names the value and every choice."""

    def check(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"unknown {what} {text[:80]!r}; choose one of {', '.join(allowed)}")
        return text

    return check


def density_solvers() -> tuple[str, ...]:
    """The density solvers AllocationRequest accepts."""
    from precrop.width.allocate import DENSITY_SOLVERS

    return DENSITY_SOLVERS


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
    if args.command == "synexp":
        from precrop.proxy_cli import run_synexp

        return run_synexp(args)
    raise AssertionError(f"unhandled command {args.command}")


def run_reporting_user_errors(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call `handler`; a UserError becomes one line on stderr and exit code 2, Ctrl-C exit code 130."""
    try:
        return handler(args)
    except UserError as exc:
        print(f"precrop: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (MemoryError, RuntimeError) as exc:
        if not out_of_memory(exc):
            raise
        said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"precrop: error: not enough memory for what was asked ({clip(said, 160)}): fewer classes, a smaller "
              "input size or batch size need less", file=sys.stderr)  # fmt: skip
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `precrop info --list | head`: the reader left; stop quietly, as `cat` would
        return _reader_gone()
    except KeyboardInterrupt:  # Ctrl-C: one line, and the exit status a shell gives a process SIGINT ended
        print("precrop: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says memory ran out: Python's MemoryError, torch's CUDA OutOfMemoryError, or the
    RuntimeError torch's CPU allocator raises (checked by name and text, so this module imports no torch)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(exc)


def _reader_gone() -> int:
    """Point stdout at /dev/null (so the interpreter's final flush cannot fail again) and exit 141 (SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m precrop.cli`: the info and allocate commands."""
    return run_reporting_user_errors(run_precrop_command, build_parser().parse_args(argv))


def _run_info(args: argparse.Namespace) -> int:
    from precrop.inspect import describe, info_dict, list_models, render_info
    from precrop.nn.zoo import REGISTRY

    if args.list:
        print(list_models(as_json=args.json))
        return 0
    if args.arch is None:
        raise UserError("info needs an architecture (a built-in name or a model source); `precrop info --list` "
                        "lists them")  # fmt: skip
    table = describe(args.arch, num_classes=args.num_classes, input_size=args.input_size)
    spec = REGISTRY.get(args.arch)
    if args.json:
        print(json.dumps(info_dict(table, spec)))
    else:
        print(render_info(table, spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())

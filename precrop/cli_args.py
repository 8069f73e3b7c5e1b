"""What every `precrop` command's arguments share: the one-line-error parser and the argparse types.

Apart from precrop/cli.py so that command modules (precrop/proxy_cli.py, trainers/, search/) can use them
without importing the module that imports them.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

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

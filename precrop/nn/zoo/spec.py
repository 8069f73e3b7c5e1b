"""What the zoo knows about one architecture (ArchSpec), and the errors naming a model can raise."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from precrop.errors import MAX_SHOWN, UserError


@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture, and its natural number of classes and input size.

    `mean` and `std` are the per-channel input normalization the model was designed with, when its
    source records one (timm's pretrained config); training normalizes with the data's own statistics.
    """

    name: str
    build: Callable[[int], nn.Module]
    num_classes: int
    input_size: int
    description: str
    init: Callable[[nn.Module], None] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


class DuplicateArchError(ValueError):
    """Raised when a name is registered twice."""


class UnknownArchError(UserError):
    """A name that is neither registered nor a model source that can be found (module, attribute, timm name)."""


class ModelSourceError(UserError):
    """A model source that was found but does not give a usable model (it raises, returns no nn.Module, ...)."""


def shown(text: str, limit: int = MAX_SHOWN) -> str:
    """repr(text) cut to `limit` characters, for an error message that must stay one short line."""
    quoted = repr(text)
    return quoted if len(quoted) <= limit else f"{quoted[:limit]}... ({len(text)} characters)"


def first_line(exc: BaseException, limit: int = 200) -> str:
    """`TypeName: first line of the message`, at most `limit` characters: an exception in one line."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."

"""Errors a user can cause: the CLI prints their message on one line and exits with code 2."""

from __future__ import annotations

from typing import Any

MAX_SHOWN = 80  # characters of a user value echoed into an error message


class UserError(Exception):
    """A problem with the user's input (bad name, bad value, missing file), not a bug."""


class FieldError(UserError):
    """A value a settings class refuses, naming its `field` when one field is at fault.

    The message reads the same wherever the value came from; `field` lets a caller that set the field from
    its own input (a config key such as `space.lr`) say where the value came from, without repeating the rule.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def clip(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` cut to `limit` characters, with an ellipsis and the full length when it was longer."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """repr(value) for an error message: one line, at most `limit` characters (plus the length note)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print (Python's digit limit)
        text = f"<{type(value).__name__} too long to show>"
    return clip(text, limit)

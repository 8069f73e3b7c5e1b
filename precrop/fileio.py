"""Write files atomically: a temporary file beside the target, then a rename. Never a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from precrop.errors import UserError


def write_atomically(path: str | Path, data: bytes | str) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, nothing between.

    A missing directory or an OS error becomes a UserError naming the path.
    """
    target = Path(path)
    if not target.parent.exists():
        raise UserError(f"cannot write {target}: directory {target.parent} does not exist")
    payload = data.encode() if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {target}: {exc.strerror}") from exc


def check_writable_dir(path: str | Path, what: str) -> None:
    """Fail now, before any work, when directory `path` could not be created or written later.

    Creates nothing: walks up to the nearest existing folder and checks that one, so a failed command
    leaves no empty directories behind.
    """
    target = Path(path).expanduser().absolute()
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {existing} is not writable")

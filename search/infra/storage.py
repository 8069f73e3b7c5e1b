"""Where a search keeps Tune's files: local paths and URIs (s3://, gs://) as one pyarrow filesystem."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow.fs


def storage_filesystem(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """A pyarrow filesystem and the path on it (local paths and URIs such as s3://, as Tune uses)."""
    import pyarrow.fs

    if "://" in path:
        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        return fs, str(inner)
    return pyarrow.fs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def uncreatable_folder(path: str) -> str | None:
    """Why the local folder `path` cannot be created (the OS's reason), or None when it exists or can be.

    Probed without leaving anything behind: a temporary folder is made and removed in the nearest existing
    ancestor. URIs (s3://, gs://) are not probed: their rights show only when Tune writes.
    """
    import tempfile

    if "://" in path:
        return None
    target = Path(path).expanduser().resolve()
    ancestor = target
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor == target and target.is_dir():
        return None
    if not ancestor.is_dir():
        return f"{ancestor} is not a folder"
    try:
        Path(tempfile.mkdtemp(prefix=".precrop-probe-", dir=ancestor)).rmdir()
    except OSError as exc:
        return f"cannot create a folder in {ancestor}: {exc.strerror or type(exc).__name__}"
    return None

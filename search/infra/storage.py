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

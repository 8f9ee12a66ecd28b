"""Paths and file errors shared by all resources."""

from __future__ import annotations

import errno
from pathlib import Path

PathLike = Path | str
"""A filesystem path given as a `pathlib.Path` or a string."""


class ResourceFileError(ValueError):
    """A resource file exists but cannot be read: not NIfTI, truncated, corrupted, malformed.

    The message names the file and what is wrong with it. The low-level exception (zlib,
    gzip, struct, nibabel) stays available as ``__context__`` but is not shown in tracebacks.
    """


def normalize_path(path_input: PathLike) -> Path:
    """Expand ``~`` and make a path absolute (resolving symbolic links).

    Args:
        path_input: A path as a string or `pathlib.Path`.

    Returns:
        The absolute, resolved path.
    """
    return Path(path_input).expanduser().resolve()


def missing(path: Path, what: str) -> FileNotFoundError:
    """A `FileNotFoundError` naming ``path`` as a missing ``what`` (e.g. "NIfTI file")."""
    return FileNotFoundError(errno.ENOENT, f"{what} not found: {path}", str(path))


def require_file(path: Path, what: str) -> None:
    """Raise `FileNotFoundError` naming ``path`` unless it is an existing regular file."""
    if not path.is_file():
        raise missing(path, what)


def source_of(resource: object) -> str:
    """Where a resource's data lives, for messages: its file, or "in memory"."""
    path = getattr(resource, "path", None)
    return str(path) if isinstance(path, Path) else "in memory"

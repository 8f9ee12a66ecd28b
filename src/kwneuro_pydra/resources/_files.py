"""Paths and file errors shared by all resources."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from kwneuro_pydra._files import kind

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
    """Raise unless ``path`` is an existing regular file (links followed).

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it and ``what``).
        ResourceFileError: ``path`` is a FIFO, a device, a directory...: reading it could
            block forever or never end, so it is refused, naming it.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise missing(path, what) from None
    if not stat.S_ISREG(mode):
        raise ResourceFileError(f"{what} is not a regular file: {path} is {kind(mode)}")


def source_of(resource: object) -> str:
    """Where a resource's data lives, for messages: its file, or "in memory"."""
    path = getattr(resource, "path", None)
    return str(path) if isinstance(path, Path) else "in memory"

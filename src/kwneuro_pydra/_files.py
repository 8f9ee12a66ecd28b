"""Opening files of a cache directory that could be anything: never block, never map.

Anyone who can write a cache directory can put a FIFO, a device or a directory where a
sidecar, a lock record or a memo file should be. Opening a FIFO for reading blocks until a
writer appears, so every such file is opened with ``O_NONBLOCK`` and refused unless
``fstat`` says it is a regular file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["NotRegularFileError", "open_regular", "read_regular"]


class NotRegularFileError(IsADirectoryError):
    """A path names something other than a regular file (a directory, a FIFO, a device).

    A subclass of `IsADirectoryError`, which callers of `file_digest` already handle.
    """


def open_regular(path: str | Path) -> tuple[int, os.stat_result]:
    """Open a regular file for reading without blocking; return its descriptor and stat.

    Args:
        path: The file.

    Returns:
        A blocking-mode descriptor open for reading (the caller closes it) and its ``fstat``.

    Raises:
        NotRegularFileError: ``path`` is not a regular file (nothing is left open).
        OSError: ``path`` cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(f"not a regular file: {path}")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_regular(path: str | Path, limit: int = -1) -> bytes:
    """Return the content of a regular file, or its first ``limit`` bytes when not -1.

    Raises:
        NotRegularFileError: ``path`` is not a regular file.
        OSError: ``path`` cannot be read.
    """
    fd, st = open_regular(path)
    try:
        if limit >= 0:
            return os.read(fd, limit)
        chunks = [os.read(fd, st.st_size + 1)]
        if len(chunks[0]) <= st.st_size:  # at the end: one read unless the file grew
            return chunks[0]
        while chunks[-1]:
            chunks.append(os.read(fd, 1 << 16))
        return b"".join(chunks)
    finally:
        os.close(fd)

"""Files in folders others can write: never block, never map, never write through a link.

Anyone who can write a cache directory or an output folder (a lab's group-writable, setgid
folders) can put a FIFO, a device or a directory where a sidecar, a lock record or a memo
file should be, or a symbolic link to a file of another user. Opening a FIFO for reading
blocks until a writer appears, so every file read is opened with ``O_NONBLOCK`` and refused
unless ``fstat`` says it is a regular file. Every file written is either created fresh under
a random name (``O_CREAT | O_EXCL | O_NOFOLLOW``) and renamed into place (`write_atomic`),
or, for files shared on purpose (lock files), opened with ``O_NOFOLLOW`` (`open_shared`):
a planted link is refused with an `UnsafeFileError` naming it, never followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

__all__ = [
    "NotRegularFileError",
    "UnsafeFileError",
    "kind",
    "open_new",
    "open_regular",
    "open_shared",
    "read_regular",
    "temporary_name",
    "write_atomic",
    "write_new",
]


class NotRegularFileError(IsADirectoryError):
    """A path names something other than a regular file (a directory, a FIFO, a device).

    A subclass of `IsADirectoryError`, which callers of `file_digest` already handle.
    """


def kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, for messages: "a FIFO", "a directory" ..."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


class UnsafeFileError(OSError):
    """A symbolic link (or another non-regular file) found where a file is to be written.

    Someone who can write the folder may have planted it to make this process write into
    a file of theirs choosing; it is refused, never followed. ``errno`` is ``ELOOP``.
    """

    def __init__(self, path: str | Path, what: str = "a symbolic link") -> None:
        super().__init__(
            errno.ELOOP, f"{what} where a file is written; refused, not followed", str(path)
        )


_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def temporary_name(path: str | Path) -> Path:
    """A fresh hidden name beside ``path`` for writing it aside: ``.<name>.<random>.tmp``.

    The random part (64 bits) makes the name unguessable: never the pid, which repeats
    across containers and which anyone can predict.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def open_new(path: str | Path, mode: int = 0o666) -> int:
    """Create ``path`` for writing; it must not exist (not even as a link).

    Args:
        path: The new file (give it a `temporary_name` in a folder others can write).
        mode: Permission bits before the umask.

    Returns:
        A descriptor open for writing (the caller closes it).

    Raises:
        FileExistsError: Something (a file, a link, a FIFO) is at ``path``.
        OSError: ``path`` cannot be created.
    """
    return os.open(path, _NEW, mode)


def open_shared(path: str | Path) -> int:
    """Open (or create) a regular file that several processes share, e.g. a lock file.

    Opened read-write, non-blocking, never through a link: neither the file nor the folder
    holding it may be one (the file is opened relative to its folder, itself opened with
    ``O_NOFOLLOW``).

    Args:
        path: The file.

    Returns:
        A non-blocking descriptor open for reading and writing (the caller closes it).

    Raises:
        UnsafeFileError: ``path`` or its folder is a symbolic link, or ``path`` is not a
            regular file (nothing left open).
        OSError: ``path`` cannot be opened or created.
    """
    folder, name = os.path.split(path)
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:  # a link gives ELOOP, or ENOTDIR with O_DIRECTORY
        if error.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(folder):
            raise UnsafeFileError(folder) from None
        raise
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o666, dir_fd=folder_fd)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsafeFileError(path) from None
        raise OSError(error.errno, error.strerror, str(path)) from None  # named in full
    finally:
        os.close(folder_fd)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnsafeFileError(path, kind(mode))
    return fd


def write_new(path: str | Path, data: bytes, mode: int = 0o666) -> None:
    """Create ``path`` (which must not exist, not even as a link) holding ``data``.

    Args:
        path: The new file; its folder must exist.
        data: Its content.
        mode: Permission bits, before the umask.

    Raises:
        UnsafeFileError: ``path`` is a symbolic link.
        OSError: ``path`` exists or cannot be written.
    """
    fd = open_new(path, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes, *, mode: int = 0o666) -> None:
    """Replace ``path`` with ``data`` in one step: written aside, then renamed over it.

    A reader sees the old content or the new, never a part; a failure (a full disk, no
    permission) leaves the old file as it was and removes what was written aside. Nothing
    is written through a link planted at ``path`` or at the temporary name.

    Args:
        path: The file; its folder must exist.
        data: The new content.
        mode: Permission bits of a new file, before the umask.

    Raises:
        UnsafeFileError: ``path`` is a symbolic link (refused; the link is left as it is).
        OSError: The file could not be written; the error names ``path`` and the cause.
    """
    if os.path.islink(path):
        raise UnsafeFileError(path)
    temporary = temporary_name(path)
    try:
        write_new(temporary, data, mode)
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, UnsafeFileError) or error.errno is None:
            raise
        raise type(error)(error.errno, f"cannot write: {error.strerror}", str(path)) from error
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


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
            what = f"not a regular file ({kind(st.st_mode)})"
            raise NotRegularFileError(errno.EINVAL, what, str(path))
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

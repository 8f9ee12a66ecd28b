"""Inter-process lock of one cache entry, safe against crashes.

The lock is an ``flock`` on a lock file. The kernel releases it when its holder exits for any
reason, SIGKILL included, so a lock left by a dead process is recovered by the next waiter
without guessing from pids or ages. The holder writes who it is (host, pid, time) into the
file, so a waiter can say what it waits for. On NFS, Linux maps ``flock`` to POSIX locks that
the server's lock manager recovers when a client dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from kwneuro_pydra._files import read_regular

__all__ = ["EntryLock", "read_owner"]

_log = logging.getLogger("kwneuro_pydra")
_OWNER_BYTES = 256
"""Owner records are padded to this size (JSON allows trailing blanks), so writing one
always covers the last holder's: no truncation needed."""


def read_owner(path: str | Path) -> dict[str, object] | None:
    """Return the owner record of a lock file (host, pid, time), or None if unreadable."""
    try:
        owner = json.loads(read_regular(path, _OWNER_BYTES * 4))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


class EntryLock:
    """Exclusive lock on ``path``, usable as a context manager.

    Args:
        path: Lock file; created (with its directory) when acquired and removed when
            released.
        what: Human-readable name of what is locked, for the waiting message.
    """

    def __init__(self, path: str | Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        """Block until the lock is held by this process.

        Raises:
            OSError: The lock file cannot be created or its owner record written (a
                read-only directory, a full disk). The lock is then not held, and no lock
                file of this process is left behind.
        """
        announced = False
        while True:
            fd = self._open()
            locked = False
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not announced:
                        _log.info("waiting for %s, locked by %s", self.what, read_owner(self.path))
                        announced = True
                    fcntl.flock(fd, fcntl.LOCK_EX)
                locked = self._is_current(fd)
                if locked:
                    owner = {"host": _host(), "pid": os.getpid(), "time": _now()}
                    os.pwrite(fd, json.dumps(owner).encode().ljust(_OWNER_BYTES), 0)
                    self._fd = fd
                    return
            except BaseException:
                if locked:  # remove the file first: a waiter then locks a fresh one
                    with contextlib.suppress(OSError):
                        os.unlink(self.path)
                os.close(fd)
                raise
            os.close(fd)  # the holder removed this file on release: lock the new one

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            return os.open(self.path, flags, 0o644)
        except FileNotFoundError:  # the first entry of its step: make the step's directory
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            return os.open(self.path, flags, 0o644)

    def _is_current(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)

    def release(self) -> None:
        """Remove the lock file and release the lock."""
        if self._fd is None:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> EntryLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


@functools.cache
def _host() -> str:
    return socket.gethostname()


def _now() -> str:
    return datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="seconds")

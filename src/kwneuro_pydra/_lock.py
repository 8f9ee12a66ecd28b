"""Inter-process lock of one cache entry, safe against crashes and cheap to take.

Each entry key of a step owns one byte of the step's lock file ``<step>/.lock``, locked with
an open file description (OFD) lock. The kernel releases it when the holder's file is closed,
which happens when the holder exits for any reason, SIGKILL included, so a lock left by a dead
process is recovered by the next waiter without guessing from pids or ages. The file is
shared by every key and never removed, so taking a lock creates no file: open, lock, unlock,
close. Each open takes its own lock, so threads of one process exclude each other too. The
file is opened with ``O_NOFOLLOW``: a link planted at its place by another member of a
shared cache's group is refused, never written through.

One thread of one process opens each lock file once, however many keys of it it holds (a
step whose computation calls the same step with other arguments, thousands deep, holds one
descriptor), and a thread asking for a key it already holds (a step calling itself with its
own arguments) gets a `ReentrantLockError` instead of waiting for itself forever.

While it holds a key, the holder writes who it is (host, pid, time, key) into the key's slot
of the file, so a waiter can say what it waits for. On NFS, Linux sends OFD locks to the
server's lock manager, which recovers them when a client dies. Where OFD locks do not exist
(not Linux), the whole file is locked with ``flock``: entries of one step are then computed
one at a time, never two at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path
from types import TracebackType

from kwneuro_pydra._files import open_shared, read_regular

__all__ = ["LOCK_FILE", "EntryLock", "ReentrantLockError", "held", "read_owners"]

_log = logging.getLogger("kwneuro_pydra")

LOCK_FILE = ".lock"
"""Name of the lock file in each step directory."""

_SLOT_BYTES = 256
_SLOTS = 1024
"""Owner records: one slot of `_SLOT_BYTES` per key (by its first hex digits), so the lock
file is at most 256 KiB, sparse. Keys sharing a slot only share the waiting message's owner,
and the record names its key, so a waiter never shows another key's holder."""

_OFD = hasattr(fcntl, "F_OFD_SETLK")
_FLOCK = struct.Struct("hhqqi4x")
"""``struct flock`` of 64-bit Linux: type, whence, start, length, pid (0 for OFD locks)."""


def _offset(key: str) -> int:
    """The byte of the lock file that stands for ``key`` (60 bits of the key)."""
    return int(key[:15], 16)


def _slot(key: str) -> int:
    return (int(key[:3], 16) % _SLOTS) * _SLOT_BYTES


def _lock_key(fd: int, key: str, *, wait: bool) -> bool:
    """Lock ``key`` through the open file ``fd``; False if it is held elsewhere and ``wait``
    is off.
    """
    try:
        if _OFD:
            command = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
            fcntl.fcntl(fd, command, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, _offset(key), 1, 0))
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held elsewhere
        if wait:
            raise
        return False
    return True


class ReentrantLockError(RuntimeError):
    """This thread already holds the lock it asks for: it would wait for itself forever."""


class _Open:
    """One thread's open lock files: the descriptor of each path, and the keys each holds."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.by_path: dict[str, int] = {}
        self.keys: dict[int, set[str]] = {}


_threads = threading.local()


def _this_thread() -> _Open:
    """This thread's open lock files; none in a forked child (its descriptors would share
    the parent's locks).
    """
    mine: _Open | None = getattr(_threads, "open", None)
    if mine is None or mine.pid != os.getpid():
        mine = _threads.open = _Open()
    return mine


def _unlock_key(fd: int, key: str) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, _offset(key), 1, 0))


def held(path: str | Path, key: str | None = None) -> bool:
    """True when some open file holds the lock of ``key`` in the lock file ``path`` (any key
    when ``key`` is None). A missing lock file holds nothing.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # none, or a link planted there: holds nothing
        return False
    try:
        if not _OFD:
            return not _lock_key(fd, "", wait=False)  # closing the file drops it again
        start, length = (0, 0) if key is None else (_offset(key), 1)
        probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
        kind = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe))[0]
        return bool(kind != fcntl.F_UNLCK)
    finally:
        os.close(fd)


def read_owners(path: str | Path) -> dict[str, dict[str, object]]:
    """Return the owner records (host, pid, time, key) of the lock file ``path`` by key.

    A record is written by a key's holder and blanked when it releases; a holder that was
    killed leaves its record behind (see `held`). Unreadable records are left out.
    """
    try:
        data = read_regular(path, _SLOTS * _SLOT_BYTES)
    except OSError:
        return {}
    owners = {}
    for start in range(0, len(data), _SLOT_BYTES):
        raw = data[start : start + _SLOT_BYTES].strip(b"\0 ")
        with contextlib.suppress(ValueError):
            owner = json.loads(raw) if raw else None
            if isinstance(owner, dict) and isinstance(owner.get("key"), str):
                owners[owner["key"]] = owner
    return owners


class EntryLock:
    """Exclusive lock of one entry key, usable as a context manager.

    Args:
        path: The step's lock file; created (with its directory) when first needed, never
            removed.
        key: Entry key (64 hex) whose lock this is.
        what: Human-readable name of what is locked, for the waiting message.
    """

    def __init__(self, path: str | Path, key: str, what: str) -> None:
        self.path = str(path)
        self.key = key
        self.what = what
        self._fd: int | None = None
        self._mine = _Open()

    def acquire(self) -> None:
        """Block until the lock is held by this open file.

        Raises:
            ReentrantLockError: This thread holds the lock already (nothing changes).
            UnsafeFileError: A symbolic link or a file that is not regular is where the
                lock file should be (refused, never followed).
            OSError: The lock file cannot be created or opened for writing (a read-only
                directory, a full disk), or its owner record not written. The lock is then
                not held.
        """
        mine = self._mine = _this_thread()
        fd = mine.by_path.get(self.path)
        if fd is not None and self.key in mine.keys[fd] and self._is_current(fd):
            raise ReentrantLockError(
                f"{self.what} is being computed by this very call chain (a step calling "
                "itself with the same arguments)"
            )
        while True:
            fd = self._open(mine)
            locked = False
            try:
                if not _lock_key(fd, self.key, wait=False):
                    owner = read_owners(self.path).get(self.key)
                    _log.info("waiting for %s, locked by %s", self.what, owner)
                    _lock_key(fd, self.key, wait=True)
                locked = True
                if self._is_current(fd):
                    os.pwrite(fd, _owner_record(self.key), _slot(self.key))
                    self._fd = fd
                    return
            except BaseException:
                self._drop(mine, fd, locked)
                raise
            self._drop(mine, fd, locked)  # the step directory was made again: lock the new file

    def _open(self, mine: _Open) -> int:
        """This thread's descriptor of the lock file, opened when it holds none of it."""
        fd = mine.by_path.get(self.path)
        if fd is None or not _OFD or not self._is_current(fd):
            try:
                fd = open_shared(self.path)
            except FileNotFoundError:  # the first entry of its step: make the step's directory
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                fd = open_shared(self.path)
            mine.by_path[self.path] = fd
            mine.keys[fd] = set()
        mine.keys[fd].add(self.key)
        return fd

    def _drop(self, mine: _Open, fd: int, locked: bool) -> None:
        """Release this key's share of ``fd``: unlock its byte, close the file when no other
        key of this thread holds it (closing drops every lock of the file).
        """
        keys = mine.keys[fd]
        keys.discard(self.key)
        if keys:
            if locked:
                _unlock_key(fd, self.key)
            return
        del mine.keys[fd]
        if mine.by_path.get(self.path) == fd:
            del mine.by_path[self.path]
        os.close(fd)

    def _is_current(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)

    def release(self) -> None:
        """Blank the owner record and release the lock."""
        if self._fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.pwrite(self._fd, _BLANK, _slot(self.key))
        finally:
            fd, self._fd = self._fd, None
            self._drop(self._mine, fd, locked=True)

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


_BLANK = b" " * _SLOT_BYTES


def _owner_record(key: str) -> bytes:
    """This process's owner record for ``key``, padded to a slot (JSON allows blanks)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    record = f'{{"host": {_host()}, "pid": {os.getpid()}, "time": "{now}", "key": "{key}"}}'
    return record.encode()[:_SLOT_BYTES].ljust(_SLOT_BYTES)


@functools.cache
def _host() -> str:
    """This host's name as a JSON string, cut so that a record fits its slot."""
    return json.dumps(socket.gethostname()[:64])

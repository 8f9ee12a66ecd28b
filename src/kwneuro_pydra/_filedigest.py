"""Content digests of files on disk, memoised under a stat key.

The memo key is (device, inode, size, mtime_ns, ctime_ns). Users cannot set ctime, so an
in-place edit that restores the mtime still changes the key. The key never becomes the
identity: the digest is of the content alone, so identical files anywhere digest alike.

A file modified within the filesystem's timestamp granularity of being hashed could keep its
key while its content changes ("racy" files, as git calls them). Such files are hashed but
not memoised until their timestamps are at least `RACY_WINDOW_NS` old.

The memo lives in process memory and, while a `Cache` is active, also in files under that
cache's directory (`memo_directory`), so a warm check in a new process costs a stat and a
small read.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import threading
import time
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import NamedTuple

import xxhash

from kwneuro_pydra._files import open_new, open_regular, read_regular

__all__ = [
    "CHUNK_SIZE",
    "MEMO_TMP_PREFIX",
    "PERSIST_MIN_SIZE",
    "RACY_WINDOW_NS",
    "StatKey",
    "digest_written",
    "digests_by_content",
    "file_digest",
    "is_settled",
    "memo_directory",
    "record_digest",
    "stat_key",
    "unsteady_count",
]

RACY_WINDOW_NS = 1_000_000_000
"""Files changed less than this long ago (in ns) are hashed but not memoised."""

PERSIST_MIN_SIZE = 1 << 20
"""Files smaller than this (bytes) are hashed faster than a memo file is read: kept in
process memory only."""

CHUNK_SIZE = 256 << 10
"""Files are hashed by reading chunks of this many bytes into a reused buffer (small enough
to stay in the CPU's cache between the read and the hash)."""

MEMO_TMP_PREFIX = ".tmp-"
"""Prefix of a memo file being written (a crash can leave one: `Cache.prune` removes it)."""

_HEX32 = re.compile(rb"[0-9a-f]{32}")
StatKey = tuple[int, int, int, int, int]

_MEMORY_LIMIT = 200_000  # about 40 MB of keys and digests
_memory: dict[StatKey, str] = {}
_persisted: set[tuple[Path, StatKey]] = set()
"""(memo directory, stat key) pairs this process has written (or found) on disk."""
_memo_dir: ContextVar[Path | None] = ContextVar("kwneuro_pydra_memo_dir", default=None)
_by_content: ContextVar[bool] = ContextVar("kwneuro_pydra_by_content", default=False)
_local = threading.local()
_unsteady = 0


def unsteady_count() -> int:
    """How many times a file changed while it was hashed, in this process so far."""
    return _unsteady


@contextlib.contextmanager
def digests_by_content() -> Iterator[None]:
    """Ignore the memo while the context is active: every `file_digest` reads its file.

    Writes through a shared memory map (``np.memmap(mode="r+")``) to pages already dirty
    change neither mtime nor ctime, so the stat key cannot see them; reading can.
    """
    token = _by_content.set(True)
    try:
        yield
    finally:
        _by_content.reset(token)


@contextlib.contextmanager
def memo_directory(directory: Path) -> Iterator[None]:
    """Persist file digests under ``directory`` while the context is active.

    Args:
        directory: Directory for memo files; created on first write.
    """
    token = _memo_dir.set(directory)
    try:
        yield
    finally:
        _memo_dir.reset(token)


def stat_key(st: os.stat_result) -> StatKey:
    """The memo key of a file: (device, inode, size, mtime_ns, ctime_ns)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _Hashed(NamedTuple):
    digest: str
    stat: os.stat_result
    """The file's status when hashing started."""
    steady: bool
    """False when the file changed while it was hashed."""


def _hash_file(path: str | Path) -> _Hashed:
    """Hash a file by reading it (a memory map would die of SIGBUS if it shrank meanwhile)."""
    fd, before = open_regular(path)
    try:
        if before.st_size < CHUNK_SIZE:
            data = os.read(fd, before.st_size + 1)
            digest, length = xxhash.xxh3_128_hexdigest(data), len(data)
        else:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # a larger read-ahead
            hasher, length = xxhash.xxh3_128(), 0
            buffer = _buffer()
            with io.FileIO(fd, closefd=False) as reader:
                while count := reader.readinto(buffer):
                    hasher.update(buffer[:count])
                    length += count
            digest = hasher.hexdigest()
        after = os.fstat(fd)
    finally:
        os.close(fd)
    steady = length == before.st_size and stat_key(after) == stat_key(before)
    return _Hashed(digest, before, steady)


def _buffer() -> memoryview:
    """This thread's read buffer of `CHUNK_SIZE` bytes (reused: allocating costs page faults)."""
    buffer: memoryview | None = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = memoryview(bytearray(CHUNK_SIZE))
    return buffer


def _memo_file(directory: Path, key: StatKey) -> Path:
    name = xxhash.xxh3_128_hexdigest(":".join(map(str, key)).encode())
    return directory / name[:2] / name


def _read_persistent(directory: Path, key: StatKey) -> str | None:
    try:
        raw = read_regular(_memo_file(directory, key), 33)
    except OSError:
        return None
    return raw.decode("latin-1") if _HEX32.fullmatch(raw) else None


def _write_persistent(directory: Path, key: StatKey, digest: str) -> None:
    """Store a digest in the memo directory; on any failure (a full disk, a read-only cache)
    leave nothing behind, not even the temporary file.
    """
    target = _memo_file(directory, key)
    tmp = target.parent / f"{MEMO_TMP_PREFIX}{secrets.token_hex(8)}-{target.name}"
    try:
        try:
            fd = open_new(tmp, 0o644)
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = open_new(tmp, 0o644)
        try:
            os.write(fd, digest.encode("ascii"))
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def file_digest(path: str | Path, *, settled: bool = False) -> str:
    """Return the xxh3-128 hex digest of a regular file's content, memoised by stat key.

    Inside `digests_by_content` the memo is not consulted: the file is read again.

    Args:
        path: Path of an existing regular file.
        settled: The caller guarantees nobody writes the file any more (a cache output whose
            writer has returned): memoise it even if it changed within the racy window.

    Returns:
        32 lowercase hex characters.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is not a regular file (`NotRegularFileError`).

    Warns:
        UserWarning: The file changed while it was hashed (the digest then describes no
            single version of it, and is not memoised).
    """
    if not _by_content.get():
        st = os.stat(path)
        digest = _memoised(stat_key(st), st.st_size)
        if digest is not None:
            return digest
    return _checked(path, _hash_file(path), settled=settled).digest


def digest_written(path: str | Path) -> tuple[int, str]:
    """Hash a file its writer has just closed for good (a cache output) and memoise it.

    Only the in-memory memo is consulted first, where its writer may have put the digest
    of the bytes it wrote (`record_digest`); otherwise the file is read.

    Returns:
        The file's size and the xxh3-128 hex digest of its content.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is not a regular file (`NotRegularFileError`).
    """
    st = os.stat(path)
    digest = _memory.get(stat_key(st))
    if digest is not None:
        return st.st_size, digest
    hashed = _checked(path, _hash_file(path), settled=True)
    return hashed.stat.st_size, hashed.digest


def record_digest(path: str | Path, digest: str) -> None:
    """Memoise the digest of a file its writer hashed while writing it (no read-back).

    Args:
        path: A regular file the caller has just written and closed; nobody else writes it.
        digest: The xxh3-128 hex digest of exactly the bytes written, as `file_digest`
            computes it.
    """
    st = os.stat(path)
    _remember(stat_key(st), digest, st.st_size)


def carry_over(path: str | Path, before: os.stat_result) -> None:
    """Keep the memoised digest of a file whose status changed only in its ctime.

    A new hard link to a file changes its ctime, which is part of the memo's key, and not a
    byte of the file. Called right after making one, with the file's status from just before,
    this files the digest under the new key too (in memory and, inside a `Cache`, on disk),
    so the next look, in this process or another, does not read the file again. Nothing is
    kept when the digest was not memoised or when the size or mtime changed (a write between
    the two).

    Args:
        path: The file.
        before: Its ``os.stat`` from before the link.
    """
    old = stat_key(before)
    digest = _memoised(old, before.st_size)
    if digest is None:
        return
    after = os.stat(path)
    if stat_key(after)[:4] == old[:4]:  # device, inode, size, mtime
        _remember(stat_key(after), digest, after.st_size)


def _memoised(key: StatKey, size: int) -> str | None:
    """The digest memoised under a stat key, or None.

    Looked up in memory, then, for a large file inside a `Cache`, in the memo directory
    (and kept in memory). Inside a `Cache`, a large file's digest found in memory only
    (first computed outside any `Cache`) is written to the memo directory.
    """
    digest = _memory.get(key)
    directory = _memo_dir.get()
    if directory is None or size < PERSIST_MIN_SIZE:
        return digest
    if digest is not None:
        _persist_once(directory, key, digest)
    elif (digest := _read_persistent(directory, key)) is not None:
        _memory[key] = digest
        _persisted.add((directory, key))
    return digest


def _checked(path: str | Path, hashed: _Hashed, *, settled: bool) -> _Hashed:
    """Memoise a digest unless the file changed while it was hashed (then warn) or may
    still change unseen (see `is_settled`).
    """
    if not hashed.steady:
        global _unsteady
        _unsteady += 1
        warnings.warn(
            f"file {path} changed while it was hashed: its fingerprint matches no single "
            "version of it (a step called with it stores no entry)",
            UserWarning,
            stacklevel=3,
        )
    elif settled or is_settled(hashed.stat):
        _remember(stat_key(hashed.stat), hashed.digest, hashed.stat.st_size)
    return hashed


def _remember(key: StatKey, digest: str, size: int) -> None:
    """Memoise a digest in memory and, for a large file inside a `Cache`, on disk."""
    if len(_memory) >= _MEMORY_LIMIT:
        _memory.clear()
    _memory[key] = digest
    directory = _memo_dir.get()
    if directory is not None and size >= PERSIST_MIN_SIZE:
        _persist_once(directory, key, digest)


def _persist_once(directory: Path, key: StatKey, digest: str) -> None:
    """Write a digest to the memo directory unless this process already did."""
    if (directory, key) not in _persisted:
        if len(_persisted) >= _MEMORY_LIMIT:
            _persisted.clear()
        _persisted.add((directory, key))
        _write_persistent(directory, key, digest)


def is_settled(st: os.stat_result) -> bool:
    """True when the file last changed at least `RACY_WINDOW_NS` ago (safe to memoise)."""
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) >= RACY_WINDOW_NS

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
import mmap
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

import xxhash

__all__ = [
    "PERSIST_MIN_SIZE",
    "RACY_WINDOW_NS",
    "StatKey",
    "file_digest",
    "is_settled",
    "memo_directory",
    "record_digest",
    "stat_key",
]

RACY_WINDOW_NS = 1_000_000_000
"""Files changed less than this long ago (in ns) are hashed but not memoised."""

PERSIST_MIN_SIZE = 1 << 20
"""Files smaller than this (bytes) are hashed faster than a memo file is read: kept in
process memory only."""

_HEX32 = re.compile(rb"[0-9a-f]{32}")
StatKey = tuple[int, int, int, int, int]

_MEMORY_LIMIT = 200_000  # about 40 MB of keys and digests
_memory: dict[StatKey, str] = {}
_memo_dir: ContextVar[Path | None] = ContextVar("kwneuro_pydra_memo_dir", default=None)


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


def _hash_file(path: str | Path, size: int) -> str:
    with open(path, "rb") as handle:
        if size == 0:
            return xxhash.xxh3_128_hexdigest(b"")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return xxhash.xxh3_128_hexdigest(mapped)


def _memo_file(directory: Path, key: StatKey) -> Path:
    name = xxhash.xxh3_128_hexdigest(":".join(map(str, key)).encode())
    return directory / name[:2] / name


def _read_persistent(directory: Path, key: StatKey) -> str | None:
    try:
        with open(_memo_file(directory, key), "rb") as handle:
            raw = handle.read(33)
    except OSError:
        return None
    return raw.decode("latin-1") if _HEX32.fullmatch(raw) else None


def _write_persistent(directory: Path, key: StatKey, digest: str) -> None:
    target = _memo_file(directory, key)
    with contextlib.suppress(OSError):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            os.write(fd, digest.encode("ascii"))
        finally:
            os.close(fd)
        os.replace(tmp, target)


def file_digest(path: str | Path, *, settled: bool = False) -> str:
    """Return the xxh3-128 hex digest of a regular file's content, memoised by stat key.

    Args:
        path: Path of an existing regular file.
        settled: The caller guarantees nobody writes the file any more (a cache output whose
            writer has returned): memoise it even if it changed within the racy window.

    Returns:
        32 lowercase hex characters.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is not a regular file.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise IsADirectoryError(f"not a regular file: {path}")
    key = stat_key(st)
    digest = _memory.get(key)
    if digest is not None:
        return digest
    directory = _memo_dir.get() if st.st_size >= PERSIST_MIN_SIZE else None
    if directory is not None:
        digest = _read_persistent(directory, key)
        if digest is not None:
            _memory[key] = digest
            return digest
    digest = _hash_file(path, st.st_size)
    if (settled or is_settled(st)) and stat_key(os.stat(path)) == key:
        _remember(key, digest, directory)
    return digest


def record_digest(path: str | Path, digest: str) -> None:
    """Memoise the digest of a file its writer hashed while writing it (no read-back).

    Args:
        path: A regular file the caller has just written and closed; nobody else writes it.
        digest: The xxh3-128 hex digest of exactly the bytes written, as `file_digest`
            computes it.
    """
    st = os.stat(path)
    directory = _memo_dir.get() if st.st_size >= PERSIST_MIN_SIZE else None
    _remember(stat_key(st), digest, directory)


def _remember(key: StatKey, digest: str, directory: Path | None) -> None:
    if len(_memory) >= _MEMORY_LIMIT:
        _memory.clear()
    _memory[key] = digest
    if directory is not None:
        _write_persistent(directory, key, digest)


def is_settled(st: os.stat_result) -> bool:
    """True when the file last changed at least `RACY_WINDOW_NS` ago (safe to memoise)."""
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) >= RACY_WINDOW_NS

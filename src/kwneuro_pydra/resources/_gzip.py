"""Gzip for NIfTI files: ISA-L (the ``isal`` package) when it is installed, else the stdlib.

Both write ordinary gzip streams that every reader opens (nibabel, FSL, ``gunzip``), and both
write them deterministically: no file name, modification time 0, so the same image always
gives the same bytes. The two libraries' bytes differ from each other; ISA-L's do not depend
on the number of threads compressing them.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import zlib
from collections.abc import Iterator
from types import ModuleType
from typing import IO

_isal_zlib: ModuleType | None
_igzip_threaded: ModuleType | None
try:
    from isal import igzip_threaded as _igzip_threaded
    from isal import isal_zlib as _isal_zlib
except ImportError:  # the standard library's zlib serves, slower
    _isal_zlib = _igzip_threaded = None

BACKEND = "zlib" if _isal_zlib is None else "isal"
"""Which library compresses and decompresses: ``"isal"`` (ISA-L) or ``"zlib"``."""

ISAL_LEVEL = 2
"""ISA-L's compression level (0-3): measured fastest here, and smaller than zlib's level 1."""

ZLIB_LEVEL = 1
"""The standard library's compression level: nibabel's default, for the same speed and size."""

MAX_THREADS = 2
"""Most threads compressing one file (ISA-L only; the bytes do not depend on it)."""

THREADED_MIN_BYTES = 8 << 20
"""Smaller files are compressed by one thread: a second one only adds hand-over latency."""

ERRORS: tuple[type[BaseException], ...] = (zlib.error, EOFError) + (
    () if _isal_zlib is None else (_isal_zlib.error,)
)
"""What decompressing a damaged stream raises."""


def _threads(size: int) -> int:
    if size < THREADED_MIN_BYTES:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cpus))


@contextlib.contextmanager
def gzip_writer(raw: io.RawIOBase, size: int) -> Iterator[IO[bytes] | gzip.GzipFile]:
    """A gzip stream whose compressed bytes go to ``raw``; finished (not ``raw``) on exit.

    Args:
        raw: A writable binary file object; it stays open.
        size: About how many bytes will be written (picks the number of threads).

    Yields:
        A binary stream to write the uncompressed bytes to (not seekable).
    """
    stream: IO[bytes] | gzip.GzipFile
    if _igzip_threaded is None:
        stream = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=ZLIB_LEVEL, mtime=0)
    else:
        stream = _igzip_threaded.open(raw, "wb", compresslevel=ISAL_LEVEL, threads=_threads(size))
    with stream:
        yield stream


class OversizeError(ValueError):
    """A gzip stream inflates to more bytes than its file's header declares."""


def gunzip(data: bytes, size: int) -> bytes:
    """Decompress a gzip file's content, at most ``size`` bytes, allocating the output once.

    A stream of several members (``cat a.gz b.gz``) gives their concatenation. Memory stays
    bounded by ``size`` whatever the stream holds (a "gzip bomb" inflating to gigabytes
    from a few megabytes is refused after ``size + 1`` bytes).

    Args:
        data: The whole compressed file.
        size: How many bytes the stream should inflate to (from the file's own header).

    Returns:
        The uncompressed bytes (fewer than ``size`` when the stream is short).

    Raises:
        OversizeError: the stream holds more than ``size`` bytes.
        zlib.error: the stream is corrupted (ISA-L raises its own ``IsalError``; both are in
            `ERRORS`).
        EOFError: the stream ends before its end-of-stream marker.
    """
    codec = zlib if _isal_zlib is None else _isal_zlib
    member = codec.decompressobj(31)
    out: bytes = member.decompress(data, size + 1)
    if member.eof and member.unused_data[:2] != b"\x1f\x8b":
        return _bounded(out, size)
    if not member.eof and len(out) <= size:
        raise EOFError("gzip stream ended before its end-of-stream marker")
    parts = [_bounded(out, size)]
    data, size = member.unused_data, size - len(out)
    while data[:2] == b"\x1f\x8b":
        member = codec.decompressobj(31)
        parts.append(_bounded(member.decompress(data, size + 1), size))
        if not member.eof:
            raise EOFError("gzip stream ended before its end-of-stream marker")
        data, size = member.unused_data, size - len(parts[-1])
    return b"".join(parts)


def _bounded(out: bytes, size: int) -> bytes:
    if len(out) > size:
        raise OversizeError(f"the gzip stream holds more than the {size} bytes declared")
    return out


def gunzip_head(data: bytes, size: int) -> bytes:
    """The first ``size`` bytes of a gzip stream (fewer if it is shorter), inflating no more.

    Raises:
        zlib.error: the stream is corrupted (or ISA-L's error; see `ERRORS`).
    """
    codec = zlib if _isal_zlib is None else _isal_zlib
    head: bytes = codec.decompressobj(31).decompress(data, size)
    return head

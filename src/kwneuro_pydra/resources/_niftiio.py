"""NIfTI-1 file I/O: writing through fast gzip with the file's digest, decoding voxels once.

nibabel owns the format: it writes the header and the voxels (`Nifti1Image.to_file_map`),
parses headers and decides the scaling; this module only moves the bytes. Writing hashes the
bytes on their way to disk and records the digest in the stat-keyed memo, so the cache never
reads a file back to describe it. Reading a ``.nii.gz`` decompresses the whole file in one
call (ISA-L when installed) and views the voxels in the decompressed bytes without a copy.

Decoded volumes are memoised per process under the file's stat key (device, inode, size,
mtime_ns, ctime_ns), in a least-recently-used memo bounded in bytes: the environment variable
``KWNEURO_PYDRA_VOLUME_MEMO_MB`` (default `DEFAULT_MEMO_MB`; 0 turns the memo off). So a
volume is decompressed at most once per process while its file is unchanged. The arrays are
read-only (``flags.writeable`` is False): every caller shares them. Files changed within the
last second are not memoised (a rewrite within the filesystem's timestamp granularity could
keep their key).
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import xxhash
from nibabel.fileholders import FileHolder
from nibabel.nifti1 import Nifti1Header, Nifti1Image
from nibabel.volumeutils import apply_read_scaling
from numpy.typing import NDArray

from kwneuro_pydra._filedigest import StatKey, is_settled, record_digest, stat_key
from kwneuro_pydra._files import open_regular
from kwneuro_pydra.resources import _gzip
from kwneuro_pydra.resources._files import ResourceFileError

MEMO_ENV = "KWNEURO_PYDRA_VOLUME_MEMO_MB"
"""Environment variable bounding the decoded-volume memo of each process, in MiB."""

DEFAULT_MEMO_MB = 1024
"""The memo's bound when `MEMO_ENV` is not set: several DWIs of realistic size."""


class _Memo:
    """Decoded volumes by stat key, least recently used first, bounded in bytes."""

    def __init__(self) -> None:
        self._arrays: OrderedDict[StatKey, NDArray[Any]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: StatKey) -> NDArray[Any] | None:
        with self._lock:
            array = self._arrays.get(key)
            if array is not None:
                self._arrays.move_to_end(key)
            return array

    def put(self, key: StatKey, array: NDArray[Any]) -> None:
        limit = int(float(os.environ.get(MEMO_ENV, DEFAULT_MEMO_MB)) * 2**20)
        with self._lock:
            if key in self._arrays or array.nbytes > limit:
                return
            self._arrays[key] = array
            self._bytes += array.nbytes
            while self._bytes > limit:
                _, evicted = self._arrays.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._arrays.clear()
            self._bytes = 0


_memo = _Memo()


def read_gzipped_voxels(path: Path) -> NDArray[Any]:
    """The voxels of a ``.nii.gz`` file, scaled as nibabel scales them; read-only.

    Args:
        path: The file.

    Returns:
        The array in its stored dtype (floats when the header scales it), Fortran order, a
        view of the decompressed bytes when unscaled.

    Raises:
        FileNotFoundError: the file does not exist.
        EOFError: the file holds fewer voxel bytes than its header says.
        Exception: one of `_gzip.ERRORS` or nibabel's header errors for a damaged file.
    """
    with os.fdopen(open_regular(path)[0], "rb") as handle:
        key = stat_key(os.fstat(handle.fileno()))
        cached = _memo.get(key)
        if cached is not None:
            return cached
        data = handle.read()
        st = os.fstat(handle.fileno())
    head = _gzip.gunzip_head(data, _HEADER_BYTES)
    needed = image_bytes(Nifti1Header.from_fileobj(io.BytesIO(head), check=True), path)  # type: ignore[no-untyped-call]
    try:
        raw = _gzip.gunzip(data, needed)
    except _gzip.OversizeError as error:
        raise _gzip.OversizeError(f"{path}: {error} by its NIfTI header") from None
    array = _voxels(raw)
    if stat_key(st) == key and is_settled(st):
        _memo.put(key, array)
    return array


_HEADER_BYTES = 352
"""A NIfTI-1 header and the extension flag that follows it."""

MAX_IMAGE_ENV = "KWNEURO_PYDRA_MAX_IMAGE_MB"
"""Environment variable: the largest image (header and voxels, in MiB) a file may declare;
by default the physical memory of the machine."""


def max_image_bytes() -> int:
    """The largest image a NIfTI header may declare (`MAX_IMAGE_ENV`, else the machine's
    physical memory).
    """
    given = os.environ.get(MAX_IMAGE_ENV)
    if given:
        return int(float(given) * 2**20)
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def image_bytes(header: Nifti1Header, path: Path) -> int:
    """The bytes a NIfTI-1 file's header says its image takes (offset and voxels).

    Raises:
        ResourceFileError: more than `max_image_bytes`: reading it would exhaust memory.
    """
    shape = [max(int(n), 0) for n in header.get_data_shape()]  # type: ignore[no-untyped-call]
    itemsize = int(header.get_data_dtype().itemsize)  # type: ignore[no-untyped-call]
    offset = int(header.get_data_offset())  # type: ignore[no-untyped-call]
    needed = offset + itemsize * math.prod(shape)
    limit = max_image_bytes()
    if needed > limit:
        shown = "x".join(map(str, shape))
        msg = (
            f"NIfTI file {path}: its header declares {shown} voxels ({needed / 2**30:.1f} GiB),"
            f" more than the {limit / 2**30:.1f} GiB allowed (set {MAX_IMAGE_ENV} to change it)"
        )
        raise ResourceFileError(msg)
    return needed


def _voxels(raw: bytes) -> NDArray[Any]:
    header = Nifti1Header.from_fileobj(io.BytesIO(raw), check=True)  # type: ignore[no-untyped-call]
    # nibabel's own reading of the header: shape, dtype, offset, order, slope and intercept.
    proxy = Nifti1Image.ImageArrayProxy(io.BytesIO(), header, mmap=False)  # type: ignore[no-untyped-call]
    count = int(np.prod(proxy.shape, dtype=np.int64))
    needed = proxy.offset + count * proxy.dtype.itemsize
    if len(raw) < needed:
        msg = f"the header needs {needed} bytes, the decompressed file has {len(raw)}"
        raise EOFError(msg)
    unscaled = np.ndarray(
        proxy.shape, proxy.dtype, buffer=raw, offset=proxy.offset, order=proxy.order
    )
    array: NDArray[Any] = apply_read_scaling(
        unscaled, np.asanyarray(proxy.slope), np.asanyarray(proxy.inter)
    )
    array.flags.writeable = False
    return array


class _Writable(Protocol):
    def write(self, data: memoryview, /) -> object: ...

    def flush(self) -> None: ...


class _Forward(io.RawIOBase):
    """A write-only stream that tracks its position and can hash what passes through.

    Seeking is refused except to where it already is: nibabel then pads with zeros itself.
    """

    def __init__(self, target: _Writable, hasher: Any = None) -> None:
        self._target = target
        self._position = 0
        self._hasher = hasher

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self._hasher is not None:
            self._hasher.update(view)
        self._target.write(view)
        self._position += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or offset != self._position:
            raise io.UnsupportedOperation("forward-only stream")
        return self._position

    def flush(self) -> None:
        self._target.flush()


def write_image(image: Nifti1Image, path: Path) -> None:
    """Write ``image`` to ``path`` (gzip-compressed for ``.gz``) and record its digest.

    Args:
        image: The image; nibabel writes its header and voxels.
        path: The destination; replaced if it exists.
    """
    hasher = xxhash.xxh3_128()
    with open(path, "wb") as handle, _Forward(handle, hasher) as sink:
        if path.name.lower().endswith(".gz"):
            size = np.asanyarray(image.dataobj).nbytes  # an in-memory image: no copy
            with _gzip.gzip_writer(sink, size) as stream, _Forward(stream) as forward:
                _to_stream(image, forward)
        else:
            _to_stream(image, sink)
    record_digest(path, hasher.hexdigest())


def _to_stream(image: Nifti1Image, stream: io.RawIOBase) -> None:
    image.to_file_map({"image": FileHolder(fileobj=stream)})  # type: ignore[no-untyped-call]

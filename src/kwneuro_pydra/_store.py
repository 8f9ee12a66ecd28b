"""Cache entries on disk: layout, sidecar format, atomic publish, locks, listing and pruning.

Layout of one cache directory::

    <cache_dir>/<step>/<key>/<output files>        one complete entry
    <cache_dir>/<step>/<key>/<step>.params.json    its sidecar, written last
    <cache_dir>/<step>/.lock                        one byte per key, locked while computed
    <cache_dir>/<step>/.tmp-<key>/                  an entry being written
    <cache_dir>/.kwneuro/digests/                   the persistent file-digest memo

An entry is written into a hidden temporary directory and renamed into place, so it appears
whole or not at all. The sidecar records the size and content digest of every output file;
a lookup checks them (through the stat-keyed memo, so a warm check costs one stat per file),
so a file truncated or edited after publishing is a miss, never a wrong hit.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from kwneuro_pydra._exchange import exchange
from kwneuro_pydra._filedigest import (
    MEMO_TMP_PREFIX,
    StatKey,
    digest_written,
    file_digest,
    is_settled,
    stat_key,
)
from kwneuro_pydra._files import read_regular
from kwneuro_pydra._lock import LOCK_FILE, EntryLock
from kwneuro_pydra._version import __version__

__all__ = [
    "FORMAT_VERSION",
    "LEFTOVER_PREFIXES",
    "Entry",
    "SidecarError",
    "Store",
    "decode_scalar",
    "discard",
    "encode_scalar",
    "entry_key",
]

FORMAT_VERSION = 1
"""Version of the sidecar format; a sidecar of another version is a miss."""

Scalar = bool | int | float | str | None
_NONFINITE = "float"


def encode_scalar(value: Scalar) -> Any:
    """Return the JSON form of a scalar; non-finite floats become ``{"float": "nan"}`` etc."""
    if isinstance(value, float) and not math.isfinite(value):
        return {_NONFINITE: repr(value)}
    return value


def decode_scalar(value: Any) -> Scalar:
    """Invert `encode_scalar`."""
    if isinstance(value, dict):
        return float(value[_NONFINITE])
    return value  # type: ignore[no-any-return]


def entry_key(scalars: Mapping[str, Any], hashes: Mapping[str, str], code: str) -> str:
    """Return the 64-hex key of the entry of these (JSON-encoded) arguments and this code."""
    text = _KEY_ENCODER.encode({"scalars": scalars, "hashes": hashes, "code": code})
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


_KEY_ENCODER = json.JSONEncoder(sort_keys=True, allow_nan=False, ensure_ascii=False)


@attrs.frozen
class Entry:
    """One stored entry of a step, as its sidecar describes it.

    Attributes:
        step: Step name.
        key: Entry key (64 hex).
        path: Entry directory.
        scalars: Scalar arguments, decoded.
        hashes: Fingerprints of the other arguments.
        code: Fingerprint of the step's code when the entry was made, or None.
        files: Output file name -> {"size": int, "digest": str}.
        created: Creation time, ISO 8601 UTC.
        duration: Seconds the step took to compute.
        library: Library name and version that wrote the entry.
    """

    step: str
    key: str
    path: Path
    scalars: dict[str, Scalar]
    hashes: dict[str, str]
    code: str | None
    files: dict[str, dict[str, Any]]
    created: str
    duration: float
    library: str

    def selected_by(self, scalars: Mapping[str, Any], hashes: Mapping[str, str]) -> bool:
        """True when these (JSON-encoded) arguments are the entry's."""
        stored = {name: encode_scalar(value) for name, value in self.scalars.items()}
        return self.hashes == hashes and stored == scalars

    def lacks(self, files: list[str]) -> bool:
        """Return True when some of ``files`` are not outputs of this entry."""
        return not self.files.keys() >= set(files)

    @property
    def nbytes(self) -> int:
        """Total size of the output files in bytes."""
        return sum(int(f["size"]) for f in self.files.values())


_SIDECAR_LIMIT = 50_000
_SIDECARS: dict[tuple[str, StatKey], Entry] = {}
"""Parsed sidecars by path and stat key: a warm hit reads no JSON."""

LEFTOVER_PREFIXES = (".tmp-", ".trash-", ".swap-")
"""Hidden names a crashed or interrupted writer can leave in a step directory."""


class SidecarError(ValueError):
    """A sidecar that is not one this library wrote: unknown format or malformed fields."""


def _sidecar_name(step: str) -> str:
    return f"{step}.params.json"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    """True for what `encode_scalar` writes."""
    if isinstance(value, dict):
        return value.keys() == {_NONFINITE} and value[_NONFINITE] in ("nan", "inf", "-inf")
    return value is None or isinstance(value, bool | str) or _is_number(value)


def _is_file_record(value: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("digest"), str):
        return False
    size = value.get("size")
    return isinstance(size, int) and not isinstance(size, bool) and size >= 0


def _is_timestamp(value: Any) -> bool:
    try:
        datetime.fromisoformat(value).timestamp()
    except (TypeError, ValueError, OverflowError):
        return False
    return True


_FIELDS: dict[str, Callable[[Any], bool]] = {
    "scalars": lambda v: isinstance(v, dict) and all(map(_is_scalar, v.values())),
    "hashes": lambda v: isinstance(v, dict) and all(isinstance(h, str) for h in v.values()),
    "code": lambda v: v is None or isinstance(v, str),
    "files": lambda v: isinstance(v, dict) and all(map(_is_file_record, v.values())),
    "created": _is_timestamp,
    "duration": _is_number,
    "library": lambda v: isinstance(v, str),
}
"""Every field an entry needs, with what a well-formed value is."""


def _validate(raw: Any, key: str) -> dict[str, Any]:
    """Return ``raw`` if it is a sidecar this library wrote for the entry ``key``.

    Raises:
        SidecarError: Another format, a missing or malformed field, or arguments that do not
            select ``key`` (a sidecar edited or moved from another entry).
    """
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION:
        version = raw.get("format") if isinstance(raw, dict) else None
        raise SidecarError(f"unknown sidecar format version {version!r}")
    for name, valid in _FIELDS.items():
        if name not in raw:
            raise SidecarError(f"field {name!r} is missing")
        if not valid(raw[name]):
            raise SidecarError(f"field {name!r} is malformed: {repr(raw[name])[:80]}")
    if entry_key(raw["scalars"], raw["hashes"], raw["code"]) != key:
        raise SidecarError("its arguments and code do not select this entry's key")
    return raw


def _parse_sidecar(path: str, step: str, key: str, entry_dir: str) -> Entry:
    return _entry(_validate(json.loads(read_regular(path)), key), step, key, Path(entry_dir))


def _entry(raw: dict[str, Any], step: str, key: str, entry_dir: Path) -> Entry:
    return Entry(
        step=step,
        key=key,
        path=entry_dir,
        scalars={k: decode_scalar(v) for k, v in raw["scalars"].items()},
        hashes=dict(raw["hashes"]),
        code=raw["code"],
        files=dict(raw["files"]),
        created=raw["created"],
        duration=float(raw["duration"]),
        library=raw["library"],
    )


_ENCODER = json.JSONEncoder(sort_keys=True, allow_nan=False)


def _dump(sidecar: Mapping[str, Any]) -> bytes:
    """One line of JSON (json's C encoder; ``python -m json.tool`` shows it indented)."""
    return (_ENCODER.encode(sidecar) + "\n").encode()


def _write_outputs(write: Callable[[Path], None], directory: str) -> None:
    """Call ``write(directory)``; a short write reported without an error number (numpy's
    ``tofile`` does) on a file system with almost no space left is the ENOSPC it is."""
    try:
        write(Path(directory))
    except OSError as error:
        if error.errno is None:
            free = os.statvfs(directory)
            if free.f_bavail * free.f_frsize < _NEARLY_FULL:
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({error})") from error
        raise


_NEARLY_FULL = 1 << 20
"""Bytes free below which a file system counts as full."""


def _write_new(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


class Store:
    """The entries of one cache directory.

    Args:
        root: The cache directory.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = str(root)

    @property
    def memo_dir(self) -> Path:
        """Directory of the persistent file-digest memo."""
        return self.root / ".kwneuro" / "digests"

    def entry_dir(self, step: str, key: str) -> Path:
        """Return the directory of the entry ``key`` of ``step``."""
        return self.root / step / key

    def lock(self, step: str, key: str) -> EntryLock:
        """Return the lock that guards computing the entry ``key`` of ``step``."""
        path = f"{self._root}/{step}/{LOCK_FILE}"
        return EntryLock(path, key, f"{step} entry {key[:12]}")

    def read(self, step: str, key: str, *, warn: bool = True) -> Entry | None:
        """Return the entry's sidecar, or None if it has no entry.

        A sidecar that cannot be read, is not a regular file, or is not one this library
        wrote for this entry (any field malformed) makes a damaged entry: None, with a
        `UserWarning` when ``warn`` holds.
        """
        entry_dir = f"{self._root}/{step}/{key}"
        sidecar = f"{entry_dir}/{_sidecar_name(step)}"
        try:
            st = os.stat(sidecar)
            memo_key = (sidecar, stat_key(st))
            entry = _SIDECARS.get(memo_key)
            if entry is None:
                entry = _parse_sidecar(sidecar, step, key, entry_dir)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as error:
            if warn:
                warnings.warn(
                    f"cache sidecar {sidecar} is unreadable or malformed ({error}); treated "
                    "as a miss and replaced when the step runs",
                    UserWarning,
                    stacklevel=4,
                )
            return None
        if memo_key not in _SIDECARS and is_settled(st):  # entries change only by rename
            if len(_SIDECARS) >= _SIDECAR_LIMIT:
                _SIDECARS.clear()
            _SIDECARS[memo_key] = entry
        return entry

    def damage(self, entry: Entry, files: list[str]) -> str | None:
        """Return why ``entry`` cannot serve a hit for ``files``, or None when it is intact."""
        if entry.lacks(files):
            return f"the entry holds {sorted(entry.files)}, not {sorted(files)}"
        for name in files:
            recorded = entry.files[name]
            try:
                digest = _content_digest(os.path.join(entry.path, name))
            except OSError:
                return f"output file {name!r} is missing or not a regular file"
            if digest != recorded["digest"]:
                return f"output file {name!r} changed after it was stored (truncated or edited)"
        return None

    def lookup(self, step: str, key: str, files: list[str], *, warn: bool = True) -> Entry | None:
        """Return the intact entry ``key`` of ``step``, or None on a miss.

        Args:
            step: Step name.
            key: Entry key.
            files: Output files the entry must hold.
            warn: Warn about a damaged entry (the first look of a call does; a second look
                of the same call, under the lock, does not repeat it).

        Returns:
            The entry, or None. A damaged entry is a miss with a `UserWarning`.
        """
        entry = self.read(step, key, warn=warn)
        if entry is None or entry.lacks(files):
            return None
        damage = self.damage(entry, files)
        if damage is not None:
            if warn:
                warnings.warn(
                    f"cache entry {entry.path} of step {step!r} is damaged: {damage}; "
                    "treated as a miss and recomputed",
                    UserWarning,
                    stacklevel=3,
                )
            return None
        return entry

    def publish(
        self,
        step: str,
        key: str,
        files: list[str],
        write: Callable[[Path], None],
        record: Mapping[str, Any],
    ) -> Entry:
        """Write an entry aside with ``write``, then rename it into place, sidecar included.

        The caller holds the entry's lock (which created the step's directory).

        Args:
            step: Step name.
            key: Entry key.
            files: Output files ``write`` must create, relative to the directory it is given.
            write: Writes the outputs into the directory it is given.
            record: Sidecar fields: scalars (JSON-encoded), hashes, code, duration.

        Returns:
            The published entry.

        Raises:
            FileNotFoundError: ``write`` did not create every file of ``files``.
            OSError: The entry could not be written (nothing is left behind).
        """
        step_dir = f"{self._root}/{step}"
        tmp = f"{step_dir}/.tmp-{key}"  # one writer per key: it holds the lock
        try:
            os.mkdir(tmp)
        except FileExistsError:  # left by a writer that crashed
            shutil.rmtree(tmp, ignore_errors=True)
            os.mkdir(tmp)
        target = f"{step_dir}/{key}"
        try:
            _write_outputs(write, tmp)
            sidecar = {
                "format": FORMAT_VERSION,
                "step": step,
                **record,
                "files": {name: _describe(f"{tmp}/{name}", step) for name in files},
                "created": datetime.now(UTC).isoformat(timespec="microseconds"),
                "library": _library(),
            }
            _write_new(f"{tmp}/{_sidecar_name(step)}", _dump(sidecar))
            self._swap_in(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return _entry(sidecar, step, key, Path(target))

    @staticmethod
    def _swap_in(tmp: str, target: str) -> None:
        """Put ``tmp`` at ``target``, replacing any old entry in one atomic step.

        Where the filesystem cannot exchange atomically, the old entry is first renamed to
        ``.swap-<key>``; a crash right then leaves it there for `recover` to restore.
        """
        try:
            os.rename(tmp, target)  # fails on an old entry: a directory that is not empty
            return
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if exchange(Path(tmp), Path(target)):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        aside = os.path.join(os.path.dirname(target), f".swap-{os.path.basename(target)}")
        os.rename(target, aside)
        os.rename(tmp, target)
        shutil.rmtree(aside, ignore_errors=True)

    def recover(self, step: str, key: str) -> None:
        """Restore an entry a crash left aside mid-replacement (the caller holds the lock).

        Only the fallback of `_swap_in` (no atomic exchange, e.g. on NFS) leaves one.
        """
        aside = f"{self._root}/{step}/.swap-{key}"
        if os.path.isdir(aside):
            target = f"{self._root}/{step}/{key}"
            if os.path.exists(target):
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.rename(aside, target)

    def steps(self) -> list[str]:
        """Return the names of the steps that have a directory in this cache."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _visible(p))

    def entries(self, step: str, *, warn: bool = True) -> Iterator[Entry]:
        """Yield the readable entries of ``step``, oldest first.

        Damaged entries (unreadable or malformed sidecars) are skipped, with a `UserWarning`
        each when ``warn`` holds.
        """
        step_dir = self.root / step
        if not step_dir.is_dir():
            return
        found = []
        for path in step_dir.iterdir():
            if path.is_dir() and _visible(path):
                entry = self.read(step, path.name, warn=warn)
                if entry is not None:
                    found.append(entry)
        yield from sorted(found, key=lambda e: e.created)

    def remove(self, entry: Entry) -> None:
        """Remove one entry (atomically hidden first, then deleted)."""
        if entry.path.is_dir():
            trash = Path(tempfile.mkdtemp(prefix=f".trash-{entry.key}-", dir=entry.path.parent))
            os.rename(entry.path, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)

    def leftovers(self, *, older_than: float = 3600.0) -> list[Path]:
        """Return what crashed writers left, older than ``older_than`` seconds.

        That is the temporary, trash and swap directories of every step (a crash between
        writing an entry aside and publishing it leaves one) and the temporary files of the
        digest memo (a crash or a full disk while one is written).
        """
        candidates = [
            path
            for step in self.steps()
            for path in (self.root / step).iterdir()
            if path.name.startswith(LEFTOVER_PREFIXES)
        ]
        candidates += self.memo_dir.glob(f"*/{MEMO_TMP_PREFIX}*")
        cutoff = time.time() - older_than
        return [path for path in candidates if _modified_before(path, cutoff)]


def discard(path: Path) -> None:
    """Remove a leftover of `Store.leftovers`, a directory or a file; ignore errors."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _modified_before(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_mtime < cutoff
    except OSError:  # removed meanwhile
        return False


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _describe(path: str, step: str) -> dict[str, Any]:
    try:
        size, digest = digest_written(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"step {step!r} did not write its declared output file {os.path.basename(path)!r}"
        ) from None
    return {"size": size, "digest": f"{_DIGEST_PREFIX}{digest}"}


_DIGEST_PREFIX = "xxh3_128:"


def _content_digest(path: str | Path) -> str:
    return f"{_DIGEST_PREFIX}{file_digest(path)}"


def _library() -> str:
    return f"kwneuro-pydra {__version__}"

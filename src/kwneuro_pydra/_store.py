"""Cache entries on disk: layout, atomic publish, locks, listing and pruning.

Layout of one cache directory::

    <cache_dir>/<step>/<key>/<output files>        one complete entry
    <cache_dir>/<step>/<key>/<step>.params.json    its sidecar, written last
    <cache_dir>/<step>/.lock                        one byte per key, locked while computed
    <cache_dir>/<step>/.tmp-<key>-<random>/         an entry being written
    <cache_dir>/.kwneuro/digests/                   the persistent file-digest memo

An entry is written into a hidden temporary directory and renamed into place, so it appears
whole or not at all. The sidecar records the size and content digest of every output file;
a lookup checks them (through the stat-keyed memo, so a warm check costs one stat per file),
so a file truncated or edited after publishing is a miss, never a wrong hit. The sidecar's
format is `kwneuro_pydra._sidecar`'s.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import secrets
import shutil
import stat
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kwneuro_pydra._exchange import exchange
from kwneuro_pydra._filedigest import (
    MEMO_TMP_PREFIX,
    StatKey,
    digest_written,
    file_digest,
    is_settled,
    stat_key,
)
from kwneuro_pydra._files import read_regular, write_new
from kwneuro_pydra._lock import LOCK_FILE, EntryLock
from kwneuro_pydra._sidecar import (
    DIGEST_PREFIX,
    FORMAT_VERSION,
    Entry,
    decode_scalar,
    dump,
    encode_scalar,
    entry_from,
    entry_key,
    library,
    parse,
    sidecar_name,
)

__all__ = [
    "LEFTOVER_PREFIXES",
    "Entry",
    "Store",
    "decode_scalar",
    "discard",
    "encode_scalar",
    "entry_key",
    "sharing_problem",
    "umask",
]
"""`Entry`, `decode_scalar`, `encode_scalar` and `entry_key` are the sidecar format's
(`kwneuro_pydra._sidecar`), named here too for the cache that uses both."""

_SIDECAR_LIMIT = 50_000
_SIDECARS: dict[tuple[str, StatKey], Entry] = {}
"""Parsed sidecars by path and stat key: a warm hit reads no JSON."""

LEFTOVER_PREFIXES = (".tmp-", ".trash-", ".swap-")
"""Hidden names a crashed or interrupted writer can leave in a step directory."""


def _parse_sidecar(path: str, step: str, key: str, entry_dir: str) -> Entry:
    return parse(read_regular(path), step, key, Path(entry_dir))


def _write_outputs(write: Callable[[Path], None], directory: str) -> None:
    """Call ``write(directory)``; a short write reported without an error number (numpy's
    ``tofile`` does) on a file system with almost no space left is the ENOSPC it is.
    """
    try:
        write(Path(directory))
    except OSError as error:
        if error.errno is None:
            free = os.statvfs(directory)
            if free.f_bavail * free.f_frsize < _NEARLY_FULL:
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({error})") from error
        raise


def _open_to_the_group(directory: str) -> None:
    """Give a directory made with mode 0700 the mode the umask gives (a lab's ``umask 002``
    shares it with the group), keeping the setgid bit it inherited.
    """
    special = stat.S_IMODE(os.stat(directory).st_mode) & ~0o777
    os.chmod(directory, special | (0o777 & ~umask()))


_NEARLY_FULL = 1 << 20
"""Bytes free below which a file system counts as full."""


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
        sidecar = f"{entry_dir}/{sidecar_name(step)}"
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
        for left in glob.glob(f"{glob.escape(step_dir)}/.tmp-{key}-*"):  # a crashed writer's
            shutil.rmtree(left, ignore_errors=True)  # (one writer per key: it holds the lock)
        tmp = f"{step_dir}/.tmp-{key}-{secrets.token_hex(8)}"  # unguessable: never a link
        os.mkdir(tmp, 0o700)  # nobody else can put a link where ``write`` writes
        target = f"{step_dir}/{key}"
        try:
            _write_outputs(write, tmp)
            sidecar = {
                "format": FORMAT_VERSION,
                "step": step,
                **record,
                "files": {name: _describe(f"{tmp}/{name}", step) for name in files},
                "created": datetime.now(UTC).isoformat(timespec="microseconds"),
                "library": library(),
            }
            write_new(f"{tmp}/{sidecar_name(step)}", dump(sidecar), 0o644)
            _open_to_the_group(tmp)  # complete: nothing more is written into it
            self._swap_in(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return entry_from(sidecar, step, key, Path(target))

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
        """Return the names of the steps that have a directory in this cache (a link is not
        one: listing, pruning and clearing never reach through it).
        """
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.is_symlink() and _visible(p)
        )

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


def umask() -> int:
    """This process's umask (read from ``/proc``, where it is not changed to be read)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text(encoding="ascii").splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sharing_problem(root: Path) -> str | None:
    """Say why entries this process writes under ``root`` would shut its group out, if so.

    A folder that its group can write (``root`` or the folder above it: a lab's shared,
    setgid cache root) is meant to be shared; a umask that takes the group's write bit
    away makes entries, lock files and folders the other members cannot replace or lock.
    A sticky folder (``/tmp``) is everyone's scratch space, not a group's cache.

    Returns:
        The message, or None when the umask keeps the group's write bit or nothing is shared.
    """
    mask = umask()
    if not mask & stat.S_IWGRP:
        return None
    for folder in (root, root.parent):
        with contextlib.suppress(OSError):
            mode = os.stat(folder).st_mode
            if mode & stat.S_IWGRP and not mode & stat.S_ISVTX:
                return (
                    f"{folder} is group-writable (a shared cache) but this process's umask is "
                    f"{mask:03o}: what it writes there, the group cannot replace or lock; "
                    f"run with umask {mask & ~stat.S_IWGRP:03o} (e.g. 'umask 002')"
                )
    return None


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
    return {"size": size, "digest": f"{DIGEST_PREFIX}{digest}"}


def _content_digest(path: str | Path) -> str:
    return f"{DIGEST_PREFIX}{file_digest(path)}"

"""Where Pydra's job cache lives: a directory only the running user can write, one per run.

Pydra's job cache holds pickles (``_result.pklz``, ``_job.pklz``) that Pydra and
`run_subjects` load, and loading a pickle can run code. The per-subject caches under a cache
root may be shared by a lab; the job cache therefore lives apart, by default under
``$XDG_CACHE_HOME/kwneuro-pydra/jobs/<digest of the cache root>`` (``~/.cache`` when
``XDG_CACHE_HOME`` is unset or relative), and is refused when others can write it.

Each run submits into a fresh directory of its own, ``run-<time>-<random>/`` inside the job
cache, locked while the run lasts. Pydra's results therefore never outlive the run that
made them: the subjects' caches are the only cache across runs, so removing a cache root, a
subject's folder or entries (``Cache.clear``, ``prune``) can never leave Pydra serving
results whose files are gone. A run removes the directories of earlier runs that no run
holds any more (a finished or killed one's: its lock went with its process), so one run's
directory is kept for inspection until the next; directories of cache roots not run for
`MAX_AGE` seconds are removed too, as are Pydra's hash memo files of that age.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import stat
import time
from collections.abc import Collection, Iterator
from pathlib import Path

__all__ = ["MAX_AGE", "RUN_PREFIX", "job_cache", "prune", "run_directory"]

MAX_AGE = 7 * 24 * 3600.0
"""Seconds after which a run directory no run holds, and a hash memo file, are removed even
from the job caches of other cache roots."""
RUN_PREFIX = "run-"
"""Prefix of the name of a run's directory in the job cache."""
_LOCK = ".lock"
_ORPHAN_AGE = 3600.0
"""A run directory without a lock file (its run died while making it) older than this goes."""


def _base() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "")
    cache_home = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return cache_home / "kwneuro-pydra" / "jobs"


def _default(root: Path) -> Path:
    return _base() / hashlib.sha256(bytes(root)).hexdigest()[:32]


def job_cache(root: Path, given: str | os.PathLike[str] | None) -> Path:
    """Return (creating it, mode 0700) the job cache directory for the cache root ``root``.

    Args:
        root: The absolute cache root of the run.
        given: The ``job_cache`` argument of `run_subjects`, or None for the default.

    Returns:
        The absolute directory: it holds the runs' directories (see `run_directory`) and
        Pydra's hash memo, ``hash-memo/``.

    Raises:
        PermissionError: The directory is not owned by the running user, or group or others
            can write it.
    """
    path = _default(root) if given is None else Path(given).absolute()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(
            f"Pydra's job cache {path} holds pickles that are loaded (code can run from "
            "them), so it must be owned by you and writable by nobody else: "
            f"'chmod go-w {path}', or pass job_cache= a private directory"
        )
    return path


@contextlib.contextmanager
def run_directory(jobs: Path, keep: Collection[Path] = ()) -> Iterator[Path]:
    """Make a fresh directory for one run's Pydra job cache, held (locked) while it lasts.

    Before making it, removes the run directories in ``jobs`` that no run holds (but those
    of ``keep`` until they are older than `MAX_AGE`), and, in every job cache of the default
    location, those older than `MAX_AGE` with Pydra's hash memo files of that age.

    Args:
        jobs: The job cache (`job_cache`).
        keep: Run directories whose jobs may still be running or hold results an earlier
            run's scheduler jobs left (`kwneuro_pydra.pydra._slurm.recorded_runs`).

    Yields:
        The new directory (mode 0700), Pydra's ``cache_root`` for this run.
    """
    prune(jobs, None, keep)
    if jobs.parent == _base():
        with contextlib.suppress(OSError):
            for other in jobs.parent.iterdir():
                if other != jobs and other.is_dir() and not other.is_symlink():
                    prune(other, MAX_AGE)
    while True:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = jobs / f"{RUN_PREFIX}{stamp}-{secrets.token_hex(4)}"
        path.mkdir(mode=0o700)
        fd = os.open(path / _LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if path.is_dir():  # not removed by a prune between mkdir and flock
            break
        os.close(fd)
    try:
        yield path
    finally:
        os.close(fd)


def prune(jobs: Path, age: float | None, keep: Collection[Path] = ()) -> None:
    """Remove the run directories of a job cache that no run holds, and old hash memo files.

    Args:
        jobs: A job cache (`job_cache`).
        age: Remove only the run directories unchanged for this many seconds; None: all.
        keep: Run directories removed only once unchanged for `MAX_AGE`.
    """
    now = time.time()
    cutoff = None if age is None else now - age
    kept = now - MAX_AGE if cutoff is None else min(cutoff, now - MAX_AGE)
    with contextlib.suppress(OSError):
        for path in jobs.iterdir():
            if path.name.startswith(RUN_PREFIX) and path.is_dir() and not path.is_symlink():
                _remove_unheld(path, kept if path in keep else cutoff)
    with contextlib.suppress(OSError):
        for path in (jobs / "hash-memo").iterdir():
            with contextlib.suppress(OSError):
                if path.lstat().st_mtime < now - MAX_AGE:
                    path.unlink()


def _remove_unheld(path: Path, cutoff: float | None) -> None:
    """Remove a run directory unless its run holds it or it changed after ``cutoff``."""
    try:
        if cutoff is not None and path.stat().st_mtime >= cutoff:
            return
        fd = os.open(path / _LOCK, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:  # being made, or its run died before locking it
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < time.time() - _ORPHAN_AGE:
                shutil.rmtree(path, ignore_errors=True)
        return
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: its run goes on
        os.close(fd)
        return
    try:
        shutil.rmtree(path, ignore_errors=True)
    finally:
        os.close(fd)

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
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

import attrs

__all__ = [
    "LOG_AGE",
    "MAX_AGE",
    "RUN_PREFIX",
    "Pruned",
    "default_job_cache",
    "job_cache",
    "prune",
    "prune_scheduler",
    "run_directory",
]

MAX_AGE = 7 * 24 * 3600.0
"""Seconds after which a run directory no run holds, and a hash memo file, are removed even
from the job caches of other cache roots."""
RUN_PREFIX = "run-"
"""Prefix of the name of a run's directory in the job cache."""
LOG_AGE = 30 * 24 * 3600.0
"""Seconds after which `prune_scheduler` removes a subject's log file left unchanged."""
_LOCK = ".lock"
_ORPHAN_AGE = 3600.0
"""A run directory without a lock file (its run died while making it) older than this goes."""


def _base() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "")
    cache_home = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return cache_home / "kwneuro-pydra" / "jobs"


def default_job_cache(root: Path) -> Path:
    """The job cache `run_subjects` uses for the cache root ``root`` unless given one.

    Args:
        root: The absolute cache root.

    Returns:
        ``$XDG_CACHE_HOME/kwneuro-pydra/jobs/<digest of root>`` (may not exist).
    """
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
    path = default_job_cache(root) if given is None else Path(given).absolute()
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


def prune(
    jobs: Path,
    age: float | None,
    keep: Collection[Path] = (),
    *,
    spare: Collection[Path] = (),
    dry_run: bool = False,
) -> list[Path]:
    """Remove the run directories of a job cache that no run holds, and old hash memo files.

    Args:
        jobs: A job cache (`job_cache`).
        age: Remove only the run directories unchanged for this many seconds; None: all.
        keep: Run directories removed only once unchanged for `MAX_AGE`.
        spare: Run directories never removed.
        dry_run: Remove nothing; return what would go.

    Returns:
        The run directories and hash memo files removed (or that would be).
    """
    now = time.time()
    cutoff = None if age is None else now - age
    kept = now - MAX_AGE if cutoff is None else min(cutoff, now - MAX_AGE)
    removed = []
    with contextlib.suppress(OSError):
        for path in sorted(jobs.iterdir()):
            run = path.name.startswith(RUN_PREFIX) and path.is_dir() and not path.is_symlink()
            run = run and path not in spare
            if run and _remove_unheld(path, kept if path in keep else cutoff, dry_run):
                removed.append(path)
    with contextlib.suppress(OSError):
        for path in sorted((jobs / "hash-memo").iterdir()):
            with contextlib.suppress(OSError):
                if path.lstat().st_mtime < now - MAX_AGE:
                    if not dry_run:
                        path.unlink()
                    removed.append(path)
    return removed


def _remove_unheld(path: Path, cutoff: float | None, dry_run: bool = False) -> bool:
    """Remove a run directory unless its run holds it or it changed after ``cutoff``;
    True when it went (or, with ``dry_run``, would go).
    """
    try:
        if cutoff is not None and path.stat().st_mtime >= cutoff:
            return False
        fd = os.open(path / _LOCK, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:  # being made, or its run died before locking it
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < time.time() - _ORPHAN_AGE:
                if not dry_run:
                    shutil.rmtree(path, ignore_errors=True)
                return True
        return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: its run goes on
        os.close(fd)
        return False
    try:
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
    finally:
        os.close(fd)
    return True


@attrs.frozen
class Pruned:
    """What `prune_scheduler` removed (or, with ``dry_run``, would remove).

    Attributes:
        paths: Run directories, hash memo files and subjects' log files.
        records: Each job record rewritten -> the number of its lines dropped.
    """

    paths: tuple[Path, ...]
    records: Mapping[Path, int]


def prune_scheduler(
    cache_roots: Collection[Path],
    job_caches: Collection[Path] = (),
    *,
    age: float | None = None,
    dry_run: bool = False,
) -> Pruned:
    """Prune what scheduler runs into ``cache_roots`` leave beside the caches.

    - In each job cache (the default one of each cache root, and ``job_caches``, those that
      exist): the run directories no run holds (see `prune`) but the newest (the last run's,
      kept for its crash records); one that a job record still names only once older than
      `MAX_AGE` (its job may be queued, or its result not yet collected); hash memo files
      older than `MAX_AGE`.
    - In each ``<cache root>/.logs/slurm-jobs.tsv``: the lines a later line replaces (same
      job checksum) and those whose run directory is gone from its job cache (their job
      ended long ago, and a rerun could not collect its result); the record is rewritten
      atomically under an exclusive lock, which a submitter appending waits for.
    - Each ``<cache root>/.logs/<subject>.log`` unchanged for ``age`` (default `LOG_AGE`).

    Args:
        cache_roots: Cache roots (absolute) whose ``.logs`` and default job cache to prune.
        job_caches: Further job caches (e.g. the BIDS app's ``OUTPUT_DIR/logs/pydra-<uid>``).
        age: Remove only run directories and logs unchanged for this many seconds; None: run
            directories whatever their age, logs after `LOG_AGE`.
        dry_run: Remove and rewrite nothing; say what would go.

    Returns:
        The `Pruned`.

    Raises:
        UnsafeFileError: A job record is a symbolic link (refused, not followed).
    """
    from kwneuro_pydra.pydra._scheduler import job_record
    from kwneuro_pydra.pydra._slurm import compact_record, recorded_runs

    records = [job_record(root) for root in cache_roots]
    caches = {default_job_cache(root) for root in cache_roots} | set(job_caches)
    paths: list[Path] = []
    for jobs in sorted(c for c in caches if c.is_dir() and not c.is_symlink()):
        keep = set().union(*(recorded_runs(record, jobs) for record in records))
        runs = sorted(p for p in jobs.glob(f"{RUN_PREFIX}*") if p.is_dir())
        paths += prune(jobs, age, keep, spare=runs[-1:], dry_run=dry_run)
    dropped = {}
    for record in records:
        if record.is_file() or record.is_symlink():
            lines = compact_record(record, gone=set(paths), dry_run=dry_run)
            if lines:
                dropped[record] = lines
    cutoff = time.time() - (LOG_AGE if age is None else age)
    for root in cache_roots:
        with contextlib.suppress(OSError):
            for log in sorted(job_record(root).parent.glob("*.log")):
                info = log.lstat()
                if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    if not dry_run:
                        log.unlink()
                    paths.append(log)
    return Pruned(tuple(paths), dropped)

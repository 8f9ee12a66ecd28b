"""Where Pydra's job cache lives: a directory only the running user can write.

Pydra's job cache holds pickles (``_result.pklz``, ``_job.pklz``) that Pydra and
`run_subjects` load, and loading a pickle can run code. The per-subject caches under a cache
root may be shared by a lab; the job cache therefore lives apart, by default under
``$XDG_CACHE_HOME/kwneuro-pydra/jobs/<digest of the cache root>`` (``~/.cache`` when
``XDG_CACHE_HOME`` is unset or relative), and is refused when others can write it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

__all__ = ["job_cache"]


def _default(root: Path) -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "")
    cache_home = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return cache_home / "kwneuro-pydra" / "jobs" / hashlib.sha256(bytes(root)).hexdigest()[:32]


def job_cache(root: Path, given: str | os.PathLike[str] | None) -> Path:
    """Return (creating it, mode 0700) the job cache directory for the cache root ``root``.

    Args:
        root: The absolute cache root of the run.
        given: The ``job_cache`` argument of `run_subjects`, or None for the default.

    Returns:
        The absolute directory: Pydra's cache root; its hash memo goes in ``hash-memo/``.

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

"""Helpers of the reliability tests: root checks, full file systems, child processes
(as root or as user nobody without capabilities). Importable by child processes too."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all"]
"""A process as user nobody without any capability: it obeys permission bits."""


def require_root(why: str) -> None:
    """Skip unless root; in CI (``CI`` set), where the tests run as root, fail instead."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail(f"needs root in CI: {why}")
        pytest.skip(f"needs root: {why}")


def free_kib(directory: Path) -> int:
    """Free space of the file system of ``directory``, in KiB."""
    free = os.statvfs(directory)
    return free.f_bavail * free.f_frsize // 1024


def fill(directory: Path, leave_kib: int = 0) -> Path:
    """Fill the file system of ``directory`` until ``leave_kib`` KiB are free; return the
    filler file (remove it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while free_kib(directory) > leave_kib:
            try:
                os.write(fd, bytes(4096))
            except OSError:
                break
    finally:
        os.close(fd)
    return filler


def run_python(code: str, *, as_nobody: bool = False, timeout: float = 60.0) -> Any:
    """Run ``code`` in a fresh interpreter (the repository importable); return the JSON it
    prints on its last line of output.

    Raises:
        AssertionError: The child failed, printed no JSON, or ran longer than ``timeout``.
    """
    command = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{code}"]
    if as_nobody:
        require_root("drops to user nobody")
        closed = [d for d in ROOT.parents if not d.stat().st_mode & stat.S_IXOTH]
        if ROOT.stat().st_mode & (stat.S_IROTH | stat.S_IXOTH) != stat.S_IROTH | stat.S_IXOTH:
            closed.insert(0, ROOT)
        assert not closed, (
            f"user nobody cannot read the checkout {ROOT}: {closed[0]} is closed to others "
            "(chmod o+rx the checkout and o+x the folders above it, as .ci/run does)"
        )
        command = [*NOBODY, "--", *command]
    environment = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "NO_ET": "1"}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd="/", env=environment
        )
    except subprocess.TimeoutExpired as expired:
        raise AssertionError(
            f"the child ran longer than {timeout} s: {expired.stderr!r}"
        ) from None
    assert done.returncode == 0, f"child failed ({done.returncode}):\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])

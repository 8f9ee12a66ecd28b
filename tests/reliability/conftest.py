"""Fixtures of the reliability tests: real tmpfs mounts and directories other users reach."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.reliability._system import require_root


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A fresh directory (mode 755) that user nobody can reach, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="kwneuro-reliability-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tmpfs(shared_dir: Path) -> Iterator[Callable[..., Path]]:
    """Mount small tmpfs file systems: ``tmpfs(size_kib, name)`` returns the mount point."""
    mounted: list[Path] = []

    def mount(size_kib: int, name: str = "fs") -> Path:
        require_root("mounts a tmpfs")
        point = shared_dir / name
        point.mkdir()
        options = f"size={size_kib}k,mode=0755"
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"cannot mount a tmpfs in CI: {done.stderr}")
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr}")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], check=False)

"""Starting over through the command line, as users do: ``run`` after ``rm -rf OUTPUT_DIR``,
after ``kwneuro-pydra clear``, after a run that hit a full disk; and cached reruns whose work
folder (``-w``) is on another file system than ``OUTPUT_DIR``.

The full disk and the other file system are small tmpfs mounts made by the test (as root);
without the rights to mount, the tests skip, unless ``CI`` is set: then they fail."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kwneuro_pydra.app import app_status
from tests._volumes import nibabel_image
from tests.bids_data import MASK, good_dataset

FA = "sub-01/dwi/sub-01_model-tensor_param-fa_dwimap.nii.gz"


def kwneuro(*args: str) -> subprocess.CompletedProcess[str]:
    """The command in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "kwneuro_pydra.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount -o size=``) mounted at ``path`` for the context."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        why = f"cannot mount a tmpfs (root needed): {mounted.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def maps(out: Path) -> dict[str, np.ndarray]:
    """Every derivative image under ``out`` by its relative path, as arrays."""
    return {
        str(p.relative_to(out)): np.asanyarray(nibabel_image(p).dataobj)
        for p in sorted(out.glob("sub-*/**/*.nii.gz"))
    }


def succeeded(result: subprocess.CompletedProcess[str], series: int) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{series} series succeeded, 0 failed." in result.stdout
    assert result.stderr == ""


def test_run_starts_over_after_rm_rf_and_after_clear(tmp_path: Path) -> None:
    """With the default worker (cf), as in the issue: every series fails no more."""
    bids_dir, out = good_dataset(tmp_path / "bids", subjects=2), tmp_path / "out"
    args = ["run", str(bids_dir), str(out), "participant", *MASK]
    succeeded(kwneuro(*args), 3)
    first = maps(out)
    shutil.rmtree(out)
    succeeded(kwneuro(*args), 3)
    assert maps(out).keys() == first.keys()
    cleared = kwneuro("clear", str(out), "--yes")
    assert cleared.returncode == 0 and "entries removed" in cleared.stdout, cleared.stderr
    again = kwneuro(*args)
    succeeded(again, 3)
    row = next(line for line in again.stdout.splitlines() if "estimate_dti" in line)
    assert row.split("│")[2:4] == ["        3 ", "      0 "]  # computed, reused
    assert all(np.array_equal(a, maps(out)[name]) for name, a in first.items())
    succeeded(kwneuro(*args), 3)  # and the run after that


@pytest.mark.parametrize("full", ["work folder", "OUTPUT_DIR"])
def test_run_starts_over_after_a_full_disk(tmp_path: Path, full: str) -> None:
    """The cache (``-w``), or OUTPUT_DIR with its cache, on a tmpfs too small for the run:
    the run fails with one error line (after a warning for each step it computed but could
    not store); once there is room, the next run succeeds with the maps of a run that had
    room."""
    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    reference = tmp_path / "reference"
    succeeded(kwneuro("run", str(bids_dir), str(reference), "participant", *MASK), 1)
    with tmpfs(tmp_path / "full", "128k") as disk:
        out = disk if full == "OUTPUT_DIR" else tmp_path / "out"
        work = ["-w", str(disk)] if full == "work folder" else []
        args = ["run", str(bids_dir), str(out), "participant", *work, *MASK]
        failed = kwneuro(*args)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        lines = failed.stderr.splitlines()
        errors = [line for line in lines if line.startswith("kwneuro-pydra run: error")]
        assert len(errors) == 1 and "No space left on device" in errors[0], failed.stderr
        warnings = [line for line in lines if not line.startswith((" ", "kwneuro-pydra"))]
        assert all(w.startswith("WARNING  NotStoredWarning: sub-01: step ") for w in warnings)
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        succeeded(kwneuro(*args), 1)
        expected, got = maps(reference), maps(out)
        assert got.keys() == expected.keys()
        assert all(np.array_equal(got[name], a) for name, a in expected.items())
        assert app_status(bids_dir, out).counts["cached"] == 9


def test_a_cached_rerun_with_w_on_another_file_system_copies_nothing_again(
    tmp_path: Path,
) -> None:
    """The derivatives are copies of the cache's files (no hard link across file systems);
    a cached rerun leaves each one as it is, a recomputed step's maps are copied anew."""
    bids_dir, out = good_dataset(tmp_path / "bids", subjects=1), tmp_path / "out"
    with tmpfs(tmp_path / "work", "64m") as work:
        args = [
            "run",
            str(bids_dir),
            str(out),
            "participant",
            "--worker",
            "debug",
            "-w",
            str(work),
            *MASK,
        ]
        succeeded(kwneuro(*args), 1)
        images = sorted(out.glob("sub-01/dwi/*.nii.gz"))
        assert len(images) == 10 and all(p.stat().st_nlink == 1 for p in images)  # copies
        before = {p: p.stat().st_ino for p in images}
        succeeded(kwneuro(*args), 1)
        assert {p: p.stat().st_ino for p in images} == before  # not copied again
        fa = nibabel_image(out / FA).get_fdata()
        succeeded(kwneuro(*args, "--force", "estimate_dti"), 1)
        renewed = {p for p in images if p.stat().st_ino != before[p]}
        assert out / FA in renewed and not any("mask" in p.name for p in renewed)
        assert np.array_equal(nibabel_image(out / FA).get_fdata(), fa)  # the same fit

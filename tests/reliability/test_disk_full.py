"""A full disk never leaves a lock held, a temporary file behind, or a call failing.

Each test mounts a real tmpfs of a few hundred KiB and fills it. A miss on a full disk is
computed and returned without being stored (one warning per step); the entry's lock is
released on every error path, so the same process and others go on; nothing temporary is
left; once space is freed the next call stores the entry.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kwneuro_pydra import Cache, fingerprint
from kwneuro_pydra._lock import LOCK_FILE, held
from tests.reliability import _steps
from tests.reliability._system import ROOT, fill, run_python

CHILD = """
import json, sys, warnings
from pathlib import Path
from kwneuro_pydra import Cache
from kwneuro_pydra._lock import LOCK_FILE, held
from tests.reliability import _steps
from tests.reliability._system import fill

cache_dir, leave_kib, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
with Cache(cache_dir):
    _steps.rl_ramp(0, 1)  # the step's directory exists before the disk fills up
fill(cache_dir.parent, leave_kib)
report = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with Cache(cache_dir):
        report["first"] = _steps.rl_ramp(1, size).tolist()
        report["second"] = _steps.rl_ramp(1, size).tolist()  # blocks if a lock was left held
report["warnings"] = [str(w.message) for w in caught]
report["calls"] = _steps.CALLS["rl_ramp"]
step_dir = cache_dir / "rl_ramp"
report["left"] = sorted(p.name for p in step_dir.iterdir() if p.name.startswith(".tmp-"))
report["held"] = held(step_dir / LOCK_FILE)
report["entries"] = len(Cache(cache_dir).entries("rl_ramp"))
print(json.dumps(report), flush=True)
sys.stdin.read()  # alive, holding whatever it holds, until the parent has looked
"""


def _report(child: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert child.stdout is not None
    readable, _, _ = select.select([child.stdout], [], [], timeout)
    if not readable:
        child.kill()
        pytest.fail(f"the child did not finish its two calls within {timeout} s (a lock held?)")
    line = child.stdout.readline()
    if not line:
        _, errors = child.communicate(timeout=30)
        pytest.fail(f"the child failed:\n{errors}")
    report: dict[str, object] = json.loads(line)
    return report


@pytest.mark.parametrize(
    ("leave_kib", "size"),
    [(0, 10), (64, 50_000)],
    ids=["full-before-the-lock-record", "full-while-saving-outputs"],
)
def test_a_miss_on_a_full_disk_returns_its_result_and_releases_everything(
    tmpfs: Callable[..., Path], leave_kib: int, size: int
) -> None:
    cache_dir = tmpfs(512) / "cache"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cache_dir), str(leave_kib), str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        report = _report(child, timeout=60)
        expected = list(range(1, 1 + size))
        assert report["first"] == report["second"] == expected
        assert report["calls"] == 3, "both calls on the full disk compute"
        assert report["entries"] == 1, "nothing was stored on the full disk"
        assert report["left"] == [], "no temporary entry left behind"
        assert report["held"] is False, "no lock left held"
        (warning,) = report["warnings"]
        assert "rl_ramp" in warning and "No space left on device" in warning
        # While that process lives, another one takes the same key's lock and stores it.
        (cache_dir.parent / "filler").unlink()
        code = f"""
import json, warnings
from kwneuro_pydra import Cache
from tests.reliability import _steps
warnings.simplefilter("error")
with Cache({str(cache_dir)!r}) as cache:
    values = _steps.rl_ramp(1, {size}).tolist()
print(json.dumps({{"ok": values == list(range(1, 1 + {size})), "calls": _steps.CALLS["rl_ramp"],
                  "entries": len(cache.entries("rl_ramp"))}}))
"""
        other = run_python(code, timeout=60)
        assert other == {"ok": True, "calls": 1, "entries": 2}
    finally:
        if child.poll() is None:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=30)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()


def test_the_digest_memo_leaves_no_temporary_file_on_a_full_disk(
    tmpfs: Callable[..., Path], tmp_path: Path, short_racy_window: float
) -> None:
    cache_dir = tmpfs(256) / "cache"
    cache_dir.mkdir()
    inputs = []
    for index in range(3):  # large inputs: their digests are persisted under the cache
        path = tmp_path / f"input-{index}.bin"
        path.write_bytes(os.urandom((1 << 20) + index))
        inputs.append(path)
    expected = [fingerprint(path) for path in inputs]  # outside a Cache: no memo files
    time.sleep(short_racy_window)  # settled: worth persisting
    from kwneuro_pydra import _filedigest

    _filedigest._memory.clear()
    fill(cache_dir.parent)
    with Cache(cache_dir):
        assert [fingerprint(path) for path in inputs] == expected
    left = [p.name for p in (cache_dir / ".kwneuro").rglob("*") if p.is_file()]
    assert left == [], f"memo files left on the full disk: {left}"


def test_prune_removes_memo_files_left_by_a_crash(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    memo = tmp_path / ".kwneuro" / "digests" / "ab"
    memo.mkdir(parents=True)
    old, recent = memo / ".tmp-123-456-abcd", memo / ".tmp-789-456-abcd"
    old.write_bytes(b"")
    recent.write_bytes(b"")
    os.utime(old, (time.time() - 7200,) * 2)
    assert cache.prune() == [old]
    assert not old.exists() and recent.exists()


def test_a_step_writing_elsewhere_still_fails_loudly_on_a_full_disk(
    tmpfs: Callable[..., Path], tmp_path: Path
) -> None:
    """Only the cache's own writes degrade to "not stored": a step's own error propagates."""
    full = tmpfs(128)
    fill(full)

    from kwneuro_pydra import CacheSpec, cacheable

    @cacheable(_steps.NPY)
    def writes_to_full_disk(n: int) -> np.ndarray:
        (full / "step-output").write_bytes(bytes(8192 * n))
        return np.array([n])

    assert isinstance(_steps.NPY, CacheSpec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Cache(tmp_path), pytest.raises(OSError, match="No space left"):
            writes_to_full_disk(1)
    assert not held(tmp_path / "writes_to_full_disk" / LOCK_FILE)
    assert not list((tmp_path / "writes_to_full_disk").glob(".tmp-*"))

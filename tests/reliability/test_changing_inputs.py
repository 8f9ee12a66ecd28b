"""Input files that change under the cache: while they are hashed, and without a timestamp.

A file truncated while another process hashes it must not kill the hashing interpreter
(a memory map would deliver SIGBUS), and the change is reported. Writes through a shared
memory map to pages already dirty leave every timestamp alone: the stat-keyed memo cannot see
them (a documented limit), ``Cache(verify_inputs="content")`` does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from kwneuro_pydra import Cache
from tests.reliability import _steps
from tests.reliability._system import ROOT, run_python

BIG = 256 << 20
"""Size of the file that is hashed while it is truncated (sparse: costs no disk)."""

HASHER = """
import json, sys, time, warnings
from pathlib import Path
from kwneuro_pydra import fingerprint

path, seconds = Path(sys.argv[1]), float(sys.argv[2])
hashed = changed = 0
deadline = time.monotonic() + seconds
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    while time.monotonic() < deadline and changed < 3:
        fingerprint(path)
        hashed += 1
        changed = sum("changed while it was hashed" in str(w.message) for w in caught)
print(json.dumps({"hashed": hashed, "changed": changed}))
"""

TRUNCATOR = """
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
while True:
    os.truncate(path, size)
    os.truncate(path, size // 64)
"""


def test_a_file_truncated_while_it_is_hashed_is_reported_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "shrinking.nii"
    path.write_bytes(b"")
    os.truncate(path, BIG)
    truncator = subprocess.Popen([sys.executable, "-c", TRUNCATOR, str(path), str(BIG)])
    try:
        hasher = subprocess.run(
            [sys.executable, "-c", HASHER, str(path), "20"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
    finally:
        truncator.kill()
        truncator.wait()
    assert hasher.returncode != -signal.SIGBUS, "the hashing interpreter died of SIGBUS"
    assert hasher.returncode == 0, hasher.stderr
    report = hasher.stdout.strip()
    assert '"changed": 3' in report, f"no change was reported while hashing: {report}"


def test_an_input_changed_while_hashed_keys_no_entry(tmp_path: Path) -> None:
    """A call whose input changed while it was fingerprinted runs, and stores nothing."""
    path = tmp_path / "input.bin"
    path.write_bytes(b"")
    code = f"""
import json, subprocess, sys, time, warnings
from pathlib import Path
from kwneuro_pydra import Cache
from tests.reliability import _steps
path = Path({str(path)!r})
truncator = subprocess.Popen([sys.executable, "-c", {TRUNCATOR!r}, str(path), "{16 << 20}"])
messages = []
try:
    while path.stat().st_size == 0:  # the truncator has started
        time.sleep(0.01)
    for attempt in range(50):
        stored = len(Cache({str(tmp_path / "c")!r}).entries("rl_total"))
        with warnings.catch_warnings(record=True) as caught, Cache({str(tmp_path / "c")!r}):
            warnings.simplefilter("always")
            result = _steps.rl_total(path).tolist()
        messages = [str(w.message) for w in caught]
        if any("changed while it was hashed" in m for m in messages):
            stored = len(Cache({str(tmp_path / "c")!r}).entries("rl_total")) - stored
            break
finally:
    truncator.kill()
    truncator.wait()
print(json.dumps({{"messages": messages, "stored": stored, "result": result}}))
"""
    report = run_python(code, timeout=300)
    assert any("changed while it was hashed" in m for m in report["messages"]), report
    assert report["stored"] == 0, "the call with a file that changed while hashed stored"
    assert report["result"][0] == 0, "it still returned what the step computed"


def _dirty_then_rewritten(path: Path, pause: float) -> np.memmap:
    """A file written through a shared mapping, then settled, its page still dirty."""
    np.zeros(4096, dtype=np.uint8).tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r+")
    mapped[0] = 1  # the page becomes dirty: mtime and ctime change now, and only now
    time.sleep(pause)  # older than the racy window: its digest is memoised
    return mapped


@pytest.mark.parametrize(("verify", "seen"), [("stat", False), ("content", True)])
def test_a_write_through_a_dirty_mapped_page(
    tmp_path: Path, short_racy_window: float, verify: str, seen: bool
) -> None:
    """``"stat"``, the documented limit: the memo serves the old digest and the old entry
    hits. ``"content"``: the write is seen, and the step recomputes."""
    path = tmp_path / "mapped.raw"
    mapped = _dirty_then_rewritten(path, 2 * short_racy_window)
    with Cache(tmp_path / "cache", verify_inputs=verify):  # type: ignore[arg-type]
        assert _steps.rl_total(path).tolist() == [1]
        calls = _steps.CALLS["rl_total"]
        assert _steps.rl_total(path).tolist() == [1]
        assert _steps.CALLS["rl_total"] == calls, "an unchanged input hits"
        before = path.stat()
        mapped[1] = 2
        after = path.stat()
        if (before.st_mtime_ns, before.st_ctime_ns) != (after.st_mtime_ns, after.st_ctime_ns):
            pytest.skip("this kernel updated the timestamps (the page had been written back)")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _steps.rl_total(path).tolist() == [3 if seen else 1]
        assert _steps.CALLS["rl_total"] == calls + seen
    del mapped


def test_verify_inputs_takes_stat_or_content(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="verify_inputs"):
        Cache(tmp_path, verify_inputs="mtime")  # type: ignore[arg-type]

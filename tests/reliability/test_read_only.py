"""Caches this process cannot write serve their hits; misses are computed, not stored.

Two real ways to be unable to write: a file system mounted read-only (EROFS, obeyed even by
root), and permission bits obeyed by a process without ``CAP_DAC_OVERRIDE`` (user nobody
through ``setpriv``): a cache of ``chmod -R a-w``, and another user's cache.
"""

from __future__ import annotations

import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from kwneuro_pydra import Cache
from tests.reliability import _steps
from tests.reliability._system import run_python


def _remount_read_only(point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)


def test_a_read_only_file_system_serves_hits_and_computes_misses(
    tmpfs: Callable[..., Path],
) -> None:
    point = tmpfs(1024)
    lab = point / "lab"
    with Cache(lab):
        _steps.rl_square(2)
    _remount_read_only(point)
    calls = _steps.CALLS["rl_square"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Cache(lab) as cache:
            assert _steps.rl_square(2).tolist() == [4]
            assert _steps.CALLS["rl_square"] == calls, "a hit from the read-only cache"
            assert _steps.rl_square(3).tolist() == [9]
            assert _steps.rl_square(5).tolist() == [25]
            assert _steps.CALLS["rl_square"] == calls + 2
            assert cache.is_cached("rl_square", ["out.npy"], {"n": 2})
            assert [e.scalars for e in cache.entries("rl_square")] == [{"n": 2}]
            assert cache.status([_steps.rl_square]) == {"rl_square": True}
            assert cache.prune() == []
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, f"one warning per step: {messages}"
    assert "rl_square" in messages[0] and "Read-only file system" in messages[0]


def test_read_only_caches_are_consulted_on_a_miss(tmpfs: Callable[..., Path]) -> None:
    point = tmpfs(1024)
    lab, mine = point / "lab", tmpfs(1024, "mine") / "cache"
    with Cache(lab):
        _steps.rl_square(2)
    _remount_read_only(point)
    calls = _steps.CALLS["rl_square"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Cache(mine, read_only=[lab]) as cache:
            assert _steps.rl_square(2).tolist() == [4]
            assert _steps.CALLS["rl_square"] == calls, "served from the lab's cache"
            assert cache.is_cached("rl_square", ["out.npy"], {"n": 2})
            assert _steps.rl_square(3).tolist() == [9]
            assert _steps.rl_square(3).tolist() == [9]
            assert _steps.CALLS["rl_square"] == calls + 1, "the miss is stored in mine"
            assert [e.scalars for e in cache.entries("rl_square")] == [{"n": 3}]
            assert cache.read_only == [lab]


def test_read_only_argument_is_checked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="read_only"):
        Cache(tmp_path / "mine", read_only=[tmp_path / "missing"])
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="read_only"):
        Cache(tmp_path / "mine", read_only=[tmp_path / "file"])
    with pytest.raises(TypeError, match="read_only"):
        Cache(tmp_path / "mine", read_only=tmp_path)  # type: ignore[arg-type]


NOBODY_CHILD = """
import contextlib, io, json, sys, warnings
from pathlib import Path
from kwneuro_pydra import Cache
from kwneuro_pydra.cli import main
from tests.reliability import _steps

lab, mine = Path(sys.argv[1]), Path(sys.argv[2])
report = {}
try:
    (lab / "probe").write_text("")
    report["probe"] = "written"
except PermissionError:
    report["probe"] = "refused"
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with Cache(lab) as cache:
        report["hit"] = _steps.rl_square(2).tolist()
        report["calls_after_hit"] = _steps.CALLS["rl_square"]
        report["misses"] = [_steps.rl_square(3).tolist(), _steps.rl_square(4).tolist()]
        report["entries"] = [e.scalars for e in cache.entries("rl_square")]
    report["lab_warnings"] = [str(w.message) for w in caught]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with Cache(mine, read_only=[lab]) as cache:
        before = _steps.CALLS["rl_square"]
        report["shared_hit"] = _steps.rl_square(2).tolist()
        report["shared_miss"] = [_steps.rl_square(6).tolist(), _steps.rl_square(6).tolist()]
        report["mine_calls"] = _steps.CALLS["rl_square"] - before
        report["mine_entries"] = [e.scalars for e in cache.entries("rl_square")]
    report["mine_warnings"] = [str(w.message) for w in caught]
listing = io.StringIO()
with contextlib.redirect_stdout(listing):
    report["ls"] = [main(["ls", str(lab)]), listing.getvalue()]
print(json.dumps(report))
"""


@pytest.mark.parametrize("how", ["chmod a-w", "another user's"])
def test_a_cache_this_user_cannot_write_serves_hits(shared_dir: Path, how: str) -> None:
    lab, mine = shared_dir / "lab", shared_dir / "mine"
    with Cache(lab):
        _steps.rl_square(2)
    mine.mkdir()
    subprocess.run(["chown", "nobody:nogroup", str(mine)], check=True)
    if how == "chmod a-w":
        subprocess.run(["chmod", "-R", "a-w", str(lab)], check=True)
    # else: root's, mode 755 directories and 644 files: readable, not writable, by nobody
    report = run_python(
        f"import sys; sys.argv[1:] = [{str(lab)!r}, {str(mine)!r}]\n{NOBODY_CHILD}",
        as_nobody=True,
        timeout=120,
    )
    assert report["probe"] == "refused", "the child must obey permission bits"
    assert report["hit"] == [4] and report["calls_after_hit"] == 0
    assert report["misses"] == [[9], [16]]
    assert report["entries"] == [{"n": 2}], "nothing was stored in the lab's cache"
    (warning,) = report["lab_warnings"]
    assert "rl_square" in warning and "Permission denied" in warning
    assert report["shared_hit"] == [4] and report["shared_miss"] == [[36], [36]]
    assert report["mine_calls"] == 1 and report["mine_entries"] == [{"n": 6}]
    assert report["mine_warnings"] == []
    assert report["ls"][0] == 0 and "rl_square" in report["ls"][1], report["ls"]

"""Damaged entries: whatever is found in an entry, a call recomputes and replaces it, warning
once; listing and pruning skip it; nothing ever blocks or raises.

A sidecar with garbage in any field (Hypothesis generates them), a sidecar or an output file
replaced by a FIFO, a directory or a device, an output file truncated after publishing.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kwneuro_pydra import Cache, fingerprint
from tests.reliability import _steps
from tests.strategies import corrupt_sidecar, sidecar_corruptions

BLOCKED_AFTER = 20
"""Seconds after which a call counts as blocked (it takes milliseconds)."""
MEMORY_HEADROOM = 2 << 30
"""Bytes of address space a test may add (reading /dev/zero to the end would take all)."""


class Blocked(BaseException):
    """Raised in a call that blocked (not an OSError: no ``except OSError`` swallows it)."""


@pytest.fixture(autouse=True)
def never_block() -> Iterator[None]:
    """Fail a test that blocks (an open of a FIFO waits for a writer forever) or reads
    without end (``/dev/zero``): an alarm, and a cap on the address space."""

    def blocked(signum: int, frame: FrameType | None) -> None:
        raise Blocked(f"blocked for {BLOCKED_AFTER} s")

    previous = signal.signal(signal.SIGALRM, blocked)
    limits = resource.getrlimit(resource.RLIMIT_AS)
    in_use = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (in_use + MEMORY_HEADROOM, limits[1]))
    signal.alarm(BLOCKED_AFTER)
    try:
        yield
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, limits)
        signal.signal(signal.SIGALRM, previous)


def _recorded(call: Callable[[], Any]) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in caught]


def _quiet(call: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


def _assert_recomputed_once_and_replaced(cache: Cache, n: int, match: str) -> None:
    """The next call recomputes with exactly one warning; the one after that is a quiet hit."""
    before = _steps.CALLS["rl_square"]
    result, messages = _recorded(lambda: _steps.rl_square(n))
    assert result.tolist() == [n * n]
    assert _steps.CALLS["rl_square"] == before + 1
    assert len(messages) == 1, messages
    assert match in messages[0], messages
    assert _quiet(lambda: _steps.rl_square(n)).tolist() == [n * n]
    assert _steps.CALLS["rl_square"] == before + 1, "the replaced entry serves the next call"
    assert len(_quiet(lambda: cache.entries(_steps.rl_square))) == 1


@settings(max_examples=60, deadline=None)
@given(corruption=sidecar_corruptions)
def test_any_malformed_sidecar_is_a_damaged_entry(
    tmp_path_factory: pytest.TempPathFactory, corruption: tuple[str, str, Any]
) -> None:
    with Cache(tmp_path_factory.mktemp("malformed")) as cache:
        _steps.rl_square(3)
        (entry,) = cache.entries(_steps.rl_square)
        sidecar = entry.path / "rl_square.params.json"
        broken = corrupt_sidecar(json.loads(sidecar.read_text()), corruption)
        sidecar.write_text(json.dumps(broken))

        listed, messages = _recorded(lambda: cache.entries(_steps.rl_square))
        assert listed == [] and len(messages) == 1, "listing skips it and says so"
        removed, _ = _recorded(lambda: cache.prune(keep=0, older_than=0))
        assert removed == [], "pruning skips what it cannot read"
        assert not _recorded(lambda: cache.status([_steps.rl_square]))[0]["rl_square"]
        _assert_recomputed_once_and_replaced(cache, 3, "malformed")


@pytest.mark.parametrize("field", ["size", "created"])
def test_listing_and_pruning_by_age_survive_garbage_in_the_fields_they_read(
    tmp_path: Path, field: str
) -> None:
    with Cache(tmp_path) as cache:
        _steps.rl_square(1), _steps.rl_square(2)
        damaged, intact = cache.entries(_steps.rl_square)
        sidecar = damaged.path / "rl_square.params.json"
        raw = json.loads(sidecar.read_text())
        if field == "size":
            raw["files"]["out.npy"]["size"] = "big"
        else:
            raw["created"] = "yesterday"
        sidecar.write_text(json.dumps(raw))
        with pytest.warns(UserWarning, match=f"field '{'files' if field == 'size' else field}'"):
            assert [e.path for e in cache.entries(_steps.rl_square)] == [intact.path]
        with pytest.warns(UserWarning, match="malformed"):
            assert cache.prune(older_than=0) == [intact.path]


def _make_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _make_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _make_device(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")  # reads never end


REPLACEMENTS = {"fifo": _make_fifo, "directory": _make_directory, "device": _make_device}


@pytest.mark.parametrize("kind", sorted(REPLACEMENTS))
def test_a_sidecar_that_is_not_a_regular_file_never_blocks(tmp_path: Path, kind: str) -> None:
    with Cache(tmp_path) as cache:
        _steps.rl_square(4)
        (entry,) = cache.entries(_steps.rl_square)
        REPLACEMENTS[kind](entry.path / "rl_square.params.json")
        listed, messages = _recorded(lambda: cache.entries(_steps.rl_square))
        assert listed == [] and len(messages) == 1
        assert "not a regular file" in messages[0]
        _assert_recomputed_once_and_replaced(cache, 4, "not a regular file")


@pytest.mark.parametrize("kind", sorted(REPLACEMENTS))
def test_an_output_file_that_is_not_a_regular_file_never_blocks(tmp_path: Path, kind: str) -> None:
    with Cache(tmp_path):
        _steps.rl_square(5)
        (entry,) = Cache(tmp_path).entries(_steps.rl_square)
        REPLACEMENTS[kind](entry.path / "out.npy")
        _assert_recomputed_once_and_replaced(Cache(tmp_path), 5, "not a regular file")


def test_a_memo_file_that_is_not_a_regular_file_never_blocks(
    tmp_path: Path, short_racy_window: float
) -> None:
    from kwneuro_pydra import _filedigest

    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(_filedigest.PERSIST_MIN_SIZE))
    os.utime(path, ns=(0, 0))
    expected = fingerprint(path)
    memo = Cache(tmp_path / "cache")._store.memo_dir
    memo_file = _filedigest._memo_file(memo, _filedigest.stat_key(path.stat()))
    memo_file.parent.mkdir(parents=True)
    os.mkfifo(memo_file)
    _filedigest._memory.clear()
    with Cache(tmp_path / "cache"):
        assert _quiet(lambda: fingerprint(path)) == expected


@pytest.mark.parametrize("how", ["truncated", "edited", "removed"])
def test_a_damaged_output_warns_once_per_call(tmp_path: Path, how: str) -> None:
    with Cache(tmp_path) as cache:
        _steps.rl_square(6)
        (entry,) = cache.entries(_steps.rl_square)
        output = entry.path / "out.npy"
        if how == "truncated":
            os.truncate(output, 10)
        elif how == "edited":
            data = bytearray(output.read_bytes())
            data[-1] ^= 0xFF
            output.write_bytes(bytes(data))
        else:
            output.unlink()
        _assert_recomputed_once_and_replaced(cache, 6, "damaged")


def test_a_damaged_entry_found_by_a_step_of_unknown_code_warns_once(tmp_path: Path) -> None:
    """``check_code=False`` looks entries up by listing them: still one warning."""
    with Cache(tmp_path, check_code=False) as cache:
        _steps.rl_square(7)
        (entry,) = cache.entries(_steps.rl_square)
        (entry.path / "rl_square.params.json").write_text("{")
        _assert_recomputed_once_and_replaced(cache, 7, "malformed")


def test_a_sidecar_moved_to_another_entry_is_malformed(tmp_path: Path) -> None:
    """A sidecar whose arguments select another key never serves a hit for this one."""
    with Cache(tmp_path) as cache:
        _steps.rl_square(8), _steps.rl_square(9)
        eight, nine = sorted(cache.entries(_steps.rl_square), key=lambda e: e.scalars["n"])  # type: ignore[arg-type, return-value]
        shutil.copy(nine.path / "out.npy", eight.path / "out.npy")
        shutil.copy(nine.path / "rl_square.params.json", eight.path / "rl_square.params.json")
        with pytest.warns(UserWarning, match="do not select this entry's key"):
            assert _steps.rl_square(8).tolist() == [64]


@given(st.data())
@settings(max_examples=1, deadline=None)
def test_strategies_only_break_sidecars(data: st.DataObject) -> None:
    """Every corruption the strategy draws is rejected by the sidecar check (no false
    "damaged" report hides a strategy that produces valid sidecars)."""
    from kwneuro_pydra._sidecar import SidecarError, entry_key, validate

    raw = {
        "format": 1,
        "scalars": {"n": 3},
        "hashes": {},
        "code": "c" * 64,
        "files": {"out.npy": {"size": 136, "digest": "xxh3_128:" + "0" * 32}},
        "created": "2026-11-29T12:00:00+00:00",
        "duration": 0.5,
        "library": "kwneuro-pydra",
    }
    key = entry_key(raw["scalars"], raw["hashes"], raw["code"])  # type: ignore[arg-type]
    assert validate(raw, key) is raw
    for _ in range(200):
        broken = json.loads(json.dumps(corrupt_sidecar(raw, data.draw(sidecar_corruptions))))
        with pytest.raises(SidecarError):
            validate(broken, key)

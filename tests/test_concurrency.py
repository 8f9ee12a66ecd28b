"""Several processes share one cache directory: one computes an entry, the others reuse it.

Real interpreters (multiprocessing, 'spawn' start method) call `tests._workers.race_step`,
whose body appends one line per execution to a counter file (O_APPEND) and sleeps, so
overlapping calls really overlap. A lock left by a SIGKILLed holder is recovered by a waiter.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kwneuro_pydra import Cache
from kwneuro_pydra._lock import LOCK_FILE, held, read_owners
from tests import _workers as w

CTX = multiprocessing.get_context("spawn")
ROOT = Path(__file__).resolve().parent.parent
RACE_FILES = ["value.json", "blob.bin"]


def executions(counter: Path) -> list[tuple[int, int, float, float | None]]:
    """(pid, x, start, end or None) of every execution the counter file records."""
    if not counter.exists():
        return []
    runs: dict[int, list[Any]] = {}
    for line in counter.read_text().splitlines():
        what, pid, x, stamp = line.split()
        if what == "start":
            runs[int(pid)] = [int(pid), int(x), float(stamp), None]
        else:
            runs[int(pid)][3] = float(stamp)
    return [tuple(run) for run in runs.values()]


def expected_result(x: int, nonce: str) -> w.Bundle:
    return w.Bundle("race_step", x, nonce, (w.payload("race_step", x, nonce, 0, 100_000),))


def collect(results: Any, count: int, timeout: float = 60.0) -> dict[int, tuple[int, w.Bundle]]:
    """Gather ``count`` worker reports: pid -> (x, result); fail on any worker error."""
    found: dict[int, tuple[int, w.Bundle]] = {}
    deadline = time.monotonic() + timeout
    while len(found) < count:
        pid, x, status, value = results.get(timeout=max(deadline - time.monotonic(), 0.01))
        assert status == "ok", f"worker {pid} (x={x}) failed:\n{value}"
        found[pid] = (x, value)
    return found


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    """Processes a test starts; any still alive at the end is killed (by its own pid)."""
    started: list[Any] = []
    yield started
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(10)


def start_worker(
    processes: list[Any],
    cache_dir: Path,
    x: int,
    counter: Path,
    sleep: float,
    barrier: Any,
    ready: Any,
    results: Any,
) -> Any:
    process = CTX.Process(
        target=w.race_worker,
        args=(str(cache_dir), x, str(counter), sleep, barrier, ready, results),
    )
    process.start()
    processes.append(process)
    return process


def assert_stored(cache_dir: Path, x: int, nonce: str) -> None:
    """The parent sees the entry through the public API, and a call hits it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = Cache(cache_dir)
        assert cache.is_cached("race_step", RACE_FILES, {"x": x})
        assert cache.status([w.race_step]) == {"race_step": True}
        before = w.CALLS["race_step"]
        with cache:
            assert w.race_step(x) == expected_result(x, nonce)
        assert w.CALLS["race_step"] == before


def test_same_call_in_six_processes_at_once_runs_the_step_once(
    tmp_path: Path, processes: list[Any]
) -> None:
    cache_dir, counter, n = tmp_path / "cache", tmp_path / "counter", 6
    barrier, results = CTX.Barrier(n), CTX.Queue()
    for _ in range(n):
        start_worker(processes, cache_dir, 7, counter, 0.5, barrier, None, results)
    found = collect(results, n)
    for process in processes:
        process.join(30)
        assert process.exitcode == 0

    runs = executions(counter)
    assert len(runs) == 1, f"the step ran {len(runs)} times: {runs}"
    ((computer, x, _, end),) = runs
    assert x == 7 and end is not None
    right = expected_result(7, f"pid-{computer}")
    assert {pid: result for pid, (_, result) in found.items()} == dict.fromkeys(found, right)
    assert_stored(cache_dir, 7, f"pid-{computer}")
    assert not held(cache_dir / "race_step" / LOCK_FILE), "a lock is still held"
    assert not read_owners(cache_dir / "race_step" / LOCK_FILE), "an owner record was left"


def test_different_calls_in_parallel_each_run_once_without_waiting_for_each_other(
    tmp_path: Path, processes: list[Any]
) -> None:
    cache_dir, counter = tmp_path / "cache", tmp_path / "counter"
    xs = [0, 0, 1, 1, 2, 2, 3, 3]
    barrier, results = CTX.Barrier(len(xs)), CTX.Queue()
    for x in xs:
        start_worker(processes, cache_dir, x, counter, 0.5, barrier, None, results)
    found = collect(results, len(xs))
    for process in processes:
        process.join(30)
        assert process.exitcode == 0

    runs = executions(counter)
    assert sorted(x for _, x, _, _ in runs) == [0, 1, 2, 3], f"executions: {runs}"
    computed_by = {x: pid for pid, x, _, _ in runs}
    for pid, (x, result) in found.items():
        assert result == expected_result(x, f"pid-{computed_by[x]}"), f"worker {pid}, x={x}"
    # Entries of different keys have different locks: the four computations overlapped.
    latest_start = max(start for _, _, start, _ in runs)
    earliest_end = min(end for _, _, _, end in runs if end is not None)
    assert latest_start < earliest_end, f"the computations did not overlap: {runs}"
    for x, pid in computed_by.items():
        assert_stored(cache_dir, x, f"pid-{pid}")


def test_lock_of_a_killed_holder_is_recovered_by_a_waiting_process(
    tmp_path: Path, processes: list[Any]
) -> None:
    cache_dir, counter, x = tmp_path / "cache", tmp_path / "counter", 5
    results = CTX.Queue()
    holder = start_worker(processes, cache_dir, x, counter, 120.0, None, None, results)
    deadline = time.monotonic() + 60
    while not executions(counter):  # the holder is inside the step, holding the lock
        assert holder.is_alive() and time.monotonic() < deadline, "the holder never started"
        time.sleep(0.02)

    lock = cache_dir / "race_step" / LOCK_FILE
    (owner,) = read_owners(lock).values()
    assert owner["pid"] == holder.pid
    assert owner["host"] == socket.gethostname()
    taken = datetime.fromisoformat(str(owner["time"]))
    assert abs((datetime.now(UTC) - taken).total_seconds()) < 120
    assert held(lock, str(owner["key"])) and not held(lock, "0" * 64)

    readies = [CTX.Event(), CTX.Event()]
    waiters = [
        start_worker(processes, cache_dir, x, counter, 0.3, None, ready, results)
        for ready in readies
    ]
    for ready in readies:
        assert ready.wait(60), "a waiter never started"
    time.sleep(0.5)  # the waiters are blocked on the lock
    assert len(executions(counter)) == 1 and all(p.is_alive() for p in waiters)
    assert read_owners(lock) == {owner["key"]: owner}

    killed_at = time.monotonic()
    holder.kill()
    holder.join(10)
    assert holder.exitcode == -signal.SIGKILL
    found = collect(results, 2, timeout=10)
    recovered_in = time.monotonic() - killed_at
    for process in waiters:
        process.join(10)
        assert process.exitcode == 0

    runs = executions(counter)
    assert len(runs) == 2, f"executions: {runs}"
    assert runs[0][0] == holder.pid and runs[0][3] is None  # killed mid-compute
    computer = runs[1][0]
    assert computer in {p.pid for p in waiters} and runs[1][3] is not None
    right = expected_result(x, f"pid-{computer}")
    assert [result for _, result in found.values()] == [right, right]
    assert recovered_in < 5.0, f"the waiters took {recovered_in:.1f} s after the kill"
    assert_stored(cache_dir, x, f"pid-{computer}")


# --------------------------------------------------------------------------- paused processes


class PausedCall:
    """A subprocess running `_workers.paused_main`: it SIGSTOPs itself at a chosen file call."""

    def __init__(self, spec: dict[str, Any]) -> None:
        code = "from tests import _workers; _workers.paused_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(spec)], stdout=subprocess.PIPE, cwd=ROOT
        )

    def message(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert readable, f"no message from the paused process within {timeout} s"
        line = self.proc.stdout.readline()
        assert line, f"the paused process exited (status {self.proc.poll()})"
        message: dict[str, Any] = json.loads(line)
        if message["event"] == "paused":  # said just before it stops itself: wait for that
            deadline = time.monotonic() + timeout
            while self._state() != "T":
                assert time.monotonic() < deadline, "the paused process did not stop"
                time.sleep(0.001)
        return message

    def _state(self) -> str:
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def paused() -> Iterator[Any]:
    started: list[PausedCall] = []

    def start(spec: dict[str, Any]) -> PausedCall:
        started.append(PausedCall(spec))
        return started[-1]

    yield start
    for call in started:
        call.close()


def test_reader_loading_a_hit_while_another_process_forces_a_recompute(
    tmp_path: Path, paused: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv(w.NONCE_ENV, "old")
    with Cache(cache_dir):
        w.crash_spec(1)
    reader = paused(
        {
            "cache_dir": str(cache_dir),
            "nonce": "reader",
            "kind": "crash_spec",
            "x": 1,
            "call": "open",
            "inside": "_spec_load",
            "nth": 2,
        }
    )
    message = reader.message()
    assert message["event"] == "paused", message  # read meta.json, about to read part0.bin
    monkeypatch.setenv(w.NONCE_ENV, "new")
    with Cache(cache_dir, force={"crash_spec"}):
        assert w.crash_spec(1).nonce == "new"
    reader.resume()
    message = reader.message()
    assert message["event"] == "done", message.get("traceback")
    assert message["nonce"] in {"old", "new"}
    assert not message["problems"], f"the reader got a mixed result: {message['problems']}"

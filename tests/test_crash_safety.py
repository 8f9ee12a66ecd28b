"""Crash injection: steps SIGKILLed at any instant never leave a partial, mixed or stale hit.

Children are forked from a warm *zygote* (see `tests._workers`) and killed with a real
SIGKILL, either after a random delay (`test_random_kills_*`) or exactly before the n-th file
system call of the step, for every n (`test_kill_at_every_file_system_call_*`). After each kill
the parent looks the entry up through the public API only: `Cache.is_cached`, `Cache.status`
and a call of the step under ``with Cache(d)`` whose body counts its executions. It must miss
(and then compute the right result) or hit and return one complete computation: the old entry
or the killed child's new one, never a mixture, never an older one, never a partial file.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kwneuro_pydra import Cache
from kwneuro_pydra._lock import LOCK_FILE, held, read_owners
from tests import _workers as w

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("crash_spec", "crash_proto")
CALL_TIMEOUT = 5.0
"""Seconds the first call after a kill may take (a lock left blocking would exceed it)."""


# --------------------------------------------------------------------------- the zygote


class Zygote:
    """Parent side of `_workers.zygote_main`: fork a child per trial, kill it, reap it."""

    def __init__(self) -> None:
        code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests import _workers; "
        code += "_workers.zygote_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin, self._fd = self.proc.stdin, self.proc.stdout.fileno()
        self._buffer = b""
        self.pending: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
        ready = self._next(60.0)
        assert ready["event"] == "ready", ready

    def _next(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no message from the zygote within {timeout} s")
            readable, _, _ = select.select([self._fd], [], [], remaining)
            if readable:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    raise EOFError(f"the zygote exited (status {self.proc.poll()})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def _until(self, event: str, pid: int | None, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = self._next(max(deadline - time.monotonic(), 0.001))
            if message["event"] == event and pid in (None, message["pid"]):
                return message
            self.pending[message["pid"]].append(message)

    def _send(self, command: dict[str, Any]) -> None:
        self._stdin.write(json.dumps(command).encode() + b"\n")
        self._stdin.flush()

    def start(self, job: dict[str, Any]) -> int:
        """Fork a child that runs ``job`` now; return its pid."""
        self._send({"op": "run", "job": job})
        pid: int = self._until("pid", None, 30.0)["pid"]
        return pid

    def wait(self, pid: int, events: tuple[str, ...], timeout: float = 60.0) -> dict[str, Any]:
        """Wait until child ``pid`` reports one of ``events`` (or an error)."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.pending[pid]:
                if message["event"] in (*events, "error"):
                    return message
            message = self._next(max(deadline - time.monotonic(), 0.001))
            self.pending[message["pid"]].append(message)

    def kill(self, pid: int) -> list[dict[str, Any]]:
        """SIGKILL child ``pid`` (alive or a zombie: only the zygote reaps it) and reap it.

        Returns:
            Every message the child sent.
        """
        os.kill(pid, signal.SIGKILL)
        self._send({"op": "reap", "pid": pid})
        reaped = self._until("reaped", pid, 30.0)
        assert os.WIFSIGNALED(reaped["status"]), reaped
        assert os.WTERMSIG(reaped["status"]) == signal.SIGKILL, reaped
        return self.pending.pop(pid, [])

    def close(self) -> None:
        self._stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            assert self.proc.stdout is not None
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    server = Zygote()
    try:
        yield server
    finally:
        server.close()


def _errors(messages: list[dict[str, Any]]) -> list[str]:
    return [m["traceback"] for m in messages if m["event"] == "error"]


# --------------------------------------------------------------------------- checks


@dataclasses.dataclass
class Outcome:
    """What the parent found after one kill."""

    hit: bool
    nonce: str
    problems: list[str]
    lost_old: bool


def held_locks(cache_dir: Path) -> list[str]:
    """Entry locks that some process still holds (none may be left by a killed one)."""
    return [
        f"{lock} (owners {read_owners(lock)})"
        for lock in sorted(cache_dir.glob(f"*/{LOCK_FILE}"))
        if held(lock)
    ]


def step_entries(cache_dir: Path, kind: str) -> dict[int, Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return {int(e.scalars["x"]): e.path for e in Cache(cache_dir).entries(kind)}  # type: ignore[arg-type]


def inspect_after_kill(
    cache_dir: Path,
    kind: str,
    x: int,
    *,
    old: str | None,
    new: str | None,
    parent_nonce: str,
    others: dict[str, bool],
) -> Outcome:
    """Look ``kind(x)`` up through the public API after a kill and judge what it returns.

    Args:
        old: Nonce of the complete entry stored before the killed trial, if any.
        new: Nonce the killed child computed with, if it was computing.
        parent_nonce: Nonce of the parent's own computation, on a miss.
        others: Expected `Cache.status` of the steps the trial did not touch.
    """
    problems = [f"lock still held after the kill: {lock}" for lock in held_locks(cache_dir)]
    scalars, hashes = w.lookup_args(kind, x)
    files = w.step_files(kind)
    os.environ[w.NONCE_ENV] = parent_nonce
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = Cache(cache_dir)
        hit = cache.is_cached(kind, files, scalars, hashes)
        status = cache.status([w.crash_spec, w.crash_proto])
        before = w.CALLS[kind]
        start = time.perf_counter()
        with cache:
            result = w.STEPS[kind](*w.call_args(kind, x))
        elapsed = time.perf_counter() - start
        calls = w.CALLS[kind] - before
        hit_after = cache.is_cached(kind, files, scalars, hashes)
    problems += [f"warning: {c.category.__name__}: {c.message}" for c in caught]
    problems += w.problems_of(result, kind, x)
    nonce = result.nonce if isinstance(result, w.Bundle) else "?"
    if hit:
        allowed = {n for n in (old, new) if n is not None}
        if calls != 0:
            problems.append(f"is_cached said hit, yet the call ran the step {calls} time(s)")
        if nonce not in allowed:
            problems.append(
                f"hit returned the computation {nonce!r}; only {sorted(allowed)} are "
                "complete current entries (stale or foreign content)"
            )
        if not status.get(kind):
            problems.append(f"is_cached hit but status says {status}")
    else:
        if calls != 1:
            problems.append(f"is_cached said miss, yet the call ran the step {calls} time(s)")
        if nonce != parent_nonce:
            problems.append(f"a miss returned {nonce!r}, not the fresh computation")
    for other, expected_status in others.items():
        if status.get(other) != expected_status:
            problems.append(f"status of untouched step {other}: {status.get(other)}")
    if not hit_after:
        problems.append("no hit right after the call stored the entry")
    if elapsed > CALL_TIMEOUT:
        problems.append(f"the call after the kill took {elapsed:.1f} s (a lock left behind?)")
    return Outcome(hit, nonce, problems, lost_old=old is not None and not hit)


def parent_compute(cache_dir: Path, kind: str, x: int, nonce: str) -> None:
    """Store a complete entry of ``kind(x)`` made with ``nonce`` (forcing over any old one)."""
    os.environ[w.NONCE_ENV] = nonce
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Cache(cache_dir, force={kind}):
            result = w.STEPS[kind](*w.call_args(kind, x))
    assert result.nonce == nonce


def hidden(cache_dir: Path, kind: str, prefix: str) -> set[str]:
    step_dir = cache_dir / kind
    return {p.name for p in step_dir.glob(f"{prefix}*")} if step_dir.is_dir() else set()


def job(
    cache_dir: Path, kind: str, x: int, nonce: str, force: Any, **extra: Any
) -> dict[str, Any]:
    return {
        "cache_dir": str(cache_dir),
        "kind": kind,
        "x": x,
        "nonce": nonce,
        "force": force,
        **extra,
    }


# --------------------------------------------------------------------------- random kills


def _calibrate(zygote: Zygote, scratch: Path) -> dict[tuple[str, str], float]:
    """Seconds from fork to the end of one uncut trial, per (step, fresh or forced)."""
    durations: dict[tuple[str, str], float] = {}
    for kind in KINDS:
        for mode, force in (("fresh", False), ("forced", True)):
            runs = []
            for attempt in range(3):
                if mode == "fresh":
                    Cache(scratch).clear(kind)
                pid = zygote.start(job(scratch, kind, 0, f"cal-{mode}-{attempt}", force))
                started = time.perf_counter()
                done = zygote.wait(pid, ("done",))
                runs.append(time.perf_counter() - started)
                assert done["event"] == "done", done.get("traceback")
                zygote.kill(pid)
            durations[kind, mode] = sorted(runs)[1]
    return durations


def _sleep_until(deadline: float) -> None:
    remaining = deadline - time.perf_counter()
    if remaining > 0.002:
        time.sleep(remaining - 0.002)
    while time.perf_counter() < deadline:  # spin the last stretch for a precise instant
        pass


@pytest.mark.slow
def test_random_kills_never_leave_a_partial_mixed_or_stale_hit(
    zygote: Zygote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trials = int(os.environ.get("KWNEURO_CRASH_TRIALS", "300"))
    seed = int(os.environ.get("KWNEURO_CRASH_SEED", str(random.randrange(2**32))))
    rng = random.Random(seed)
    monkeypatch.setenv(w.NONCE_ENV, "")
    durations = _calibrate(zygote, tmp_path / "calibration")
    cache_dir = tmp_path / "cache"
    model: dict[tuple[str, int], str | None] = collections.defaultdict(lambda: None)
    tally: collections.Counter[str] = collections.Counter()
    for trial in range(trials):
        kind = rng.choice(KINDS)
        x = rng.randrange(4)
        mode = rng.choices(["fresh", "forced", "hit"], [0.45, 0.45, 0.1])[0]
        if mode == "fresh" and model[kind, x] is not None:
            shutil.rmtree(step_entries(cache_dir, kind)[x])
            model[kind, x] = None
        if mode != "fresh" and model[kind, x] is None:
            parent_compute(cache_dir, kind, x, f"seed-{trial}")
            model[kind, x] = f"seed-{trial}"
        force: Any = False if mode != "forced" else rng.choice([True, [kind]])
        nonce = f"trial-{trial}"
        span = durations[kind, "forced" if mode == "forced" else "fresh"]
        delay = rng.uniform(0.0, 1.3 * span)
        tmp_before, trash_before = (
            hidden(cache_dir, kind, ".tmp-"),
            hidden(cache_dir, kind, ".trash-"),
        )

        pid = zygote.start(job(cache_dir, kind, x, nonce, force))
        _sleep_until(time.perf_counter() + delay)
        messages = zygote.kill(pid)

        context = f"seed={seed} trial={trial} {kind}({x}) {mode} force={force}"
        context += f" delay={delay * 1e3:.2f} ms"
        assert not _errors(messages), f"{context}: the child failed:\n{_errors(messages)[0]}"
        done = any(m["event"] == "done" for m in messages)
        torn = hidden(cache_dir, kind, ".tmp-") - tmp_before
        swapping = hidden(cache_dir, kind, ".trash-") - trash_before
        if done:
            tally["after the step returned"] += 1
        elif swapping:
            tally["mid-swap / cleanup"] += 1
        else:
            tally["mid-save (a temporary entry left)" if torn else "before the save"] += 1
        old = model[kind, x]
        others = {k: any(model[k, i] is not None for i in range(4)) for k in KINDS if k != kind}
        outcome = inspect_after_kill(
            cache_dir,
            kind,
            x,
            old=old,
            new=nonce if mode != "hit" else None,
            parent_nonce=f"parent-{trial}",
            others=others,
        )
        assert not outcome.problems, f"{context}: " + "; ".join(outcome.problems)
        assert not outcome.lost_old, f"{context}: the kill lost the old entry"
        if mode == "forced":
            tally["forced: old entry kept" if outcome.nonce == old else "forced: new entry"] += 1
        model[kind, x] = outcome.nonce
        if mode == "fresh" and outcome.hit:
            tally["fresh entry published before the kill"] += 1
    summary = f"seed={seed}, {trials} trials, durations {durations}: {dict(tally)}"
    print(summary)
    # The delays cover the whole step: kills landed before, during and after the save.
    for where in (
        "after the step returned",
        "mid-save (a temporary entry left)",
        "before the save",
        "forced: old entry kept",
        "forced: new entry",
    ):
        assert tally[where] >= 3, f"too few trials {where!r}: {summary}"


# --------------------------------------------------------------------------- crash-point sweep

_SWEEPS: dict[tuple[str, str], list[tuple[int, str, Outcome]]] = {}


def _sweep(
    zygote: Zygote, cache_dir: Path, kind: str, mode: str
) -> list[tuple[int, str, Outcome]]:
    """Kill a child before its k-th file system call, for every k; judge each outcome."""
    force, x = mode == "forced", 1

    def prepare() -> None:  # the same start state for every k
        for leftover in (cache_dir / kind).glob(".t*-*"):
            shutil.rmtree(leftover)
        if not force:
            Cache(cache_dir).clear(kind)

    parent_compute(cache_dir, kind, x, "initial")
    prepare()
    pid = zygote.start(job(cache_dir, kind, x, "dry", force, kill_at=-1))
    done = zygote.wait(pid, ("done",))
    zygote.kill(pid)
    assert done["event"] == "done", done.get("traceback")
    old: str | None = "dry" if force else None
    results = []
    for k in range(done["sites"] + 1):
        prepare()
        pid = zygote.start(job(cache_dir, kind, x, f"k{k}", force, kill_at=k))
        reached = zygote.wait(pid, ("site", "done"))
        messages = zygote.kill(pid)
        assert not _errors(messages), f"k={k}: the child failed:\n{_errors(messages)[0]}"
        site = f"{reached['call']} in {reached['where']}" if reached["event"] == "site" else "end"
        outcome = inspect_after_kill(
            cache_dir, kind, x, old=old, new=f"k{k}", parent_nonce=f"parent-{k}", others={}
        )
        results.append((k, site, outcome))
        old = outcome.nonce if force else None
    return results


@pytest.fixture(scope="module")
def sweeps(zygote: Zygote, tmp_path_factory: pytest.TempPathFactory) -> Any:
    def get(kind: str, mode: str) -> list[tuple[int, str, Outcome]]:
        if (kind, mode) not in _SWEEPS:
            cache_dir = tmp_path_factory.mktemp(f"sweep-{kind}-{mode}")
            saved = os.environ.get(w.NONCE_ENV)
            try:
                _SWEEPS[kind, mode] = _sweep(zygote, cache_dir, kind, mode)
            finally:
                if saved is None:
                    os.environ.pop(w.NONCE_ENV, None)
                else:
                    os.environ[w.NONCE_ENV] = saved
        return _SWEEPS[kind, mode]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fresh", "forced"])
@pytest.mark.parametrize("kind", KINDS)
def test_kill_at_every_file_system_call_never_serves_a_partial_or_mixed_entry(
    sweeps: Any, kind: str, mode: str
) -> None:
    results = sweeps(kind, mode)
    calls = collections.Counter(site.split(" ")[0] for _, site, _ in results)
    assert calls["write"] >= 8, calls  # the sweep reaches every chunk the save writes
    bad = [f"k={k} before {site}: {'; '.join(o.problems)}" for k, site, o in results if o.problems]
    assert not bad, "\n".join(bad)
    if mode == "fresh":  # killed before the publishing rename: miss; after it: the new entry
        assert not results[0][2].hit and results[-1][2].hit
    else:  # killed before the swap: the old entry; after it: the new one
        kept = [o.hit and o.nonce != f"k{k}" for k, _, o in results]
        assert kept[0] and not kept[-1] and results[-1][2].nonce == f"k{len(results) - 1}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_forced_recompute_killed_anywhere_keeps_the_old_or_the_new_entry(
    sweeps: Any, kind: str
) -> None:
    results = sweeps(kind, "forced")
    lost = [f"k={k} before {site}" for k, site, o in results if o.lost_old]
    assert not lost, "a kill left neither the old nor the new entry (a miss):\n" + "\n".join(lost)

"""Steps and child-process code for the crash-safety and concurrency tests.

Everything here must be importable by name in other processes (``tests._workers``): the
`cacheable` steps, the multiprocessing targets of the race tests and the *zygote* of the crash
tests. The zygote is a warm interpreter (numpy and kwneuro_pydra imported, steps warmed up)
that forks one child per crash trial on request, so a trial costs a fork instead of a Python
start-up. A child never exits by itself: after its step it blocks until it is SIGKILLed, so the
pid the test kills is always that live child (the zygote reaps it only when told to).

Results carry a *nonce* read from the environment (``KWNEURO_TEST_NONCE``): it is not an
argument, so it does not enter the entry key, yet it makes every computation's output unique,
so a test can tell which computation a stored entry came from, and whether its files mix two.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import signal
import sys
import time
import traceback
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kwneuro_pydra import Cache, CacheSpec, _store, cacheable, fingerprint
from kwneuro_pydra.cache import step_of

NONCE_ENV = "KWNEURO_TEST_NONCE"
COUNTER_ENV = "KWNEURO_TEST_COUNTER"
SLEEP_ENV = "KWNEURO_TEST_SLEEP"

CALLS: dict[str, int] = {"crash_spec": 0, "crash_proto": 0, "race_step": 0}
"""Executions of each step's body in this process (the parent's counting function)."""

SPEC_SIZES = (2_000_000, 2_000_000, 600_000)
PROTO_SIZES = (2_500_000, 1_200_000, 4_000)
CHUNK = 512 * 1024


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A result spread over several files; every byte depends on (kind, x, nonce, part)."""

    kind: str
    x: int
    nonce: str
    parts: tuple[bytes, ...]


def payload(kind: str, x: int, nonce: str, index: int, size: int) -> bytes:
    """The exact content of part ``index`` of the result of ``kind(x)`` computed with ``nonce``."""
    header = f"{kind}|x={x}|nonce={nonce}|part={index}|".encode()
    block = hashlib.sha256(header).digest()
    return (header + block * (size // len(block) + 1))[:size]


def expected(kind: str, x: int, nonce: str) -> tuple[bytes, ...]:
    sizes = SPEC_SIZES if kind == "crash_spec" else PROTO_SIZES
    return tuple(payload(kind, x, nonce, i, size) for i, size in enumerate(sizes))


def problems_of(result: object, kind: str, x: int) -> list[str]:
    """Why ``result`` is not a complete, self-consistent result of ``kind(x)`` (empty: it is)."""
    if not isinstance(result, Bundle):
        return [f"result is a {type(result).__qualname__}, not a Bundle"]
    found = []
    if (result.kind, result.x) != (kind, x):
        found.append(f"result is of {result.kind}({result.x}), expected {kind}({x})")
    want = expected(kind, x, result.nonce)
    if len(result.parts) != len(want):
        found.append(f"{len(result.parts)} parts, expected {len(want)}")
    for i, (got, ref) in enumerate(zip(result.parts, want, strict=False)):
        if got != ref:
            head = got[:80].split(b"|part")[0].decode(errors="replace")
            found.append(
                f"part {i} ({len(got)} bytes, starts {head!r}) is not the part of the "
                f"computation with nonce {result.nonce!r} ({len(ref)} bytes)"
            )
    return found


def _compute(kind: str, x: int) -> Bundle:
    CALLS[kind] += 1
    nonce = os.environ.get(NONCE_ENV, "")
    return Bundle(kind, x, nonce, expected(kind, x, nonce))


def _write_chunked(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        for start in range(0, len(data), CHUNK):
            handle.write(data[start : start + CHUNK])


# --------------------------------------------------------------------------- CacheSpec step

SPEC_FILES = ["meta.json", "part0.bin", "part1.bin", "part2.bin"]


def _spec_save(result: Bundle, directory: Path) -> None:
    meta = {"kind": result.kind, "x": result.x, "nonce": result.nonce}
    (directory / "meta.json").write_text(json.dumps(meta))
    for i, part in enumerate(result.parts):
        _write_chunked(directory / f"part{i}.bin", part)


def _spec_load(directory: Path) -> Bundle:
    meta = json.loads((directory / "meta.json").read_text())
    parts = tuple((directory / f"part{i}.bin").read_bytes() for i in range(len(SPEC_SIZES)))
    return Bundle(meta["kind"], meta["x"], meta["nonce"], parts)


@cacheable(CacheSpec(files=SPEC_FILES, save=_spec_save, load=_spec_load, step_name="crash_spec"))
def crash_spec(x: int) -> Bundle:
    return _compute("crash_spec", x)


# --------------------------------------------------------------------------- protocol step


@dataclasses.dataclass(frozen=True)
class ProtoBundle(Bundle):
    """A `Bundle` that implements the cache protocol itself (bare ``@cacheable``)."""

    @classmethod
    def _cache_files(cls, step_name: str) -> list[str]:
        return [f"{step_name}.p{i}.bin" for i in range(len(PROTO_SIZES))] + [
            f"{step_name}.manifest.json"
        ]

    def _cache_save(self, cache_dir: Path, step_name: str) -> None:
        for i, part in enumerate(self.parts):
            _write_chunked(cache_dir / f"{step_name}.p{i}.bin", part)
        manifest = {"kind": self.kind, "x": self.x, "nonce": self.nonce}
        (cache_dir / f"{step_name}.manifest.json").write_text(json.dumps(manifest))

    @classmethod
    def _cache_load(cls, cache_dir: Path, step_name: str) -> ProtoBundle:
        meta = json.loads((cache_dir / f"{step_name}.manifest.json").read_text())
        parts = tuple(
            (cache_dir / f"{step_name}.p{i}.bin").read_bytes() for i in range(len(PROTO_SIZES))
        )
        return cls(meta["kind"], meta["x"], meta["nonce"], parts)


def weights_for(x: int) -> np.ndarray:
    """The array argument of `crash_proto` for ``x`` (enters the key as a fingerprint)."""
    return np.linspace(0.0, 1.0, 64, dtype=np.float32) * np.float32(x + 1)


@cacheable
def crash_proto(x: int, weights: np.ndarray) -> ProtoBundle:
    if not np.array_equal(weights, weights_for(x)):
        raise ValueError("crash_proto: weights do not belong to x")
    result = _compute("crash_proto", x)
    return ProtoBundle(result.kind, result.x, result.nonce, result.parts)


STEPS: dict[str, Callable[..., Bundle]] = {"crash_spec": crash_spec, "crash_proto": crash_proto}


def call_args(kind: str, x: int) -> tuple[Any, ...]:
    """Positional arguments of step ``kind`` for ``x``."""
    return (x,) if kind == "crash_spec" else (x, weights_for(x))


def lookup_args(kind: str, x: int) -> tuple[dict[str, Any], dict[str, str] | None]:
    """``scalars, hashes`` of `Cache.is_cached` for the entry of ``kind(x)``."""
    if kind == "crash_spec":
        return {"x": x}, None
    digest = fingerprint(weights_for(x))
    assert digest is not None
    return {"x": x}, {"weights": digest}


def step_files(kind: str) -> list[str]:
    step = step_of(STEPS[kind])
    assert step is not None
    return step.files()


# --------------------------------------------------------------------------- race step


def _race_save(result: Bundle, directory: Path) -> None:
    meta = {"kind": result.kind, "x": result.x, "nonce": result.nonce}
    (directory / "value.json").write_text(json.dumps(meta))
    (directory / "blob.bin").write_bytes(b"".join(result.parts))


def _race_load(directory: Path) -> Bundle:
    meta = json.loads((directory / "value.json").read_text())
    return Bundle(meta["kind"], meta["x"], meta["nonce"], ((directory / "blob.bin").read_bytes(),))


@cacheable(
    CacheSpec(
        files=["value.json", "blob.bin"], save=_race_save, load=_race_load, step_name="race_step"
    )
)
def race_step(x: int) -> Bundle:
    """Record this execution (O_APPEND line) in the counter file, sleep, return a result."""
    CALLS["race_step"] += 1
    nonce = os.environ.get(NONCE_ENV, "")
    counter = os.open(os.environ[COUNTER_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(counter, f"start {os.getpid()} {x} {time.time():.6f}\n".encode())
        time.sleep(float(os.environ.get(SLEEP_ENV, "0.5")))
        os.write(counter, f"end {os.getpid()} {x} {time.time():.6f}\n".encode())
    finally:
        os.close(counter)
    return Bundle("race_step", x, nonce, (payload("race_step", x, nonce, 0, 100_000),))


def race_worker(
    cache_dir: str,
    x: int,
    counter: str,
    sleep: float,
    barrier: Any,
    ready: Any,
    results: Any,
) -> None:
    """Multiprocessing target: wait at ``barrier``, call `race_step` in a `Cache`, report."""
    os.environ[COUNTER_ENV] = counter
    os.environ[SLEEP_ENV] = str(sleep)
    os.environ[NONCE_ENV] = f"pid-{os.getpid()}"
    warnings.simplefilter("error")
    try:
        cache = Cache(Path(cache_dir))
        if ready is not None:
            ready.set()
        if barrier is not None:
            barrier.wait(timeout=60)
        with cache:
            result = race_step(x)
        results.put((os.getpid(), x, "ok", result))
    except BaseException:
        results.put((os.getpid(), x, "error", traceback.format_exc()))


# --------------------------------------------------------------------------- the zygote

MUTATING = frozenset(
    {
        "open",
        "write",
        "close",
        "truncate",
        "ftruncate",
        "pwrite",
        "flock",
        "mkdir",
        "rename",
        "replace",
        "unlink",
        "rmdir",
        "link",
        "symlink",
        "fsync",
    }
)
"""Names of the C calls a crash-point sweep may kill before (file system effects)."""


def _file_system_call(function: Any) -> bool:
    """True for ``os``/``fcntl`` functions, ``open`` and methods of real files in MUTATING."""
    if getattr(function, "__name__", None) not in MUTATING:
        return False
    owner = getattr(function, "__self__", None)
    if owner is None or isinstance(owner, types.ModuleType):
        return getattr(function, "__module__", None) in ("posix", "fcntl", "io", "_io")
    return isinstance(owner, io.IOBase) and not isinstance(owner, io.StringIO | io.BytesIO)


def _say(message: dict[str, Any]) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())  # one write: atomic in a pipe


def _run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one step call as a crash trial asks (in the forked child)."""
    os.environ[NONCE_ENV] = job["nonce"]
    warnings.simplefilter("error")
    force = job["force"]
    cache = Cache(job["cache_dir"], force=set(force) if isinstance(force, list) else force)
    step, args = STEPS[job["kind"]], call_args(job["kind"], job["x"])
    kill_at: int | None = job.get("kill_at")
    seen = 0

    def hook(frame: Any, event: str, arg: Any) -> None:
        nonlocal seen
        if event != "c_call" or not _file_system_call(arg):
            return
        if seen == kill_at:
            where = f"{frame.f_code.co_qualname} ({Path(frame.f_code.co_filename).name}"
            _say(
                {
                    "event": "site",
                    "pid": os.getpid(),
                    "call": arg.__name__,
                    "where": where + f":{frame.f_lineno})",
                }
            )
            os.kill(os.getpid(), signal.SIGKILL)
        seen += 1

    start = time.perf_counter()
    if kill_at is not None:
        sys.setprofile(hook)
    with cache:
        result = step(*args)
    sys.setprofile(None)
    elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "sites": seen, "nonce": result.nonce}


def _child(job: dict[str, Any], life: int) -> None:
    try:
        _say({"event": "done", "pid": os.getpid(), **_run_job(job)})
    except BaseException:
        _say({"event": "error", "pid": os.getpid(), "traceback": traceback.format_exc()})
    finally:
        try:  # wait to be killed; EOF only if the zygote itself went away
            while os.read(life, 1):
                pass
        finally:
            os._exit(0)


def zygote_main() -> None:
    """Serve fork requests from stdin (JSON lines), answering on stdout (JSON lines)."""
    for kind, fn in STEPS.items():  # warm up: code fingerprint, files, annotations
        step = step_of(fn)
        assert step is not None
        _ = step.code, step.files(), step.signature
        fingerprint(weights_for(0))
        _ = expected(kind, 0, "warm")
    library = getattr(_store, "_library", None)  # reads package metadata once per process
    if library is not None:
        library()
    life_r, life_w = os.pipe()
    children: set[int] = set()
    _say({"event": "ready", "pid": os.getpid()})
    for line in sys.stdin.buffer:
        command = json.loads(line)
        if command["op"] == "run":
            pid = os.fork()
            if pid == 0:
                os.close(life_w)
                _child(command["job"], life_r)
            children.add(pid)
            _say({"event": "pid", "pid": pid})
        elif command["op"] == "reap":
            pid = command["pid"]
            _, status = os.waitpid(pid, 0)
            children.discard(pid)
            _say({"event": "reaped", "pid": pid, "status": status})
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


# --------------------------------------------------------------------------- paused calls


def paused_main() -> None:
    """Run one call (``sys.argv[1]``, JSON), stopping itself (SIGSTOP) at a chosen file call.

    The process stops right before the ``nth`` C call named ``call`` made (directly or not)
    from a function named ``inside``, after saying ``paused``; the test does something from
    another process, then resumes it with SIGCONT. It finally says ``done`` (with the result's
    nonce and problems) or ``error``.
    """
    spec = json.loads(sys.argv[1])
    os.environ[NONCE_ENV] = spec["nonce"]
    warnings.simplefilter("error")
    seen = 0

    def hook(frame: Any, event: str, arg: Any) -> None:
        nonlocal seen
        if event != "c_call" or getattr(arg, "__name__", None) != spec["call"]:
            return
        if not _file_system_call(arg):
            return
        while frame is not None and frame.f_code.co_name != spec["inside"]:
            frame = frame.f_back
        if frame is None:
            return
        seen += 1
        if seen == spec["nth"]:
            _say({"event": "paused", "pid": os.getpid()})
            os.kill(os.getpid(), signal.SIGSTOP)

    outcome: dict[str, Any]
    try:
        sys.setprofile(hook)
        cache = Cache(spec["cache_dir"])
        if spec.get("kind"):
            kind, x = spec["kind"], spec["x"]
            with cache:
                result = STEPS[kind](*call_args(kind, x))
            outcome = {
                "event": "done",
                "nonce": result.nonce,
                "problems": problems_of(result, kind, x),
            }
        else:
            outcome = {"event": "done"}
    except BaseException:
        outcome = {"event": "error", "traceback": traceback.format_exc()}
    finally:
        sys.setprofile(None)
    _say({**outcome, "pid": os.getpid(), "paused": seen >= spec["nth"]})

"""Benchmarks of kwneuro_pydra against its peers, side by side, printed as ratio tables.

    python -m benchmarks.run [--smoke] [--only CASE ...] [--list] [--workdir DIR]

Peers: upstream kwneuro 1.0's cache module (installed on first use into benchmarks/.peers) and
joblib. Every figure is min and median over repetitions, with its ratio to the machine's own
limit (a memory read pass, a file read, a stat) and, for ours, to each peer. ``--smoke`` runs
every case at tiny sizes in a few seconds (its figures mean nothing; it keeps the cases alive).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import joblib  # type: ignore[import-untyped]
import numpy as np

from benchmarks import _peers
from benchmarks._harness import (
    Row,
    Section,
    Timing,
    describe_machine,
    evict,
    file_read,
    format_section,
    format_time,
    measure,
    memory_read,
    settle,
)

OURS = "ours"
UPSTREAM = "kwneuro 1.0"
JOBLIB = "joblib"


@dataclass(frozen=True)
class Sizes:
    """How big and how often: one instance for real figures, one for the smoke run."""

    array_shape: tuple[int, ...]
    """Shape of the float32 DWI-like array."""
    file_bytes: int
    """Size of the on-disk file to fingerprint."""
    repeat: int
    """Timed repetitions of every measurement."""
    fast_calls: int
    """Calls per repetition for sub-microsecond figures."""
    hit_calls: int
    """Calls per repetition for microsecond figures (cache hits, warm fingerprints)."""
    alternations: int
    """Calls in the alternating-arguments case."""
    new_processes: int
    """Child processes started to time a fingerprint in a new process."""
    settle_s: float
    """Age files and entries reach before warm figures are taken (memos distrust younger ones)."""


FULL = Sizes(
    array_shape=(96, 96, 60, 65),  # 144 MB as float32: a DWI
    file_bytes=40 * 2**20,
    repeat=5,
    fast_calls=200_000,
    hit_calls=200,
    alternations=1000,
    new_processes=5,
    settle_s=1.1,
)
SMOKE = Sizes(
    array_shape=(4, 4, 3, 5),
    file_bytes=64 * 2**10,
    repeat=2,
    fast_calls=50,
    hit_calls=3,
    alternations=10,
    new_processes=1,
    settle_s=0.0,  # warm figures may then be cold ones: smoke figures mean nothing
)

Case = Callable[[Sizes, Path], Section]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    """Register a case under *name*: a function of (sizes, empty work directory) -> Section."""

    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn

    return register


# --- participants ------------------------------------------------------------------------------

Cached = tuple[Callable[..., Any], AbstractContextManager[Any]]
"""A cached step and the context inside which it caches."""


def _apis(section: Section) -> dict[str, ModuleType]:
    """The participants with the reference eager API (ours, upstream); notes who is missing."""
    apis: dict[str, ModuleType] = {}
    for label, load in ((OURS, _peers.ours), (UPSTREAM, _peers.upstream)):
        try:
            apis[label] = load()
        except _peers.Unavailable as exc:
            section.notes.append(f"left out: {exc}")
    return apis


def _npy_spec(api: ModuleType) -> Any:
    """A CacheSpec of *api* storing an array result as ``out.npy``."""
    return api.CacheSpec(
        files=["out.npy"],
        save=lambda result, d: np.save(d / "out.npy", result),
        load=lambda d: np.load(d / "out.npy"),
    )


def _cachers(section: Section) -> dict[str, Callable[[Callable[..., Any], Path], Cached]]:
    """Per participant: how to make a cached step of a function, storing under a directory."""

    def eager(api: ModuleType) -> Callable[[Callable[..., Any], Path], Cached]:
        return lambda fn, directory: (api.cacheable(_npy_spec(api))(fn), api.Cache(directory))

    def with_joblib(fn: Callable[..., Any], directory: Path) -> Cached:
        return _peers.joblib_memory(directory).cache(fn), contextlib.nullcontext()

    cachers = {label: eager(api) for label, api in _apis(section).items()}
    cachers[JOBLIB] = with_joblib
    return cachers


# --- steps -------------------------------------------------------------------------------------


def _add(a: int, b: int) -> int:
    """The cheapest possible step: what a wrapper's overhead is measured against."""
    return a + b


def _scalar_step(a: int, b: float, name: str) -> np.ndarray:
    """A step with only scalar arguments and a tiny result."""
    return np.full(4, a * b + len(name))


def _array_step(arr: np.ndarray, scale: float) -> np.ndarray:
    """A step taking a big array and returning a tiny result."""
    return arr.ravel()[:4] * scale


_COMPUTED: list[int] = []


def _counted_step(x: int) -> np.ndarray:
    """A trivial step that records every time it really runs (a cache miss)."""
    _COMPUTED.append(x)
    return np.full(4, x)


def _dwi(shape: tuple[int, ...], order: str) -> np.ndarray:
    """A float32 array of random values in C or Fortran (nibabel's) memory order."""
    arr = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    return np.asfortranarray(arr) if order == "F" else arr


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.3g} MB"


def _slug(label: str) -> str:
    return label.replace(" ", "-")


# --- measuring helpers shared by the cases -----------------------------------------------------


def _hit_latency(cached: Cached, args: tuple[Any, ...], *, repeat: int, calls: int) -> Timing:
    """Time calls of a step whose entry for *args* is already stored (hits)."""
    step, context = cached
    with context:
        return measure(lambda: step(*args), repeat=repeat, calls=calls)


def _fill(cached: Cached, args: tuple[Any, ...]) -> None:
    """Call the step once: the miss that stores its entry for *args*."""
    step, context = cached
    with context:
        step(*args)


def _alternate(
    make: Callable[[Callable[..., Any], Path], Cached],
    args: Sequence[int],
    directory: Path,
    repeat: int,
) -> tuple[Timing, int]:
    """Time the calls over *args*, from an empty cache every repetition; count real runs."""
    fresh = itertools.count()
    current: list[Cached] = []

    def setup() -> None:
        _COMPUTED.clear()
        current[:] = [make(_counted_step, directory / str(next(fresh)))]

    def run() -> None:
        step, context = current[0]
        with context:
            for x in args:
                step(x)

    return measure(run, repeat=repeat, setup=setup), len(_COMPUTED)


class _FreshFile:
    """Each call writes the same bytes to a new file and evicts it from the page cache.

    New inode, new mtime and ctime: a file no memo has seen and the disk must deliver.
    """

    def __init__(self, directory: Path, data: bytes) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.data = directory, data
        self._names = itertools.count()
        self.path = directory / "none"
        self()

    def __call__(self) -> None:
        self.path.unlink(missing_ok=True)
        self.path = self.directory / f"{next(self._names)}.bin"
        self.path.write_bytes(self.data)
        evict(self.path)


_CHILD = """\
import sys, time
from pathlib import Path
import kwneuro_pydra as kp
path = Path(sys.argv[1])
with kp.Cache(sys.argv[2]):
    start = time.perf_counter_ns()
    kp.fingerprint(path)
    print(time.perf_counter_ns() - start)
"""


def _fingerprint_in_new_processes(path: Path, cache_dir: Path, runs: int) -> Timing:
    """Time ``fingerprint(path)`` inside ``Cache(cache_dir)``, once per new process.

    A first, untimed child reads the file and leaves the persistent memo under *cache_dir*.
    """

    def child() -> float:
        command = [sys.executable, "-c", _CHILD, str(path), str(cache_dir)]
        done = subprocess.run(command, capture_output=True, text=True, env=_peers.child_env())
        if done.returncode != 0:
            raise RuntimeError(f"child fingerprint process failed:\n{done.stderr}")
        return float(done.stdout.split()[-1])

    child()
    return Timing.from_samples([child() for _ in range(runs)])


# --- cases -------------------------------------------------------------------------------------


def _fingerprint_array(order: str, sizes: Sizes, workdir: Path) -> Section:
    arr = _dwi(sizes.array_shape, order)
    section = Section(
        f"fingerprint-array-{order}",
        f"fingerprint of a {_mb(arr.nbytes)} float32 array {arr.shape}, {order} order",
    )
    limit = "limit: arr.sum()"
    section.rows.append(Row(limit, memory_read(arr, repeat=sizes.repeat), note="one read pass"))
    apis = _apis(section)
    fingerprints: list[tuple[str, Callable[[Any], object], str]] = []
    if OURS in apis:
        fingerprints.append((OURS, apis[OURS].fingerprint, "kwneuro_pydra.fingerprint(arr)"))
    if UPSTREAM in apis:
        upstream_fingerprint = apis[UPSTREAM]._compute_fingerprint
        fingerprints.append((UPSTREAM, upstream_fingerprint, "sha256 of arr.tobytes()"))
    fingerprints.append((JOBLIB, joblib.hash, "joblib.hash(arr): md5"))
    for label, fingerprint, how in fingerprints:
        timing = measure(functools.partial(fingerprint, arr), repeat=sizes.repeat)
        peers = (UPSTREAM, JOBLIB) if label == OURS else ()
        section.rows.append(Row(label, timing, limit=limit, peers=peers, note=how))
    return section


CASES["fingerprint-array-C"] = functools.partial(_fingerprint_array, "C")
CASES["fingerprint-array-F"] = functools.partial(_fingerprint_array, "F")


@case("fingerprint-file")
def fingerprint_file(sizes: Sizes, workdir: Path) -> Section:
    """A file's fingerprint: cold, warm in this process, and warm in a new process."""
    size = sizes.file_bytes
    section = Section("fingerprint-file", f"fingerprint of a {_mb(size)} file on disk (a Path)")
    data = np.random.default_rng(1).bytes(size)
    warm = workdir / "warm.bin"
    warm.write_bytes(data)  # first, so that it has settled by the time the warm rows need it
    cold = _FreshFile(workdir / "cold", data)
    read_cold, read_warm, stat = "limit: read, cold", "limit: read, warm", "limit: os.stat"
    repeat, calls = sizes.repeat, sizes.hit_calls
    apis = _apis(section)
    rows = section.rows
    rows.append(Row(read_cold, file_read(lambda: cold.path, size, repeat=repeat, setup=cold),
                    note="a fresh file each time, evicted from the page cache"))  # fmt: skip
    if OURS in apis:
        fingerprint = apis[OURS].fingerprint
        timing = measure(lambda: fingerprint(cold.path), repeat=repeat, setup=cold)
        rows.append(Row(f"{OURS}, cold", timing, limit=read_cold, note="a fresh file each time"))
    settle(warm, sizes.settle_s)
    rows.append(Row(read_warm, file_read(lambda: warm, size, repeat=repeat)))
    rows.append(Row(stat, measure(lambda: os.stat(warm), repeat=repeat, calls=calls)))
    if OURS in apis:
        timing = measure(lambda: fingerprint(warm), repeat=repeat, calls=calls)
        rows.append(Row(f"{OURS}, warm", timing, limit=stat, peers=(UPSTREAM,),
                        note="the same file again, in this process"))  # fmt: skip
        timing = _fingerprint_in_new_processes(warm, workdir / "cache", sizes.new_processes)
        rows.append(Row(f"{OURS}, warm, new process", timing, limit=stat, peers=(UPSTREAM,),
                        note="first call in a new process, same Cache dir"))  # fmt: skip
    if UPSTREAM in apis:
        path_fingerprint = apis[UPSTREAM]._compute_fingerprint
        timing = measure(lambda: path_fingerprint(warm), repeat=repeat, calls=calls)
        rows.append(Row(UPSTREAM, timing, limit=stat,
                        note="sha256 of the path string: content never read (stale)"))  # fmt: skip
    return section


@case("wrapper-overhead")
def wrapper_overhead(sizes: Sizes, workdir: Path) -> Section:
    """Cost of the @cacheable wrapper when no Cache is active."""
    section = Section(
        "wrapper-overhead", "a @cacheable(CacheSpec(...)) step called outside a Cache"
    )
    raw = "limit: raw call"
    raw_timing = measure(
        functools.partial(_add, 1, 2), repeat=sizes.repeat, calls=sizes.fast_calls
    )
    section.rows.append(Row(raw, raw_timing, note="the undecorated function"))
    for label, api in _apis(section).items():
        wrapped = api.cacheable(_npy_spec(api))(_add)
        timing = measure(
            functools.partial(wrapped, 1, 2), repeat=sizes.repeat, calls=sizes.fast_calls
        )
        overhead = f"+{format_time(timing.min_ns - raw_timing.min_ns)} per call over raw"
        peers = (UPSTREAM,) if label == OURS else ()
        section.rows.append(Row(label, timing, limit=raw, peers=peers, note=overhead))
    return section


def _hit_case(
    section: Section, step: Callable[..., Any], args: tuple[Any, ...], limit: Row, calls: int,
    sizes: Sizes, workdir: Path,
) -> Section:  # fmt: skip
    """Fill *section* with the machine limit row and every participant's hit latency.

    All entries are stored first, then left to settle (as entries do between runs), so that
    no participant is timed on entries younger than the file memos' racy window.
    """
    section.rows.append(limit)
    cached = {
        label: make(step, workdir / _slug(label)) for label, make in _cachers(section).items()
    }
    for participant in cached.values():
        _fill(participant, args)
    time.sleep(sizes.settle_s)
    for label, participant in cached.items():
        timing = _hit_latency(participant, args, repeat=sizes.repeat, calls=calls)
        peers = (UPSTREAM, JOBLIB) if label == OURS else ()
        section.rows.append(Row(label, timing, limit=limit.label, peers=peers))
    return section


@case("hit-scalars")
def hit_scalars(sizes: Sizes, workdir: Path) -> Section:
    """Hit latency of a step whose arguments are all scalars."""
    args = (3, 0.5, "fa")
    out = workdir / "out.npy"
    np.save(out, _scalar_step(*args))
    load = measure(lambda: np.load(out), repeat=sizes.repeat, calls=sizes.hit_calls)
    limit = Row("limit: np.load", load, note="loading the stored result alone")
    section = Section(
        "hit-scalars", "cache hit of a step with only scalar arguments (int, float, str)"
    )
    return _hit_case(section, _scalar_step, args, limit, sizes.hit_calls, sizes, workdir)


@case("hit-array")
def hit_array(sizes: Sizes, workdir: Path) -> Section:
    """Hit latency of a step taking a DWI-sized array."""
    arr = _dwi(sizes.array_shape, "C")
    limit = Row("limit: arr.sum()", memory_read(arr, repeat=sizes.repeat), note="one read pass")
    section = Section(
        "hit-array", f"cache hit of a step taking a {_mb(arr.nbytes)} float32 array (C order)"
    )
    return _hit_case(section, _array_step, (arr, 2.0), limit, 1, sizes, workdir)


@case("alternating")
def alternating(sizes: Sizes, workdir: Path) -> Section:
    """Keyed entries versus a single slot per step, on A, B, A, B, ... calls."""
    n = sizes.alternations
    section = Section(
        "alternating", f"{n} calls alternating two argument sets (A, B, A, B, ...), empty cache"
    )
    args = [i % 2 for i in range(n)]
    limit = "limit: no cache"
    raw = measure(lambda: [_counted_step(x) for x in args], repeat=sizes.repeat)
    section.rows.append(Row(limit, raw, note=f"{n} runs of the (trivial) step"))
    for label, make in _cachers(section).items():
        timing, runs = _alternate(make, args, workdir / _slug(label), sizes.repeat)
        peers = (UPSTREAM,) if label == OURS else ()
        note = f"the step ran {runs} times in {n} calls"
        section.rows.append(Row(label, timing, limit=limit, peers=peers, note=note))
    section.notes.append("the step is trivial: a real step's cost multiplies every extra run")
    return section


# --- entry point -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected cases and print one table per case; 1 if any case failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--smoke", action="store_true", help="every case at tiny sizes, fast")
    parser.add_argument("--only", action="append", choices=sorted(CASES), metavar="CASE",
                        help="run only this case (repeatable); see --list")  # fmt: skip
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--workdir", type=Path, help="where to write scratch files (a disk)")
    options = parser.parse_args(argv)
    if options.list:
        print("\n".join(CASES))
        return 0
    sizes = SMOKE if options.smoke else FULL
    print("## Benchmarks\n")
    print(f"- command: `{shlex.join(['python', '-m', 'benchmarks.run', *argv])}`")
    print("\n".join(f"- {line}" for line in describe_machine()))
    print("- ratios divide minimum times: `÷ limit` near 1x = what the machine allows;")
    print("  `÷ peers` below 1x = faster than that peer\n", flush=True)
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kwneuro-bench-", dir=options.workdir) as tmp:
        for name in options.only or CASES:
            workdir = Path(tmp) / name
            workdir.mkdir()
            started = time.perf_counter()
            try:
                section = CASES[name](sizes, workdir)
            except Exception:
                traceback.print_exc()
                failed.append(name)
                continue
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            section.notes.append(f"case took {time.perf_counter() - started:.1f} s")
            print(format_section(section), flush=True)
    if failed:
        print(f"failed cases: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

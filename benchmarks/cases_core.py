"""Cases of the eager cache core: fingerprints, wrapper overhead, hits and misses, keyed entries.

Participants: ours, upstream kwneuro 1.0's cache module, ``joblib.Memory`` / ``joblib.hash``.
"""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import joblib  # type: ignore[import-untyped]
import numpy as np

from benchmarks import _peers
from benchmarks._common import (
    CASES,
    JOBLIB,
    OURS,
    UPSTREAM,
    Cached,
    Cacher,
    Sizes,
    apis,
    cachers,
    case,
    fill,
    hit_latency,
    mb,
    miss_latencies,
    npy_spec,
    random_array,
    slug,
)
from benchmarks._harness import (
    Row,
    Section,
    Timing,
    evict,
    file_read,
    format_time,
    measure,
    memory_read,
    settle,
)

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


# --- helpers -----------------------------------------------------------------------------------


def _alternate(
    make: Cacher, args: Sequence[int], directory: Path, repeat: int
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
first, second = Path(sys.argv[1]), Path(sys.argv[2])
with kp.Cache(sys.argv[3]):
    start = time.perf_counter_ns()
    kp.fingerprint(first)
    middle = time.perf_counter_ns()
    kp.fingerprint(second)
    print(middle - start, time.perf_counter_ns() - middle)
"""


def _fingerprint_in_new_processes(
    first: Path, second: Path, cache_dir: Path, runs: int
) -> tuple[Timing, Timing]:
    """Time ``fingerprint(first)``, then ``fingerprint(second)``, in each new process.

    Both calls run inside ``Cache(cache_dir)``. A first, untimed child reads both files and
    leaves the persistent memo under *cache_dir*. Returns the times of the first call of each
    process and of its second call (another file, equally warm): their difference is what a
    process pays once (first dispatch, lazy set-up).
    """

    def child() -> tuple[float, float]:
        command = [sys.executable, "-c", _CHILD, str(first), str(second), str(cache_dir)]
        done = subprocess.run(command, capture_output=True, text=True, env=_peers.child_env())
        if done.returncode != 0:
            raise RuntimeError(f"child fingerprint process failed:\n{done.stderr}")
        one, two = done.stdout.split()[-2:]
        return float(one), float(two)

    child()
    samples = [child() for _ in range(runs)]
    return (
        Timing.from_samples([s[0] for s in samples]),
        Timing.from_samples([s[1] for s in samples]),
    )


# --- cases -------------------------------------------------------------------------------------


def _fingerprint_array(order: str, sizes: Sizes, workdir: Path) -> Section:
    arr = random_array(sizes.array_shape, order)
    section = Section(
        f"fingerprint-array-{order}",
        f"fingerprint of a {mb(arr.nbytes)} float32 array {arr.shape}, {order} order",
    )
    limit = "limit: arr.sum()"
    section.rows.append(Row(limit, memory_read(arr, repeat=sizes.repeat), note="one read pass"))
    found = apis(section)
    fingerprints: list[tuple[str, Callable[[Any], object], str]] = []
    if OURS in found:
        fingerprints.append((OURS, found[OURS].fingerprint, "kwneuro_pydra.fingerprint(arr)"))
    if UPSTREAM in found:
        upstream_fingerprint = found[UPSTREAM]._compute_fingerprint
        fingerprints.append((UPSTREAM, upstream_fingerprint, "sha256 of arr.tobytes()"))
    fingerprints.append((JOBLIB, joblib.hash, "joblib.hash(arr): md5"))
    fingerprint_rows(section, fingerprints, arr, limit=limit, repeat=sizes.repeat)
    return section


def fingerprint_rows(
    section: Section,
    fingerprints: Sequence[tuple[str, Callable[[Any], object], str]],
    value: Any,
    *,
    limit: str,
    repeat: int,
) -> None:
    """Time each participant's fingerprint of ``value``; ours is compared with the peers."""
    for label, fingerprint, how in fingerprints:
        timing = measure(functools.partial(fingerprint, value), repeat=repeat)
        peers = (UPSTREAM, JOBLIB) if label == OURS else ()
        section.rows.append(Row(label, timing, limit=limit, peers=peers, note=how))


CASES["fingerprint-array-C"] = functools.partial(_fingerprint_array, "C")
CASES["fingerprint-array-F"] = functools.partial(_fingerprint_array, "F")


@case("fingerprint-file")
def fingerprint_file(sizes: Sizes, workdir: Path) -> Section:
    """A file's fingerprint: cold, warm in this process, and warm in a new process."""
    size = sizes.file_bytes
    section = Section("fingerprint-file", f"fingerprint of a {mb(size)} file on disk (a Path)")
    data = np.random.default_rng(1).bytes(size)
    warm = workdir / "warm.bin"
    warm.write_bytes(data)  # first, so that it has settled by the time the warm rows need it
    other = workdir / "other.bin"
    other.write_bytes(data[::-1])
    cold = _FreshFile(workdir / "cold", data)
    read_cold, read_warm, stat = "limit: read, cold", "limit: read, warm", "limit: os.stat"
    repeat, calls = sizes.repeat, sizes.hit_calls
    found = apis(section)
    rows = section.rows
    rows.append(
        Row(
            read_cold,
            file_read(lambda: cold.path, size, repeat=repeat, setup=cold),
            note="a fresh file each time, evicted from the page cache",
        )
    )
    if OURS in found:
        fingerprint = found[OURS].fingerprint
        timing = measure(lambda: fingerprint(cold.path), repeat=repeat, setup=cold)
        rows.append(Row(f"{OURS}, cold", timing, limit=read_cold, note="a fresh file each time"))
    settle(other, sizes.settle_s)
    rows.append(Row(read_warm, file_read(lambda: warm, size, repeat=repeat)))
    rows.append(Row(stat, measure(lambda: os.stat(warm), repeat=repeat, calls=calls)))
    if OURS in found:
        timing = measure(lambda: fingerprint(warm), repeat=repeat, calls=calls)
        rows.append(
            Row(
                f"{OURS}, warm",
                timing,
                limit=stat,
                peers=(UPSTREAM,),
                note="the same file again, in this process",
            )
        )
        first, second = _fingerprint_in_new_processes(
            warm, other, workdir / "cache", sizes.new_processes
        )
        rows.append(
            Row(
                f"{OURS}, warm, new process",
                first,
                limit=stat,
                peers=(UPSTREAM,),
                note="first fingerprint call of a new process",
            )
        )
        rows.append(
            Row(
                f"{OURS}, warm, new process, 2nd file",
                second,
                limit=stat,
                peers=(UPSTREAM,),
                note="its next call, on another file memoised on disk",
            )
        )
    if UPSTREAM in found:
        path_fingerprint = found[UPSTREAM]._compute_fingerprint
        timing = measure(lambda: path_fingerprint(warm), repeat=repeat, calls=calls)
        rows.append(
            Row(
                UPSTREAM,
                timing,
                limit=stat,
                note="sha256 of the path string: content never read (stale)",
            )
        )
    return section


def _tree(root: Path, sizes: Sizes) -> list[Path]:
    """A BIDS-like tree: ``tree_files`` small files in subject folders, and three big ones."""
    rng = np.random.default_rng(2)
    files = []
    for i in range(sizes.tree_files):
        path = root / f"sub-{i // 50:03d}" / "dwi" / f"sub-{i // 50:03d}_run-{i % 50}_dwi.bval"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.bytes(1024))
        files.append(path)
    for i in range(3):
        path = root / "derivatives" / f"big-{i}.nii"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.bytes(sizes.file_bytes // 4))
        files.append(path)
    return files


def _stat_tree(root: Path) -> None:
    """Stat every entry of a tree (scandir walk): the floor of a warm directory check."""
    for directory, _, names in os.walk(root):
        for name in names:
            os.stat(os.path.join(directory, name))


@case("fingerprint-directory")
def fingerprint_directory(sizes: Sizes, workdir: Path) -> Section:
    """A directory's fingerprint (by content): cold, warm, and warm in a new process."""
    root = workdir / "bids"
    files = _tree(root, sizes)
    total = sum(p.stat().st_size for p in files)
    section = Section(
        "fingerprint-directory",
        f"fingerprint of a directory of {sizes.tree_files} small files and 3 big ones "
        f"({mb(total)}) given as a Path",
    )
    settle(files[-1], sizes.settle_s)
    repeat, rows = sizes.repeat, section.rows
    found = apis(section)
    read_cold, stat = "limit: read every file, cold", "limit: os.stat of every file"

    def evict_all() -> None:
        for path in files:
            evict(path)

    def read_all() -> None:
        for path in files:
            path.read_bytes()

    rows.append(
        Row(
            read_cold,
            measure(read_all, repeat=repeat, setup=evict_all),
            note="evicted from the page cache",
        )
    )
    rows.append(Row(stat, measure(functools.partial(_stat_tree, root), repeat=repeat)))
    if OURS in found:
        fingerprint = found[OURS].fingerprint
        from kwneuro_pydra import _filedigest  # the benchmark empties the memo for cold rows

        def cold() -> None:
            _filedigest._memory.clear()
            evict_all()

        timing = measure(lambda: fingerprint(root), repeat=repeat, setup=cold)
        rows.append(
            Row(f"{OURS}, cold", timing, limit=read_cold, note="memo emptied, files evicted")
        )
        timing = measure(lambda: fingerprint(root), repeat=repeat)
        rows.append(
            Row(
                f"{OURS}, warm",
                timing,
                limit=stat,
                peers=(UPSTREAM, JOBLIB),
                note="the same tree again, in this process",
            )
        )
        runs = sizes.new_processes
        first, _ = _fingerprint_in_new_processes(root, root, workdir / "cache", runs)
        note = "big files' digests from the cache's memo; small ones re-read"
        rows.append(
            Row(
                f"{OURS}, warm, new process",
                first,
                limit=stat,
                peers=(UPSTREAM, JOBLIB),
                note=note,
            )
        )
    if UPSTREAM in found:
        path_fingerprint = found[UPSTREAM]._compute_fingerprint
        timing = measure(lambda: path_fingerprint(root), repeat=repeat, calls=sizes.hit_calls)
        rows.append(
            Row(
                UPSTREAM,
                timing,
                limit=stat,
                note="sha256 of the path string: content never read (stale)",
            )
        )
    timing = measure(lambda: joblib.hash(root), repeat=repeat, calls=sizes.hit_calls)
    rows.append(
        Row(
            JOBLIB,
            timing,
            limit=stat,
            note="joblib.hash(Path): the path, content never read (stale)",
        )
    )
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
    for label, api in apis(section).items():
        wrapped = api.cacheable(npy_spec(api))(_add)
        timing = measure(
            functools.partial(wrapped, 1, 2), repeat=sizes.repeat, calls=sizes.fast_calls
        )
        overhead = f"+{format_time(timing.min_ns - raw_timing.min_ns)} per call over raw"
        peers = (UPSTREAM,) if label == OURS else ()
        section.rows.append(Row(label, timing, limit=raw, peers=peers, note=overhead))
    return section


def hit_and_miss(
    section: Section,
    participants: dict[str, tuple[Cached, tuple[Any, ...], Callable[[int], tuple[Any, ...]]]],
    limit: Row,
    sizes: Sizes,
    *,
    hit_calls: int,
    miss_calls: int,
    notes: dict[str, str] | None = None,
) -> Section:
    """Fill *section* with the machine limit row and every participant's hit and miss latency.

    *participants* maps a label to (cached step, the arguments of its stored entry, fresh
    arguments ``i -> args`` for misses). All entries are stored first, then left to settle
    (as entries do between runs), so that no participant is timed on entries younger than the
    file memos' racy window. Misses are timed last (they add entries), the participants in
    turns.
    """
    notes = notes or {}
    others = tuple(p for p in participants if not p.startswith(OURS))
    section.rows.append(limit)
    for cached, args, _ in participants.values():
        fill(cached, args)
    time.sleep(sizes.settle_s)
    for label, (cached, args, _) in participants.items():
        timing = hit_latency(cached, args, repeat=sizes.repeat, calls=hit_calls)
        peers = others if label.startswith(OURS) else ()
        section.rows.append(
            Row(
                f"{label}: hit",
                timing,
                limit=limit.label,
                peers=tuple(f"{p}: hit" for p in peers),
                note=notes.get(label, ""),
            )
        )
    misses = miss_latencies(
        {label: (cached, fresh) for label, (cached, _, fresh) in participants.items()},
        repeat=sizes.repeat,
        calls=miss_calls,
    )
    for label, timing in misses.items():
        peers = others if label.startswith(OURS) else ()
        section.rows.append(
            Row(
                f"{label}: miss",
                timing,
                limit=limit.label,
                peers=tuple(f"{p}: miss" for p in peers),
                note="new arguments each call",
            )
        )
    return section


def _standard(
    section: Section,
    step: Callable[..., Any],
    args: tuple[Any, ...],
    fresh: Callable[[int], tuple[Any, ...]],
    workdir: Path,
) -> dict[str, tuple[Cached, tuple[Any, ...], Callable[[int], tuple[Any, ...]]]]:
    """Every eager participant caching *step*, each in its own directory."""
    return {
        label: (make(step, workdir / slug(label)), args, fresh)
        for label, make in cachers(section).items()
    }


@case("hit-scalars")
def hit_scalars(sizes: Sizes, workdir: Path) -> Section:
    """Hit and miss latency of a step whose arguments are all scalars."""
    args = (3, 0.5, "fa")
    out = workdir / "out.npy"
    np.save(out, _scalar_step(*args))
    load = measure(lambda: np.load(out), repeat=sizes.repeat, calls=sizes.hit_calls)
    limit = Row("limit: np.load", load, note="loading the stored result alone")
    section = Section(
        "hit-scalars", "cache hit and miss of a step with only scalar arguments (int, float, str)"
    )
    participants = _standard(section, _scalar_step, args, lambda i: (i + 10, 0.5, "fa"), workdir)
    return hit_and_miss(
        section, participants, limit, sizes, hit_calls=sizes.hit_calls, miss_calls=sizes.miss_calls
    )


@case("hit-array")
def hit_array(sizes: Sizes, workdir: Path) -> Section:
    """Hit and miss latency of a step taking a DWI-sized array."""
    arr = random_array(sizes.array_shape, "C")
    limit = Row("limit: arr.sum()", memory_read(arr, repeat=sizes.repeat), note="one read pass")
    section = Section(
        "hit-array",
        f"cache hit and miss of a step taking a {mb(arr.nbytes)} float32 array (C order)",
    )
    participants = _standard(section, _array_step, (arr, 2.0), lambda i: (arr, 3.0 + i), workdir)
    return hit_and_miss(section, participants, limit, sizes, hit_calls=1, miss_calls=1)


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
    for label, make in cachers(section).items():
        timing, runs = _alternate(make, args, workdir / slug(label), sizes.repeat)
        peers = (UPSTREAM,) if label == OURS else ()
        note = f"the step ran {runs} times in {n} calls"
        section.rows.append(Row(label, timing, limit=limit, peers=peers, note=note))
    section.notes.append("the step is trivial: a real step's cost multiplies every extra run")
    return section

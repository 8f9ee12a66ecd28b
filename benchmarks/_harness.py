"""Timing, machine limits, machine description and the result table of the benchmarks.

Every figure goes through :func:`measure` (or :meth:`Timing.from_samples` for a time measured
inside a child process), so all of them are min and median of per-call times over repetitions,
taken with ``time.perf_counter_ns`` while the garbage collector is paused (as ``timeit`` does).
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Per-call times of the repetitions of one measurement, in nanoseconds."""

    samples_ns: tuple[float, ...]
    calls: int = 1
    """Calls per repetition; each sample is the repetition's time divided by this."""

    @classmethod
    def from_samples(cls, samples_ns: Sequence[float], calls: int = 1) -> Timing:
        """Wrap per-call times measured elsewhere (e.g. reported by a child process)."""
        if not samples_ns:
            raise ValueError("a Timing needs at least one sample")
        return cls(tuple(float(s) for s in samples_ns), calls)

    @property
    def min_ns(self) -> float:
        """Fastest repetition: the least disturbed estimate of the cost."""
        return min(self.samples_ns)

    @property
    def median_ns(self) -> float:
        """Typical repetition."""
        return statistics.median(self.samples_ns)


def measure(
    fn: Callable[[], object],
    *,
    repeat: int,
    calls: int = 1,
    setup: Callable[[], object] | None = None,
    warmup: int = 1,
) -> Timing:
    """Time ``fn()``: *warmup* untimed repetitions, then *repeat* timed ones of *calls* calls each.

    *setup* runs untimed before every repetition (warm-up ones included), e.g. to evict a file
    from the page cache or to start from an empty cache directory. The loop itself costs a few
    tens of nanoseconds per call; compare sub-microsecond figures with a raw-call row measured
    the same way.
    """
    samples: list[float] = []
    for index in range(warmup + repeat):
        if setup is not None:
            setup()
        elapsed = _timed(fn, calls)
        if index >= warmup:
            samples.append(elapsed / calls)
    return Timing.from_samples(samples, calls)


def measure_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    repeat: int,
    calls: int = 1,
    warmup: int = 1,
    contexts: Mapping[str, AbstractContextManager[Any]] | None = None,
) -> dict[str, Timing]:
    """Time several participants' ``fn()`` in turns, as `measure` times one.

    Each round times *calls* calls of every participant, in an order rotated every round, so
    that a slow spell of a shared host falls on all of them alike and their ratios hold. A
    participant's context (from *contexts*, e.g. its ``Cache``) is entered around each of its
    turns, untimed.
    """
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(warmup + repeat):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            with (contexts or {}).get(name) or contextlib.nullcontext():
                elapsed = _timed(fns[name], calls)
            if index >= warmup:
                samples[name].append(elapsed / calls)
    return {name: Timing.from_samples(found, calls) for name, found in samples.items()}


def _timed(fn: Callable[[], object], calls: int) -> int:
    """Nanoseconds of *calls* calls of ``fn()``, with the garbage collector off."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        return time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()


# --- machine limits ----------------------------------------------------------------------------


def memory_read(arr: np.ndarray, *, repeat: int) -> Timing:
    """One read pass over *arr*'s memory (``arr.sum()``): the floor for hashing it."""
    return measure(arr.sum, repeat=repeat)


def evict(path: Path) -> None:
    """Flush *path* and drop it from the page cache, so that its next read is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_into(path: Path, buffer: memoryview) -> int:
    """Read *path* into *buffer* (at least the file's size); return the number of bytes read."""
    done = 0
    with path.open("rb", buffering=0) as file:
        while got := file.readinto(buffer[done:]):
            done += got
    return done


def file_read(
    path: Callable[[], Path], size: int, *, repeat: int, setup: Callable[[], object] | None = None
) -> Timing:
    """Read the *size*-byte file ``path()`` once per repetition: the floor for hashing it.

    The buffer is allocated once and faulted in by the warm-up, so only the read is timed.
    Pass a *setup* that evicts the file (or writes a fresh one) to measure a cold read.
    """
    buffer = memoryview(bytearray(size + 1))  # one spare byte: the last read sees EOF
    return measure(lambda: read_into(path(), buffer), repeat=repeat, setup=setup)


def settle(path: Path, seconds: float = 1.1) -> None:
    """Wait until *path* last changed at least *seconds* ago.

    File memos rightly refuse to trust a file changed within the timestamp granularity
    ("racy" files, as git calls them): a warm figure needs a settled file.
    """
    st = path.stat()
    changed = max(st.st_mtime_ns, st.st_ctime_ns) / 1e9
    time.sleep(max(0.0, changed + seconds - time.time()))


# --- machine description -----------------------------------------------------------------------


def describe_machine() -> list[str]:
    """One line per fact: CPU model, cores, memory, OS, Python and library versions."""
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    versions = ", ".join(f"{name} {_version(name)}" for name in ("numpy", "joblib", "xxhash"))
    return [
        f"CPU: {_cpu_model()}; {cores} logical cores ({usable} usable)",
        f"memory: {_memory_gib():.1f} GiB",
        f"OS: {platform.platform()}",
        f"Python: {sys.version.split()[0]} ({platform.python_implementation()}); {versions}",
    ]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("nan")


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


# --- result table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One measured figure, with the labels of the rows it is compared with."""

    label: str
    timing: Timing
    limit: str | None = None
    """Label of the machine-limit row of the same section to divide by."""
    peers: tuple[str, ...] = ()
    """Labels of peer rows of the same section to divide by."""
    note: str = ""
    unit: str = "ns"
    """What the samples count: ``"ns"`` (times, the default) or ``"B"`` (bytes on disk)."""


@dataclass(frozen=True)
class Curve:
    """One measured cost as a function of a size, for the scaling plot."""

    name: str
    """What is measured, e.g. ``"fully cached rerun, ours"``."""
    unit: str
    """``"s"``, ``"ms"`` or ``"MB"``: the curves of one unit share a panel."""
    xs: tuple[float, ...]
    ys: tuple[float, ...]


@dataclass
class Section:
    """The rows of one case, printed as one table."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    """Cost-versus-size curves the case measured (drawn by ``--plot``)."""


def format_time(ns: float) -> str:
    """Nanoseconds as a short human figure with three significant digits."""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def format_bytes(nbytes: float) -> str:
    """Bytes as a short human figure with three significant digits (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.3g} B"


def format_value(value: float, unit: str) -> str:
    """A sample in its unit: a time (``"ns"``) or a size (``"B"``)."""
    return format_bytes(value) if unit == "B" else format_time(value)


def format_ratio(ratio: float) -> str:
    """A ratio of times, as ``0.0412x`` / ``1.04x`` / ``23.1x`` / ``1234x``."""
    return f"{ratio:.0f}x" if ratio >= 1000 else f"{ratio:.3g}x"


def format_section(section: Section) -> str:
    """A section as a Markdown table (readable in a terminal, pasteable into the docs).

    Ratios divide minimum times: ``÷ limit`` below 1.5x means close to what the machine allows;
    ``÷ peers`` below 1x means faster than that peer.
    """
    by_label = {row.label: row for row in section.rows}

    def ratio(row: Row, other: str | None) -> str:
        reference = by_label.get(other) if other is not None else None
        if reference is None or reference is row:
            return ""
        return format_ratio(row.timing.min_ns / reference.timing.min_ns)

    header = ("what", "min", "median", "runs", "÷ limit", "÷ peers", "how / note")
    lines = [f"### {section.name}: {section.title}", "", _cells(header), _cells(["---"] * 7)]
    for row in section.rows:
        t = row.timing
        runs = f"{len(t.samples_ns)}x{t.calls}" if t.calls > 1 else str(len(t.samples_ns))
        peers = ", ".join(
            f"{r} {p}" for p in row.peers if (r := ratio(row, p))
        )  # e.g. "0.04x kwneuro 1.0, 0.9x joblib"
        low, typical = format_value(t.min_ns, row.unit), format_value(t.median_ns, row.unit)
        cells = (row.label, low, typical, runs, ratio(row, row.limit), peers, row.note)
        lines.append(_cells(cells))
    if section.notes:
        lines.append("")
        lines.extend(f"- {note}" for note in section.notes)
    return "\n".join(lines) + "\n"


def _cells(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"

"""What every case module shares: sizes, the case registry, the participants, test data.

A case is a function of ``(sizes, empty work directory) -> Section`` registered with
:func:`case`; :mod:`benchmarks.run` imports the case modules (which fills :data:`CASES`) and
runs them in registration order.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks import _peers
from benchmarks._harness import Section, Timing, evict, measure, measure_interleaved

OURS = "ours"
UPSTREAM = "kwneuro 1.0"
JOBLIB = "joblib"
PYDRA = "plain Pydra"


@dataclass(frozen=True)
class Sizes:
    """How big and how often: one instance for real figures, one for the smoke run."""

    array_shape: tuple[int, ...]
    """Shape of the float32 DWI-like array (144 MB at full size)."""
    t1_shape: tuple[int, ...]
    """Shape of the int16 T1-like volume (23 MB at full size)."""
    subject_shape: tuple[int, ...]
    """Shape of the small int16 T1 of each subject in the many-subjects Pydra cases."""
    file_bytes: int
    """Size of the on-disk file to fingerprint."""
    repeat: int
    """Timed repetitions of every measurement."""
    heavy_repeat: int
    """Timed repetitions of measurements that take seconds (compressed saves, Pydra runs)."""
    fast_calls: int
    """Calls per repetition for sub-microsecond figures."""
    hit_calls: int
    """Calls per repetition for microsecond figures (cache hits, warm fingerprints)."""
    miss_calls: int
    """Calls per repetition for cache misses of small steps."""
    alternations: int
    """Calls in the alternating-arguments case."""
    new_processes: int
    """Child processes started to time a fingerprint in a new process."""
    settle_s: float
    """Age files and entries reach before warm figures are taken (memos distrust younger ones)."""
    subjects: int
    """Subjects of the fully cached Pydra rerun (x 4 steps)."""
    overhead_nodes: int
    """Nodes of the per-node overhead measurement."""
    cpu_nodes: int
    """CPU-bound nodes of the cf-versus-debug measurement."""
    cpu_seconds: float
    """CPU time each of those nodes burns."""
    scaling: tuple[int, ...]
    """Subject counts of the scaling curve."""
    tree_files: int = 1000
    """Small files of the directory tree to fingerprint (a BIDS dataset, say)."""


FULL = Sizes(
    array_shape=(96, 96, 60, 65),  # 144 MB as float32: a DWI
    t1_shape=(176, 256, 256),  # 23 MB as int16: a T1
    subject_shape=(32, 32, 16),  # per-node costs, not image sizes, are measured there
    file_bytes=40 * 2**20,
    repeat=5,
    heavy_repeat=3,
    fast_calls=200_000,
    hit_calls=200,
    miss_calls=20,
    alternations=1000,
    new_processes=5,
    settle_s=1.1,
    subjects=100,
    overhead_nodes=40,
    cpu_nodes=6,
    cpu_seconds=0.5,
    scaling=(10, 100, 1000),
)
SMOKE = Sizes(
    array_shape=(4, 4, 3, 5),
    t1_shape=(4, 4, 3),
    subject_shape=(4, 4, 3),
    file_bytes=64 * 2**10,
    repeat=2,
    heavy_repeat=1,
    fast_calls=50,
    hit_calls=3,
    miss_calls=2,
    alternations=10,
    new_processes=1,
    settle_s=0.0,  # warm figures may then be cold ones: smoke figures mean nothing
    subjects=2,
    overhead_nodes=2,
    cpu_nodes=2,
    cpu_seconds=0.01,
    scaling=(1, 2),
    tree_files=10,
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
Cacher = Callable[[Callable[..., Any], Path], Cached]
"""How a participant makes a cached step of a function, storing under a directory."""


def apis(section: Section) -> dict[str, ModuleType]:
    """The participants with the reference eager API (ours, upstream); notes who is missing."""
    found: dict[str, ModuleType] = {}
    for label, load in ((OURS, _peers.ours), (UPSTREAM, _peers.upstream)):
        try:
            found[label] = load()
        except _peers.Unavailable as exc:
            section.notes.append(f"left out: {exc}")
    return found


def npy_spec(api: ModuleType) -> Any:
    """A CacheSpec of *api* storing an array result as ``out.npy``."""
    return api.CacheSpec(
        files=["out.npy"],
        save=lambda result, d: np.save(d / "out.npy", result),
        load=lambda d: np.load(d / "out.npy"),
    )


def cachers(section: Section) -> dict[str, Cacher]:
    """Per participant: how to make a cached step of a function, storing under a directory."""

    def eager(api: ModuleType) -> Cacher:
        return lambda fn, directory: (api.cacheable(npy_spec(api))(fn), api.Cache(directory))

    def with_joblib(fn: Callable[..., Any], directory: Path) -> Cached:
        return _peers.joblib_memory(directory).cache(fn), contextlib.nullcontext()

    found: dict[str, Cacher] = {label: eager(api) for label, api in apis(section).items()}
    found[JOBLIB] = with_joblib
    return found


# --- measuring helpers shared by the cases -----------------------------------------------------


def hit_latency(cached: Cached, args: tuple[Any, ...], *, repeat: int, calls: int) -> Timing:
    """Time calls of a step whose entry for *args* is already stored (hits)."""
    step, context = cached
    with context:
        return measure(lambda: step(*args), repeat=repeat, calls=calls)


def miss_latencies(
    participants: Mapping[str, tuple[Cached, Callable[[int], tuple[Any, ...]]]],
    *,
    repeat: int,
    calls: int,
) -> dict[str, Timing]:
    """Time calls of steps with arguments ``args(i)`` never seen before (misses), in turns.

    Every call (warm-up included) takes a fresh ``i``, so each one fingerprints, runs the step,
    stores the entry and publishes it. The participants' rounds interleave, each inside its
    own cache context (`measure_interleaved`).
    """
    calls_of = {
        label: functools.partial(_fresh_call, step, args, itertools.count())
        for label, ((step, _), args) in participants.items()
    }
    contexts = {label: context for label, ((_, context), _) in participants.items()}
    return measure_interleaved(calls_of, repeat=repeat, calls=calls, contexts=contexts)


def _fresh_call(
    step: Callable[..., Any], args: Callable[[int], tuple[Any, ...]], fresh: Iterator[int]
) -> Any:
    return step(*args(next(fresh)))


def fill(cached: Cached, args: tuple[Any, ...]) -> Any:
    """Call the step once: the miss that stores its entry for *args*; return its result."""
    step, context = cached
    with context:
        return step(*args)


def tree_bytes(root: Path) -> int:
    """Total size of the regular files under *root* (what a run left on disk)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def evict_tree(root: Path) -> None:
    """Drop every regular file under *root* from the page cache (a cold read follows)."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            evict(path)


# --- test data ---------------------------------------------------------------------------------


def random_array(shape: tuple[int, ...], order: str) -> np.ndarray:
    """A float32 array of random values in C or Fortran (nibabel's) memory order."""
    arr = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    return np.asfortranarray(arr) if order == "F" else arr


def phantom_dwi_array(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A DWI-like float32 array (Fortran order, as nibabel returns it).

    An ellipsoidal "head" filling about half of the field of view, a smooth signal that decays
    over the diffusion weightings, integer-valued noise as scanners export it, and a zero
    background: it compresses like a real DWI (random values would not compress at all).
    """
    rng = np.random.default_rng(seed)
    x, y, z = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape[:3])
    inside = (x[:, None, None] ** 2 + y[None, :, None] ** 2 + z[None, None, :] ** 2) < 0.8
    tissue = 600.0 + 300.0 * np.cos(3.0 * x)[:, None, None] * np.sin(2.0 * y)[None, :, None]
    volumes = shape[3] if len(shape) > 3 else 1
    decay = np.exp(-np.linspace(0.0, 1.5, volumes, dtype=np.float32))
    out = np.empty((*shape[:3], volumes), dtype=np.float32, order="F")
    for v in range(volumes):
        noise = rng.integers(-20, 21, size=shape[:3], dtype=np.int16)
        out[..., v] = np.where(inside, np.rint(tissue * decay[v]) + noise, 0.0)
    return out.reshape(shape, order="F")


def phantom_t1_array(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    """A T1-like int16 volume (head, zero background, integer noise), Fortran order."""
    return phantom_dwi_array((*shape, 1), seed)[..., 0].astype(np.int16, order="F")


def bvals_bvecs(volumes: int) -> tuple[np.ndarray, np.ndarray]:
    """B-values (first volume b=0, the others b=1000) and unit b-vectors for *volumes*."""
    bvals = np.full(volumes, 1000.0)
    bvals[0] = 0.0
    bvecs = np.random.default_rng(2).standard_normal((volumes, 3))
    bvecs /= np.linalg.norm(bvecs, axis=1, keepdims=True)
    bvecs[0] = 0.0
    return bvals, bvecs


def mb(nbytes: float) -> str:
    """Bytes as megabytes with three significant digits."""
    return f"{nbytes / 1e6:.3g} MB"


def slug(label: str) -> str:
    """A label as a directory name."""
    return label.replace(" ", "-")

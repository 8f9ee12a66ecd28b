"""Cases of the Pydra 1.0 adapter against plain Pydra 1.0 ``python.define`` tasks.

Ours: `kwneuro_pydra.pydra` (``to_task``, ``run_subjects``) with the steps and the 4-step
pipeline of :mod:`benchmarks._pydra_steps`; results travel as files of the per-subject caches.
Peer: the same functions on numpy arrays as plain ``python.define`` tasks in a
``workflow.define`` workflow, volumes passed in memory (pickled into Pydra's job directories).

Pydra's job cache and hash memo (``PYDRA_HASH_CACHE``) go next to the run's own root
(``<root>-jobs``, the ``job_cache`` of `run_subjects`), so that they are counted in the
bytes written and never land in the user's home.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks import _peers
from benchmarks._common import OURS, PYDRA, Sizes, case, mb, tree_bytes
from benchmarks._harness import Curve, Row, Section, Timing, measure

_PLAIN = PYDRA


@dataclass(frozen=True)
class _Adapter:
    """What the cases need of ours: the adapter, the steps and the plain peer's tasks."""

    pydra: ModuleType
    steps: ModuleType
    plain: dict[str, Any]
    submitter: Any
    resources: ModuleType


@functools.cache
def _adapter() -> _Adapter:
    """Import the adapter, the benchmark steps and Pydra; `Unavailable` if any is missing."""
    import importlib

    _peers.ours()
    try:
        adapter = importlib.import_module("kwneuro_pydra.pydra")
        steps = importlib.import_module("benchmarks._pydra_steps")
        submitter = importlib.import_module("pydra.engine.submitter").Submitter
        resources = importlib.import_module("kwneuro_pydra.resources")
    except ImportError as exc:
        raise _peers.Unavailable(f"the Pydra adapter is not importable ({exc!r})") from exc
    return _Adapter(adapter, steps, steps.plain_tasks(), submitter, resources)


@contextlib.contextmanager
def _hash_cache(directory: Path) -> Iterator[None]:
    """Point Pydra's persistent hash memo at *directory* for the plain Pydra runs."""
    prior = os.environ.get("PYDRA_HASH_CACHE")
    os.environ["PYDRA_HASH_CACHE"] = str(directory)
    try:
        yield
    finally:
        if prior is None:
            os.environ.pop("PYDRA_HASH_CACHE", None)
        else:
            os.environ["PYDRA_HASH_CACHE"] = prior


def _submit(adapter: _Adapter, task: Any, root: Path, worker: str, **options: Any) -> Any:
    """Run a plain Pydra task (or split task) under *root*; raise if it errored."""
    with (
        _hash_cache(root / ".pydra-hashes"),
        adapter.submitter(cache_root=root / "jobs", worker=worker, **options) as submitter,
    ):
        result = submitter(task, raise_errors=True)
    if result.errored:
        raise RuntimeError(f"plain Pydra run under {root} errored: {result.errors}")
    return result


def _jobs(root: Path) -> Path:
    """The job cache of `run_subjects` runs under *root*."""
    return root.with_name(f"{root.name}-jobs")


def _run(
    adapter: _Adapter, pipeline: Any, subjects: Any, root: Path, worker: str, **options: Any
) -> None:
    """`run_subjects` with the job cache next to *root*; raise on the first failed subject."""
    _check(
        adapter.pydra.run_subjects(
            pipeline,
            subjects,
            root,
            worker=worker,
            progress=False,
            job_cache=_jobs(root),
            **options,
        )
    )


def _check(results: dict[str, Any]) -> None:
    """Raise on the first failed subject of a `run_subjects` call."""
    for result in results.values():
        if not result.ok:
            raise RuntimeError(str(result.failure))


def _fresh(workdir: Path, prefix: str) -> Callable[[], Path]:
    """A factory of new, empty directories under *workdir*."""
    names = itertools.count()

    def make() -> Path:
        return workdir / f"{prefix}-{next(names)}"

    return make


def _one(seconds: float) -> Timing:
    return Timing.from_samples([seconds * 1e9])


def _workers(sizes: Sizes) -> dict[str, dict[str, Any]]:
    """The workers compared, with their options (cf on every usable core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"debug": {}, "cf": {"n_procs": cores or 1}}


# --- per-node overhead -------------------------------------------------------------------------


@case("pydra-node-overhead")
def pydra_node_overhead(sizes: Sizes, workdir: Path) -> Section:
    """Per-node cost of our task against a plain python.define task doing the same work."""
    adapter = _adapter()
    n = sizes.overhead_nodes
    section = Section(
        "pydra-node-overhead",
        f"per-node time of {n} trivial nodes (one split task, cold): ours vs plain python.define",
    )
    ours_task = adapter.pydra.to_task(adapter.steps.affine_step)
    plain_task = adapter.plain["affine"]
    xs = [float(i) for i in range(n)]
    fresh = _fresh(workdir, "root")
    for worker, options in _workers(sizes).items():
        current: list[Path] = []

        def setup(current: list[Path] = current) -> None:
            current[:] = [fresh()]

        def plain(
            worker: str = worker, options: dict[str, Any] = options, current: list[Path] = current
        ) -> None:
            _submit(adapter, plain_task().split(x=xs), current[0], worker, **options)

        def ours(
            worker: str = worker,
            options: dict[str, Any] = options,
            current: list[Path] = current,
            cache: bool = True,
        ) -> None:
            root = current[0]
            if cache:  # one cache per node, as one per subject (see the note)
                dirs = [str(root / "cache" / f"node-{i}") for i in range(n)]
                task = ours_task().split(("x", "cache_dir"), x=xs, cache_dir=dirs)
            else:
                task = ours_task().split(x=xs)
            _submit(adapter, task, root, worker, **options)

        peer = f"{_PLAIN}, {worker}"
        timing = measure(plain, repeat=sizes.heavy_repeat, setup=setup)
        section.rows.append(Row(peer, _per(timing, n), note="python.define(fn), no cache"))
        timing = measure(ours, repeat=sizes.heavy_repeat, setup=setup)
        section.rows.append(
            Row(
                f"{OURS}, {worker}",
                _per(timing, n),
                peers=(peer,),
                note="to_task(step), cache_dir: runs in a Cache",
            )
        )
        timing = measure(
            functools.partial(ours, cache=False), repeat=sizes.heavy_repeat, setup=setup
        )
        section.rows.append(
            Row(
                f"{OURS}, {worker}, no cache_dir",
                _per(timing, n),
                peers=(peer,),
                note="to_task(step), plain call",
            )
        )
    section.notes.append(
        "each node gets its own cache_dir: concurrent nodes sharing a fresh cache_dir race "
        "in Cache's writability probe (a fixed file name); see the closing notes"
    )
    section.notes.append("target: ours at most 1.2x plain python.define per node")
    return section


def _per(timing: Timing, n: int) -> Timing:
    """Per-node times from per-run times of *n* nodes."""
    return Timing.from_samples([s / n for s in timing.samples_ns], timing.calls * n)


# --- many subjects -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Figures:
    """What one many-subjects run of ours and of plain Pydra measured (cf worker)."""

    subjects: int
    ours_cold: Timing
    ours_rerun: Timing
    ours_eager_hits: Timing
    ours_bytes: int
    plain_cold: Timing
    plain_rerun: Timing
    plain_bytes: int


_FIGURES: dict[tuple[int, Sizes], _Figures] = {}


def _inputs(adapter: _Adapter, workdir: Path, n: int, sizes: Sizes) -> dict[str, Path]:
    """Per-subject input T1 files (small: the costs measured here are per node)."""
    return adapter.steps.write_subject_inputs(workdir / f"inputs-{n}", n, sizes.subject_shape)  # type: ignore[no-any-return]


def _many_subjects(adapter: _Adapter, n: int, sizes: Sizes, workdir: Path) -> _Figures:
    """Cold run, fully cached reruns and eager hits of *n* subjects x 4 steps, ours and plain."""
    key = (n, sizes)
    if key in _FIGURES:
        return _FIGURES[key]
    paths = _inputs(adapter, workdir, n, sizes)
    cf = _workers(sizes)["cf"]
    pipeline = adapter.steps.pipeline
    subjects = {s: {"t1": adapter.resources.NiftiVolumeResource(p)} for s, p in paths.items()}
    root = workdir / f"ours-{n}"
    start = time.perf_counter()
    _run(adapter, pipeline, subjects, root, "cf", **cf)
    ours_cold = _one(time.perf_counter() - start)
    ours_bytes = tree_bytes(root) + tree_bytes(_jobs(root))
    ours_rerun = measure(
        lambda: _run(adapter, pipeline, subjects, root, "cf", **cf), repeat=sizes.repeat
    )
    ours_eager = _eager_hits(adapter, subjects, root, sizes)
    arrays = _arrays(adapter, paths)
    plain_root = workdir / f"plain-{n}"

    def plain() -> None:
        _submit(adapter, adapter.plain["pipeline"]().split(t1=arrays), plain_root, "cf", **cf)

    start = time.perf_counter()
    plain()
    plain_cold = _one(time.perf_counter() - start)
    plain_bytes = tree_bytes(plain_root)
    plain_rerun = measure(plain, repeat=sizes.repeat)
    figures = _Figures(
        n, ours_cold, ours_rerun, ours_eager, ours_bytes, plain_cold, plain_rerun, plain_bytes
    )
    _FIGURES[key] = figures
    return figures


def _arrays(adapter: _Adapter, paths: dict[str, Path]) -> list[np.ndarray]:
    """The subjects' T1 arrays, loaded in memory (what plain Pydra is given)."""
    volumes = (adapter.resources.NiftiVolumeResource(p) for p in paths.values())
    return [np.asarray(v.get_array()) for v in volumes]


def _eager_hits(
    adapter: _Adapter, subjects: dict[str, dict[str, Any]], root: Path, sizes: Sizes
) -> Timing:
    """Per-subject time of the pipeline run eagerly over the entries the workflow stored."""
    cache, pipeline = _peers.ours().Cache, adapter.steps.pipeline

    def run() -> None:
        for subject, inputs in subjects.items():
            with cache(root / subject):
                pipeline(**inputs)

    return _per(measure(run, repeat=sizes.repeat), len(subjects))


@case("pydra-rerun")
def pydra_rerun(sizes: Sizes, workdir: Path) -> Section:
    """Fully cached rerun of many subjects x 4 steps, ours (run_subjects) and plain Pydra."""
    adapter = _adapter()
    n = sizes.subjects
    section = Section(
        "pydra-rerun",
        f"{n} subjects x 4 steps (denoise, mask, apply mask, mean), cf worker, "
        f"T1 {sizes.subject_shape} per subject",
    )
    f = _many_subjects(adapter, n, sizes, workdir)
    peer_cold, peer_rerun = f"{_PLAIN}: cold run", f"{_PLAIN}: fully cached rerun"
    rows = section.rows
    rows.append(Row(peer_cold, f.plain_cold, note="arrays in memory, one run"))
    rows.append(
        Row(
            f"{OURS}: cold run",
            f.ours_cold,
            peers=(peer_cold,),
            note="run_subjects(pipeline, ...), one run",
        )
    )
    rows.append(Row(peer_rerun, f.plain_rerun, note="the same workflow again"))
    rows.append(
        Row(
            f"{OURS}: fully cached rerun",
            f.ours_rerun,
            peers=(peer_rerun,),
            note="run_subjects again, end to end after imports",
        )
    )
    rows.append(
        Row(
            f"{OURS}: eager hits, per subject",
            f.ours_eager_hits,
            note="with Cache(root / subject): pipeline(t1)",
        )
    )
    root = workdir / f"ours-{n}"
    subjects = {
        s: {"t1": adapter.resources.NiftiVolumeResource(p)}
        for s, p in _inputs(adapter, workdir, n, sizes).items()
    }
    pipeline = adapter.steps.pipeline
    debug = measure(lambda: _run(adapter, pipeline, subjects, root, "debug"), repeat=sizes.repeat)
    rows.append(
        Row(
            f"{OURS}: fully cached rerun, debug",
            debug,
            note="debug worker: one submission per subject",
        )
    )
    cf = _workers(sizes)["cf"]
    without = measure(
        lambda: _run(adapter, pipeline, subjects, root, "cf", **cf),
        repeat=sizes.repeat,
        setup=lambda: shutil.rmtree(_jobs(root), ignore_errors=True),
    )
    rows.append(
        Row(
            f"{OURS}: rerun without Pydra's job cache",
            without,
            peers=(peer_cold, f"{OURS}: fully cached rerun"),
            note="job cache deleted first: served from the subjects' caches",
        )
    )
    section.notes.append("target: fully cached rerun of 100 subjects x 4 steps under 1 s")
    section.notes.append("a cached rerun submits nothing to Pydra, job cache or not")
    return section


# --- cf versus debug ---------------------------------------------------------------------------


@case("pydra-cf-speedup")
def pydra_cf_speedup(sizes: Sizes, workdir: Path) -> Section:
    """Cold run of CPU-bound steps: the cf worker (processes) against debug (in process)."""
    adapter = _adapter()
    n, seconds = sizes.cpu_nodes, sizes.cpu_seconds
    workers = _workers(sizes)
    cores = workers["cf"]["n_procs"]
    section = Section(
        "pydra-cf-speedup",
        f"cold run of {n} subjects x 1 CPU-bound step ({seconds:g} s of CPU each), "
        f"debug vs cf on {cores} cores",
    )
    ideal = "limit: ideal on all cores"
    section.rows.append(Row(ideal, _one(seconds * -(-n // cores)), note="ceil(n / cores) x step"))
    subjects = {f"sub-{i:03d}": {"x": float(i), "seconds": seconds} for i in range(n)}
    fresh = _fresh(workdir, "root")
    current: list[Path] = []

    def setup() -> None:
        current[:] = [fresh()]

    plain_cpu = adapter.plain["cpu"]
    xs = [float(i) for i in range(n)]
    for worker, options in workers.items():

        def ours(worker: str = worker, options: dict[str, Any] = options) -> None:
            _run(adapter, adapter.steps.cpu_pipeline, subjects, current[0], worker, **options)

        def plain(worker: str = worker, options: dict[str, Any] = options) -> None:
            task = plain_cpu(seconds=seconds).split(x=xs)
            _submit(adapter, task, current[0], worker, **options)

        repeat = sizes.heavy_repeat
        section.rows.append(
            Row(f"{_PLAIN}, {worker}", measure(plain, repeat=repeat, setup=setup), limit=ideal)
        )
        peers = (f"{_PLAIN}, {worker}", f"{OURS}, debug")
        section.rows.append(
            Row(
                f"{OURS}, {worker}",
                measure(ours, repeat=repeat, setup=setup),
                limit=ideal,
                peers=peers,
            )
        )
    by_label = {row.label: row.timing.min_ns for row in section.rows}
    for who in (OURS, _PLAIN):
        speedup = by_label[f"{who}, debug"] / by_label[f"{who}, cf"]
        section.notes.append(f"{who}: speedup of cf over debug {speedup:.2f}x")
    section.notes.append(f"target: ours on cf at least 1.7x faster than on debug ({cores} cores)")
    return section


# --- bytes written -----------------------------------------------------------------------------


@case("pydra-bytes")
def pydra_bytes(sizes: Sizes, workdir: Path) -> Section:
    """Bytes written per node: ours (file-backed results) vs plain Pydra (volumes in memory)."""
    adapter = _adapter()
    n = 2
    paths = adapter.steps.write_subject_inputs(workdir / "inputs", n, sizes.t1_shape)
    first = adapter.resources.NiftiVolumeResource(next(iter(paths.values())))
    t1 = np.asarray(first.get_array())
    nodes = 4 * n
    section = Section(
        "pydra-bytes",
        f"bytes written to the cache root per node: {n} subjects x 4 steps on a "
        f"{mb(t1.nbytes)} {t1.dtype} T1 {t1.shape}",
    )
    cf = _workers(sizes)["cf"]
    root = workdir / "ours"
    subjects = {s: {"t1": adapter.resources.NiftiVolumeResource(p)} for s, p in paths.items()}
    _run(adapter, adapter.steps.pipeline, subjects, root, "cf", **cf)
    plain_root = workdir / "plain"
    arrays = _arrays(adapter, paths)
    _submit(adapter, adapter.plain["pipeline"]().split(t1=arrays), plain_root, "cf", **cf)

    def row(label: str, nbytes: float, note: str = "", peers: tuple[str, ...] = ()) -> None:
        section.rows.append(
            Row(label, Timing.from_samples([nbytes]), peers=peers, note=note, unit="B")
        )

    peer = f"{_PLAIN}: per node"
    row(peer, tree_bytes(plain_root) / nodes, "arrays pickled into every job directory")
    jobs = _jobs(root)
    row(
        f"{OURS}: per node",
        (tree_bytes(root) + tree_bytes(jobs)) / nodes,
        "cache_root and the job cache",
        peers=(peer,),
    )
    entries = sum(tree_bytes(root / s) for s in paths)
    row(f"{OURS}: cache entries per node", entries / nodes, ".nii.gz results + sidecars")
    row(f"{OURS}: Pydra job dirs per node", tree_bytes(jobs) / nodes, "pickled tasks and results")
    for kind in ("python", "workflow"):
        pickles = [p.stat().st_size for p in jobs.glob(f"run-*/{kind}-*/_result.pklz")]
        note = "target: under 64 KB per node" if kind == "python" else "per-subject workflow"
        row(f"{OURS}: largest {kind} _result.pklz", max(pickles, default=0), note)
    row("for scale: the input T1 (.nii.gz)", first.path.stat().st_size)
    section.notes.append(f"the input T1 is {mb(t1.nbytes)} in memory")
    return section


# --- scaling -----------------------------------------------------------------------------------


@case("scaling")
def scaling(sizes: Sizes, workdir: Path) -> Section:
    """How the cached rerun, the per-subject costs and the bytes grow with the subjects."""
    adapter = _adapter()
    points = sizes.scaling
    section = Section(
        "scaling",
        f"{', '.join(map(str, points))} subjects x 4 steps, cf worker, "
        f"T1 {sizes.subject_shape} per subject",
    )
    figures = [_many_subjects(adapter, n, sizes, workdir) for n in points]
    for f in figures:
        prefix = f"{f.subjects} subjects"
        rows = section.rows
        rows.append(Row(f"{prefix}: {_PLAIN}, fully cached rerun", f.plain_rerun))
        rows.append(
            Row(
                f"{prefix}: {OURS}, fully cached rerun",
                f.ours_rerun,
                peers=(f"{prefix}: {_PLAIN}, fully cached rerun",),
            )
        )
        plain_cold = _per(f.plain_cold, f.subjects)
        rows.append(Row(f"{prefix}: {_PLAIN}, cold run per subject", plain_cold))
        rows.append(
            Row(
                f"{prefix}: {OURS}, cold run per subject",
                _per(f.ours_cold, f.subjects),
                peers=(f"{prefix}: {_PLAIN}, cold run per subject",),
            )
        )
        rows.append(Row(f"{prefix}: {OURS}, eager hits per subject", f.ours_eager_hits))
        rows.append(
            Row(
                f"{prefix}: {_PLAIN}, bytes per subject",
                Timing.from_samples([f.plain_bytes / f.subjects]),
                unit="B",
            )
        )
        rows.append(
            Row(
                f"{prefix}: {OURS}, bytes per subject",
                Timing.from_samples([f.ours_bytes / f.subjects]),
                unit="B",
                peers=(f"{prefix}: {_PLAIN}, bytes per subject",),
            )
        )
    xs = tuple(float(f.subjects) for f in figures)

    def curve(name: str, unit: str, values: list[float]) -> None:
        section.curves.append(Curve(name, unit, xs, tuple(values)))

    curve(f"fully cached rerun, {OURS}", "s", [f.ours_rerun.min_ns / 1e9 for f in figures])
    curve(f"fully cached rerun, {_PLAIN}", "s", [f.plain_rerun.min_ns / 1e9 for f in figures])
    curve(f"cold run, {OURS}", "s", [f.ours_cold.min_ns / 1e9 for f in figures])
    curve(f"cold run, {_PLAIN}", "s", [f.plain_cold.min_ns / 1e9 for f in figures])
    curve(
        f"eager hits per subject, {OURS}",
        "ms per subject",
        [f.ours_eager_hits.min_ns / 1e6 for f in figures],
    )
    curve(
        f"cached rerun per subject, {OURS}",
        "ms per subject",
        [f.ours_rerun.min_ns / 1e6 / f.subjects for f in figures],
    )
    curve(
        f"cached rerun per subject, {_PLAIN}",
        "ms per subject",
        [f.plain_rerun.min_ns / 1e6 / f.subjects for f in figures],
    )
    curve(
        f"bytes per subject, {OURS}",
        "MB per subject",
        [f.ours_bytes / 1e6 / f.subjects for f in figures],
    )
    curve(
        f"bytes per subject, {_PLAIN}",
        "MB per subject",
        [f.plain_bytes / 1e6 / f.subjects for f in figures],
    )
    section.notes.append("cold runs: one run each; reruns: min and median of repetitions")
    return section

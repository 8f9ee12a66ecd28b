"""Cases on a real Slurm (``.ci/slurm/start.sh``): latency, job granularity, cached reruns.

Ours: `run_subjects(..., worker="slurm")` with a job per node or per subject, and ``cf`` on
the submitting machine. Peer: plain Pydra 1.0's own ``slurm`` worker on a plain
``python.define`` task. Without a usable Slurm each case says why in its notes and measures
nothing. Every run's Pydra job cache goes under the case's work directory.
"""

from __future__ import annotations

import functools
import itertools
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import OURS, PYDRA, Sizes, case
from benchmarks._harness import Row, Section, Timing, measure
from benchmarks.cases_pydra import _adapter, _check, _inputs, _one, _submit, _workers

_POLL = 1.0
"""Seconds between two looks at a job (ours and Pydra's worker default to 1)."""


def _unavailable(section: Section) -> bool:
    """True (with a note) when there is no Slurm to measure with."""
    from kwneuro_pydra.pydra._preflight import slurm_unavailable

    why = slurm_unavailable()
    if why is not None:
        section.notes.append(f"not measured: {why}; start one with .ci/slurm/start.sh")
    return why is not None


def _jobs_submitted(root: Path) -> int:
    """sbatch calls made under *root* so far, as the per-subject logs record them (the
    tasks of a job array, ``<array>_<index>``, are one call)."""
    logs = (root / ".logs").glob("*.log")
    found = (
        re.findall(r"\] slurm job (\d+)(?:_\d+)?: .+ submitted", log.read_text()) for log in logs
    )
    return len({job for jobs in found for job in jobs})


def _subjects(sizes: Sizes) -> int:
    """20 subjects for real figures, 1 in the smoke run (each job costs seconds)."""
    return 20 if sizes.subjects >= 20 else 1


def _fresh(workdir: Path, prefix: str) -> Callable[[], Path]:
    names = itertools.count()
    return lambda: workdir / f"{prefix}-{next(names)}"


@case("slurm-latency")
def slurm_latency(sizes: Sizes, workdir: Path) -> Section:
    """Wall time of one trivial task through Slurm: ours, Pydra's own worker, and cf."""
    section = Section("slurm-latency", "one subject of one trivial step (cold), end to end")
    if _unavailable(section):
        return section
    adapter = _adapter()
    from benchmarks import _slurm_steps

    fresh = _fresh(workdir, "latency")
    current: list[Path] = []

    def setup() -> None:
        current[:] = [fresh()]

    def ours(worker: str, **options: Any) -> None:
        root = current[0]
        _check(
            adapter.pydra.run_subjects(
                _slurm_steps.one_step,
                {"sub-01": {"x": 1.0}},
                root,
                worker=worker,
                job_cache=root / "jobs",
                progress=False,
                **options,
            )
        )

    def plain() -> None:
        _submit(adapter, adapter.plain["affine"](x=1.0), current[0], "slurm", poll_delay=_POLL)

    peer = f"{PYDRA}, slurm"
    repeat = sizes.heavy_repeat
    section.rows.append(
        Row(
            peer,
            measure(plain, repeat=repeat, setup=setup, warmup=0),
            note=f"Submitter(worker='slurm'), poll {_POLL:g} s",
        )
    )
    for poll in (_POLL, 0.2):
        timing = measure(
            functools.partial(ours, "slurm", poll_delay=poll), repeat=repeat, setup=setup, warmup=0
        )
        section.rows.append(
            Row(
                f"{OURS}, slurm, poll {poll:g} s",
                timing,
                peers=(peer,),
                note="run_subjects: checks, 1 job, replay",
            )
        )
    timing = measure(
        functools.partial(ours, "cf", **_workers(sizes)["cf"]),
        repeat=repeat,
        setup=setup,
        warmup=0,
    )
    section.rows.append(Row(f"{OURS}, cf", timing, peers=(peer,), note="no scheduler"))
    section.notes.append(
        "ours includes the checks before submitting (a fresh interpreter imports the steps, "
        "sbatch --test-only, sacct, sinfo)"
    )
    return section


def _granularity_runs(sizes: Sizes, workdir: Path) -> dict[str, tuple[Timing, int, Path]]:
    """Cold runs of N subjects x 3 steps: (wall time, jobs submitted, cache root) by mode."""
    from benchmarks import _slurm_steps

    adapter = _adapter()
    n = _subjects(sizes)
    paths = _inputs(adapter, workdir, n, sizes)
    subjects = {s: {"t1": adapter.resources.NiftiVolumeResource(p)} for s, p in paths.items()}
    modes: dict[str, dict[str, Any]] = {
        "slurm, a job per node": {"worker": "slurm", "poll_delay": _POLL},
        "slurm, a job per subject": {
            "worker": "slurm",
            "granularity": "subject",
            "poll_delay": _POLL,
        },
        "cf": {"worker": "cf", **_workers(sizes)["cf"]},
    }
    found = {}
    for label, options in modes.items():
        root = workdir / label.replace(", ", "-").replace(" ", "_")
        start = time.perf_counter()
        _check(
            adapter.pydra.run_subjects(
                _slurm_steps.three_steps,
                subjects,
                root,
                job_cache=root / "jobs",
                progress=False,
                **options,
            )
        )
        found[label] = (_one(time.perf_counter() - start), _jobs_submitted(root), root)
    return found


@case("slurm-granularity")
def slurm_granularity(sizes: Sizes, workdir: Path) -> Section:
    """N subjects x 3 steps through Slurm, a job per node versus per subject, versus cf."""
    n = _subjects(sizes)
    title = f"{n} subjects x 3 steps (denoise, mask, mean), cold, one run each"
    section = Section("slurm-granularity", title)
    if _unavailable(section):
        return section
    runs = _granularity_runs(sizes, workdir)
    per_node = "slurm, a job per node"
    for label, (timing, jobs, _) in runs.items():
        peers = (f"{OURS}, {per_node}",) if label != per_node else ()
        section.rows.append(
            Row(f"{OURS}, {label}", timing, peers=peers, note=f"{jobs} sbatch calls")
        )

    root = runs["slurm, a job per subject"][2]
    from benchmarks import _slurm_steps

    adapter = _adapter()
    subjects = {
        s: {"t1": adapter.resources.NiftiVolumeResource(p)}
        for s, p in _inputs(adapter, workdir, n, sizes).items()
    }

    def rerun() -> None:
        _check(
            adapter.pydra.run_subjects(
                _slurm_steps.three_steps,
                subjects,
                root,
                worker="slurm",
                granularity="subject",
                job_cache=root / "jobs",
                progress=False,
            )
        )

    before = _jobs_submitted(root)
    timing = measure(rerun, repeat=sizes.repeat)
    section.rows.append(
        Row(
            f"{OURS}, slurm: fully cached rerun",
            timing,
            note=f"{_jobs_submitted(root) - before} sbatch calls",
        )
    )
    timing = measure(
        rerun, repeat=sizes.repeat, setup=lambda: shutil.rmtree(root / "jobs", ignore_errors=True)
    )
    calls = _jobs_submitted(root) - before
    section.rows.append(
        Row(
            f"{OURS}, slurm: fully cached rerun, no Pydra job cache",
            timing,
            note=f"{calls} sbatch calls in all",
        )
    )
    section.notes.append(f"jobs poll every {_POLL:g} s; 2 CPUs shared with other work")
    return section


def _logging_wrappers(where: Path, log: Path) -> str:
    """Write wrappers of squeue and sacct logging each call to *log*; return the PATH to use."""
    import os

    where.mkdir(parents=True, exist_ok=True)
    for command in ("squeue", "sacct"):
        real = shutil.which(command)
        wrapper = where / command
        wrapper.write_text(
            f'#!/bin/sh\necho "$(date +%s.%N) {command}" >> {log}\nexec {real} "$@"\n'
        )
        wrapper.chmod(0o755)
    return f"{where}:{os.environ['PATH']}"


def load_while_waiting(
    n: int, window: float, poll: float, max_poll: float, workdir: Path
) -> dict[str, float]:
    """Run `_slurm_steps.one_step` for *n* subjects, a job each (one array), held pending
    behind a job that holds the node for *window* seconds; measure what the submitter costs
    the controller and the machine meanwhile.

    Returns:
        ``queries``, ``looks`` (squeue calls) and ``sacct`` calls a minute while waiting,
        ``cpu`` (the submitter's CPU time over the window's wall time), ``jobs``, ``wall``.
    """
    import os
    import subprocess
    import threading

    from benchmarks import _slurm_steps

    adapter = _adapter()
    log = workdir / "calls.log"
    path = _logging_wrappers(workdir / "wrappers", log)
    blocker = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--exclusive",
            "--job-name=kwneuro-bench-blocker",
            f"--output={workdir / 'blocker.out'}",
            "--wrap",
            "sleep 3600",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    root = workdir / "load"
    marks: dict[str, float] = {}

    def open_window() -> None:  # once the array is submitted
        for _ in range(int(600 / 0.1)):
            if (root / ".logs" / "slurm-jobs.tsv").exists():
                break
            time.sleep(0.1)
        marks["start"], marks["cpu0"] = time.time(), time.process_time()
        time.sleep(window)
        marks["end"], marks["cpu1"] = time.time(), time.process_time()
        subprocess.run(["scancel", blocker], check=True)

    prior = os.environ["PATH"]
    os.environ["PATH"] = path
    watcher = threading.Thread(target=open_window)
    watcher.start()
    start = time.perf_counter()
    try:
        subjects = {f"sub-{i:03d}": {"x": float(i)} for i in range(n)}
        _check(
            adapter.pydra.run_subjects(
                _slurm_steps.one_step,
                subjects,
                root,
                worker="slurm",
                granularity="subject",
                job_cache=root / "jobs",
                progress=False,
                poll_delay=poll,
                max_poll_delay=max_poll,
            )
        )
    finally:
        os.environ["PATH"] = prior
        watcher.join()
        subprocess.run(["scancel", blocker], check=False)
    calls = [line.split() for line in log.read_text().splitlines()]
    inside = [c for t, c in calls if marks["start"] <= float(t) <= marks["end"]]
    minutes = (marks["end"] - marks["start"]) / 60
    return {
        "queries": len(inside) / minutes,
        "looks": inside.count("squeue") / minutes,
        "sacct": inside.count("sacct") / minutes,
        "cpu": (marks["cpu1"] - marks["cpu0"]) / (marks["end"] - marks["start"]),
        "jobs": n,
        "wall": time.perf_counter() - start,
    }


@case("slurm-load")
def slurm_load(sizes: Sizes, workdir: Path) -> Section:
    """What following 200 pending jobs costs: scheduler queries a minute, submitter CPU."""
    real = sizes.subjects >= 20
    n, window, poll, max_poll = (200, 240.0, 5.0, 60.0) if real else (3, 3.0, 0.2, 1.0)
    title = f"{n} subjects, a job each (one array), pending {window:g} s behind a busy node"
    section = Section("slurm-load", title)
    if _unavailable(section):
        return section
    found = load_while_waiting(n, window, poll, max_poll, workdir)
    section.rows.append(
        Row(
            f"{OURS}, slurm, poll {poll:g} s up to {max_poll:g} s",
            _one(found["wall"]),
            note="whole run, cold",
        )
    )
    section.notes.append(
        f"while waiting: {found['queries']:.1f} scheduler queries a minute "
        f"({found['looks']:.1f} squeue, {found['sacct']:.1f} sacct) for {n} jobs; submitter "
        f"CPU {100 * found['cpu']:.2f} % of wall time"
    )
    section.notes.append(
        "before (one squeue per job per poll_delay=1 s): 6,632 squeue a minute for 200 "
        "pending jobs, submitter CPU 47 %"
    )
    return section

"""What `run_subjects` does for schedulers: the worker to submit with, and its failures."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import cloudpickle  # type: ignore[import-untyped]
from pydra.engine.workflow import Workflow  # type: ignore[import-untyped]
from pydra.workers.base import Worker  # type: ignore[import-untyped]
from pydra.workers.cf import ConcurrentFuturesWorker  # type: ignore[import-untyped]

from kwneuro_pydra.pydra._preflight import check_cache_root, check_slurm, check_worker
from kwneuro_pydra.pydra._resources import for_subject, requests
from kwneuro_pydra.pydra._slurm import SchedulerError, SlurmWorker, _subject_dir
from kwneuro_pydra.pydra._workarounds import sbatch_args

__all__ = [
    "GRANULARITIES",
    "LOG_DIR",
    "POLL_DELAY",
    "RECORD",
    "SubjectProcessWorker",
    "cancel_on_interrupt",
    "check_before_submitting",
    "job_record",
    "prepare_worker",
    "scheduler_failure",
]

GRANULARITIES = ("node", "subject")
LOG_DIR = ".logs"
"""Directory of the per-subject log files of scheduler runs, under the cache root."""
RECORD = "slurm-jobs.tsv"
"""The record of the jobs submitted into a cache root, in `LOG_DIR` (see `SlurmWorker`)."""
POLL_DELAY = 5.0
"""Seconds between looks at the queue while something changes (`SlurmWorker.poll_delay`)."""
SLURM_OPTIONS = ("sbatch_args", "poll_delay", "max_poll_delay", "max_running", "detach")
"""The worker options `run_subjects` passes on to `SlurmWorker`."""
CF_OPTIONS = ("n_procs",)
"""The worker options `run_subjects` passes on to `SubjectProcessWorker`."""


def job_record(cache_root: Path) -> Path:
    """The record of the Slurm jobs submitted into ``cache_root``: ``.logs/slurm-jobs.tsv``.

    Args:
        cache_root: The cache root of the runs (`run_subjects`' ``cache_root``).

    Returns:
        The record's path (it exists once a run submitted a job).
    """
    return cache_root / LOG_DIR / RECORD


@attrs.define(getstate_setstate=False)  # Pydra's: the pool is not pickled
class SubjectProcessWorker(ConcurrentFuturesWorker):  # type: ignore[misc]
    """Pydra's ``cf`` worker that runs each subject's workflow in one of its processes.

    A subject's steps run there one after the other (Pydra's ``debug`` worker, as in a
    Slurm job per subject), each still cached on its own: the entries are those of a run
    with a process per node. A volume decoded by one step is served to the next from the
    process's memo (`kwneuro_pydra.resources`), so a subject's DWI is decompressed once.
    Subjects run side by side, ``n_procs`` at a time.

    Attributes:
        n_procs: The processes (default: the CPUs this process may use).
    """

    _plugin_name: ClassVar[str] = "cf"

    async def submit(self, job: Any, rerun: bool = False) -> Any:
        """Run a subject's workflow in a process of the pool; other jobs as Pydra does."""
        if job.is_async and _subject_dir(job) is not None:
            pickled = cloudpickle.dumps(job)
            return await self.loop.run_in_executor(self.pool, _run_subject, pickled, rerun)
        return await super().submit(job, rerun=rerun)


def _run_subject(pickled: bytes, rerun: bool) -> None:
    """Run a pickled subject workflow's job in this process (see `SubjectProcessWorker`).

    Pydra memoizes workflow constructions per process, and a construction serves the steps
    its cache answers: none may outlive the run of the subject it was made for.
    """
    from kwneuro_pydra.pydra._job import run_workflow

    Workflow.clear_cache()
    try:
        run_workflow(cloudpickle.loads(pickled), rerun)
    finally:
        Workflow.clear_cache()


def prepare_worker(
    worker: str,
    root: Path,
    steps: Mapping[str, Callable[..., Any]],
    *,
    resources: Mapping[str, Mapping[str, Any]] | None,
    granularity: str,
    pending_timeout: float | None,
    options: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """Check the options; return the Submitter's ``worker`` and options.

    The scheduler's own checks wait for `check_before_submitting`: a run its caches answer
    submits nothing and needs none.

    Args:
        worker: The worker name given to `run_subjects`.
        root: The cache root (absolute).
        steps: The pipeline's step functions by step name.
        resources: Per-step requests (see `kwneuro_pydra.pydra._resources`).
        granularity: ``"node"`` (a job per node) or ``"subject"`` (a job per subject: for
            ``cf``, a `SubjectProcessWorker`).
        pending_timeout: Seconds a job may pend before it is cancelled.
        options: The worker options given to `run_subjects`.

    Returns:
        The worker name (or our `SlurmWorker`) and the options left for ``Submitter``.

    Raises:
        ValueError: See `check_worker`, `check_cache_root`, `requests`, `sbatch_args`; a
            scheduler option given to a worker without a scheduler; a bad ``granularity``
            (``"subject"`` needs ``slurm`` or ``cf``); an unknown option of ``cf`` by subject.
    """
    check_worker(worker, Worker.available_plugins())
    check_cache_root(root)
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"granularity={granularity!r}: expected one of {', '.join(map(repr, GRANULARITIES))}"
        )
    wanted = requests(resources, steps)
    if worker != "slurm":
        given = [
            name
            for name, value in (
                ("resources", resources),
                ("granularity", granularity != "node" and worker != "cf"),
                ("pending_timeout", pending_timeout),
            )
            if value
        ]
        if given:
            needs = "worker='slurm'" + " or 'cf'" * (given == ["granularity"])
            raise ValueError(f"{', '.join(given)} need {needs} (worker is {worker!r})")
        if granularity == "node":
            return worker, options
        unknown = sorted(set(options) - set(CF_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown option(s) for worker='cf': {', '.join(unknown)} "
                f"(expected {', '.join(CF_OPTIONS)})"
            )
        return SubjectProcessWorker(**options), {}
    unknown = sorted(set(options) - set(SLURM_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown option(s) for worker='slurm': {', '.join(unknown)} "
            f"(expected {', '.join(SLURM_OPTIONS)})"
        )
    sbatch_args(options.get("sbatch_args", ""))
    passed = {name: options[name] for name in SLURM_OPTIONS if name in options}
    chosen = SlurmWorker(
        **{**passed, "poll_delay": options.get("poll_delay", POLL_DELAY)},
        resources=wanted,
        per_subject=granularity == "subject",
        steps=tuple(steps),
        pending_timeout=pending_timeout,
        log_dir=str(root / LOG_DIR),
        record=str(job_record(root)),
    )
    if chosen.per_subject:
        for_subject(wanted, steps)  # two steps' options that conflict: refused now
    return chosen, {}


def check_before_submitting(
    worker: Any, root: Path, jobs: Path, steps: Mapping[str, Callable[..., Any]]
) -> None:
    """The scheduler's checks (see `check_slurm`), once something is to be submitted.

    Args:
        worker: What `prepare_worker` returned.
        root: The cache root (absolute).
        jobs: Pydra's job cache (absolute).
        steps: The pipeline's step functions by step name.
    """
    if not isinstance(worker, SlurmWorker):
        return
    wanted = worker.resources
    if worker.per_subject and wanted:
        wanted = {"each subject's job": for_subject(wanted, worker.steps)}
    places = {"cache root": root, "Pydra's job cache": jobs}
    check_slurm(places, steps, worker.sbatch_args, wanted)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


@contextlib.contextmanager
def cancel_on_interrupt(worker: Any) -> Iterator[None]:
    """Ctrl-C or SIGTERM while a scheduler runs this run's jobs: cancel them, say so in one line.

    Only jobs this run submitted are cancelled (not those it followed from an earlier run's
    record); none when the worker detaches. Ctrl-C is raised again; SIGTERM exits with status 143.
    """
    if not isinstance(worker, SlurmWorker) or worker.detach:
        yield
        return
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main else None
    try:
        yield
    except KeyboardInterrupt as interrupt:
        cancelled = worker.cancel_submitted()
        what = "SIGTERM" if isinstance(interrupt, _Terminated) else "interrupted"
        print(
            f"kwneuro-pydra: {what}: cancelled {len(cancelled)} Slurm job(s) this run "
            f"submitted{': ' * bool(cancelled)}{' '.join(cancelled)}",
            file=sys.stderr,
            flush=True,
        )
        if isinstance(interrupt, _Terminated):
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def scheduler_failure(worker: Any, subject: str) -> SchedulerError | None:
    """The scheduler's reason why ``subject`` did not complete, if a job of it failed."""
    if isinstance(worker, SlurmWorker):
        return worker.failures.get(subject)
    return None

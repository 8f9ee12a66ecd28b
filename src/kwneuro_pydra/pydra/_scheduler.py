"""What `run_subjects` does for schedulers: the worker to submit with, and its failures."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydra.workers.base import Worker  # type: ignore[import-untyped]

from kwneuro_pydra.pydra._preflight import check_cache_root, check_slurm, check_worker
from kwneuro_pydra.pydra._resources import in_sequence, requests
from kwneuro_pydra.pydra._slurm import SchedulerError, SlurmWorker
from kwneuro_pydra.pydra._workarounds import sbatch_args

__all__ = [
    "GRANULARITIES",
    "LOG_DIR",
    "check_before_submitting",
    "prepare_worker",
    "scheduler_failure",
]

GRANULARITIES = ("node", "subject")
LOG_DIR = ".logs"
"""Directory of the per-subject log files of scheduler runs, under the cache root."""


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
        granularity: ``"node"`` (a job per node) or ``"subject"`` (a job per subject).
        pending_timeout: Seconds a job may pend before it is cancelled.
        options: The worker options given to `run_subjects`.

    Returns:
        The worker name (or our `SlurmWorker`) and the options left for ``Submitter``.

    Raises:
        ValueError: See `check_worker`, `check_cache_root`, `requests`, `sbatch_args`; a
            scheduler option given to a worker without a scheduler; a bad ``granularity``.
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
                ("granularity", granularity != "node"),
                ("pending_timeout", pending_timeout),
            )
            if value
        ]
        if given:
            raise ValueError(f"{', '.join(given)} need worker='slurm' (worker is {worker!r})")
        return worker, options
    unknown = sorted(set(options) - {"sbatch_args", "poll_delay"})
    if unknown:
        raise ValueError(
            f"unknown option(s) for worker='slurm': {', '.join(unknown)} "
            "(expected sbatch_args, poll_delay)"
        )
    sbatch_args(options.get("sbatch_args", ""))
    chosen = SlurmWorker(  # type: ignore[call-arg]  # attrs fields of Pydra's worker
        sbatch_args=options.get("sbatch_args", ""),
        poll_delay=options.get("poll_delay", 1),
        resources=wanted,
        per_subject=granularity == "subject",
        pending_timeout=pending_timeout,
        log_dir=str(root / LOG_DIR),
    )
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
        wanted = {"each subject's job": in_sequence(wanted.values())}
    places = {"cache root": root, "Pydra's job cache": jobs}
    check_slurm(places, steps, worker.sbatch_args, wanted)


def scheduler_failure(worker: Any, subject: str) -> SchedulerError | None:
    """The scheduler's reason why ``subject`` did not complete, if a job of it failed."""
    if isinstance(worker, SlurmWorker):
        return worker.failures.get(subject)
    return None

"""What `run_subjects` does for schedulers: the worker to submit with, and its failures."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydra.workers.base import Worker  # type: ignore[import-untyped]

from kwneuro_pydra.pydra._preflight import check_cache_root, check_slurm, check_worker
from kwneuro_pydra.pydra._resources import in_sequence, requests
from kwneuro_pydra.pydra._slurm import SchedulerError, SlurmWorker

__all__ = ["GRANULARITIES", "LOG_DIR", "prepare_worker", "scheduler_failure"]

GRANULARITIES = ("node", "subject")
LOG_DIR = ".logs"
"""Directory of the per-subject log files of scheduler runs, under the cache root."""


def prepare_worker(
    worker: str,
    root: Path,
    jobs: Path,
    steps: Mapping[str, Callable[..., Any]],
    *,
    resources: Mapping[str, Mapping[str, Any]] | None,
    granularity: str,
    pending_timeout: float | None,
    options: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """Check everything before submitting; return the Submitter's ``worker`` and options.

    Args:
        worker: The worker name given to `run_subjects`.
        root: The cache root (absolute).
        jobs: Pydra's job cache (absolute).
        steps: The pipeline's step functions by step name.
        resources: Per-step requests (see `kwneuro_pydra.pydra._resources`).
        granularity: ``"node"`` (a job per node) or ``"subject"`` (a job per subject).
        pending_timeout: Seconds a job may pend before it is cancelled.
        options: The worker options given to `run_subjects`.

    Returns:
        The worker name (or our `SlurmWorker`) and the options left for ``Submitter``.

    Raises:
        ValueError: See `check_worker`, `check_cache_root`, `check_slurm`; a scheduler
            option given to a worker without a scheduler; a bad ``granularity``.
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
    per_subject = granularity == "subject"
    checked = (
        {"each subject's job": in_sequence(wanted.values())} if per_subject and wanted else wanted
    )
    check_slurm(
        {"cache root": root, "Pydra's job cache": jobs},
        steps,
        options.get("sbatch_args", ""),
        checked,
    )
    chosen = SlurmWorker(  # type: ignore[call-arg]  # attrs fields of Pydra's worker
        sbatch_args=options.get("sbatch_args", ""),
        poll_delay=options.get("poll_delay", 1),
        resources=wanted,
        per_subject=per_subject,
        pending_timeout=pending_timeout,
        log_dir=str(root / LOG_DIR),
    )
    return chosen, {}


def scheduler_failure(worker: Any, subject: str) -> SchedulerError | None:
    """The scheduler's reason why ``subject`` did not complete, if a job of it failed."""
    if isinstance(worker, SlurmWorker):
        return worker.failures.get(subject)
    return None

"""`app_status`: each series' steps as the cache holds them, for the options of the last run;
`job_status` and `cancel_jobs`: the Slurm jobs of a run (a detached one) as they are now.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from kwneuro_pydra.app._errors import AppError
from kwneuro_pydra.app._options import recorded_work_dir, status_parameters
from kwneuro_pydra.app._series import describe, look_up, pipeline, read_record, units
from kwneuro_pydra.cache import Cache, StepState

__all__ = [
    "JOB_STATES",
    "STATES",
    "AppStatus",
    "JobStatus",
    "SeriesJob",
    "SeriesStatus",
    "app_status",
    "cancel_jobs",
    "job_status",
]

_log = logging.getLogger(__name__)

STATES = ("cached", "stale", "missing", "failed")
"""A step's states in `SeriesStatus.states`: served by the cache; in the cache for code that
changed since; not in the cache; failed in the last run."""


@attrs.frozen
class SeriesStatus:
    """One series' steps as the cache holds them.

    Attributes:
        name: The series' source entities (``sub-02_ses-1``).
        subject: The subject label (without ``sub-``).
        source: The DWI's path in the dataset.
        states: Step -> one of `STATES`, in the pipeline's order (empty when the DWI cannot
            be loaded).
        failure: Why the DWI cannot be loaded, or why the last run of the series failed
            (with the parameters looked up), also when an older entry of the step that
            failed still serves it (a forced step that raised: its state is ``cached``).
    """

    name: str
    subject: str
    source: str
    states: Mapping[str, str]
    failure: str | None = None


@attrs.frozen
class AppStatus:
    """What `app_status` found.

    Attributes:
        steps: The pipeline's steps, in order.
        series: Every series selected, sorted by path.
        no_dwi: Selected subjects (labels) without a DWI series.
        work_dir: The cache looked into.
        parameters: The DTI parameters looked up.
        options: One line: those parameters as options, and where they come from.
        jobs: Series whose steps are not all cached -> the Slurm job a run recorded for them
            (a detached run's, still running or not: `job_status` asks Slurm).
    """

    steps: tuple[str, ...]
    series: tuple[SeriesStatus, ...]
    no_dwi: tuple[str, ...]
    work_dir: Path
    parameters: Mapping[str, Any]
    options: str
    jobs: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """State -> steps in it over every series (a series that cannot load counts one
        failed).
        """
        counts = dict.fromkeys(STATES, 0)
        for series in self.series:
            for state in series.states.values():
                counts[state] += 1
            counts["failed"] += not series.states
        return counts

    @property
    def summary(self) -> str:
        """``3 subjects, 4 DWI series`` (and the subjects without DWI)."""
        return describe({s.subject for s in self.series}, len(self.series), self.no_dwi)


def app_status(
    bids_dir: str | Path,
    output_dir: str | Path,
    *,
    participants: Sequence[str] = (),
    sessions: Sequence[str] = (),
    work_dir: str | Path | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> AppStatus:
    """Look up every step of every series in the cache; compute and write nothing.

    Args:
        bids_dir: The BIDS dataset.
        output_dir: The output folder of the runs.
        participants: Only these subject labels; all when empty.
        sessions: Only these session labels; all when empty.
        work_dir: The cache; default: the one the last run into ``output_dir`` recorded,
            else ``OUTPUT_DIR/.kwneuro-cache``.
        parameters: DTI parameters to look up; those left out are the last run's (recorded
            in ``output_dir``), else the defaults. A parameter given that differs from the
            run's is logged as a warning.

    Returns:
        The `AppStatus`.

    Raises:
        BidsError: The dataset cannot be used, or a label does not exist or has no DWI.
        AppError: A parameter is unknown or its value is not one of it.
    """
    output_dir = Path(output_dir).absolute()
    found = units(Path(bids_dir), participants, sessions)
    if work_dir is None:
        work_dir = recorded_work_dir(output_dir) or output_dir / ".kwneuro-cache"
    work = Path(work_dir).absolute()
    values, options = status_parameters(parameters or {}, output_dir)
    record = read_record(work)
    steps = tuple(s.__name__ for s in pipeline().STEPS)
    series = []
    for unit in found.units:
        recorded = record.get(unit.name, {})
        if unit.dwi is None:
            series.append(
                SeriesStatus(unit.name, unit.series.subject, unit.series.source, {}, unit.failure)
            )
            continue
        states = dict(look_up(unit, work, values).states)
        failed_step = recorded.get("step")
        if failed_step in states and states[failed_step] != StepState.CACHED:
            states[failed_step] = StepState.FAILED
        # The last run's failure, also where an older entry of the step still serves (a
        # forced step that raised): the cache answers, but that run did not succeed.
        same = recorded.get("parameters", values) == values
        reason = recorded.get("reason") if same or StepState.FAILED in states.values() else None
        series.append(
            SeriesStatus(
                unit.name,
                unit.series.subject,
                unit.series.source,
                states,
                None if reason is None else str(reason),
            )
        )
    incomplete = {s.name for s in series if set(s.states.values()) - {StepState.CACHED}}
    jobs = {n: job for n, job in _recorded_jobs(work).items() if n in incomplete}
    return AppStatus(steps, tuple(series), found.no_dwi, work, values, options, jobs)


def _recorded_jobs(work: Path) -> dict[str, str]:
    """Series -> the last Slurm job recorded in ``work`` (read from the record, no Slurm)."""
    from kwneuro_pydra.pydra import job_record, recorded_jobs

    try:
        return {name: job for name, (job, _) in recorded_jobs(job_record(work)).items()}
    except OSError as error:
        _log.warning("cannot read the Slurm job record: %s", error)
        return {}


JOB_STATES = ("queued", "running", "completed", "failed", "cancelled", "unknown")
"""A series' job in `SeriesJob.state`: pending in the queue; running; completed with its steps
cached (a run collects them); ended otherwise, or a step failed in it; cancelled; neither
Slurm nor the cache knows."""
_QUEUED = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})


@attrs.frozen
class SeriesJob:
    """A series' last Slurm job, as Slurm and the cache know it now.

    Attributes:
        name: The series (its cache folder's name, ``sub-02_ses-1``).
        job_id: Slurm's job id (``<array>_<index>`` for an array task).
        step: The step the job ran (``all steps`` for a job per series).
        slurm_state: Slurm's state (``PENDING``, ``RUNNING``, ``COMPLETED`` ...), or
            ``UNKNOWN`` when neither the controller nor accounting knows the job.
        state: One of `JOB_STATES`.
    """

    name: str
    job_id: str
    step: str
    slurm_state: str
    state: str


@attrs.frozen
class JobStatus:
    """What `job_status` found: the jobs a run into a work folder recorded.

    Attributes:
        work_dir: The cache whose record was read.
        record: The record, ``WORK_DIR/.logs/slurm-jobs.tsv``.
        jobs: Each series' last job, in the order they were recorded.
    """

    work_dir: Path
    record: Path
    jobs: tuple[SeriesJob, ...]

    @property
    def counts(self) -> dict[str, int]:
        """State (`JOB_STATES`) -> number of series in it."""
        counts = dict.fromkeys(JOB_STATES, 0)
        for job in self.jobs:
            counts[job.state] += 1
        return counts

    @property
    def live(self) -> tuple[SeriesJob, ...]:
        """The jobs still queued or running."""
        return tuple(j for j in self.jobs if j.state in ("queued", "running"))


def _record_of(output_dir: str | Path, work_dir: str | Path | None) -> tuple[Path, Path]:
    """The work folder of the run into ``output_dir`` and its job record (which must exist)."""
    from kwneuro_pydra.pydra import job_record

    output_dir = Path(output_dir).absolute()
    if work_dir is None:
        work_dir = recorded_work_dir(output_dir) or output_dir / ".kwneuro-cache"
    work = Path(work_dir).absolute()
    record = job_record(work)
    if not record.is_file():
        raise AppError(
            f"no Slurm job recorded in {record}: no run into {output_dir} submitted any "
            "(with --worker slurm); 'status BIDS_DIR OUTPUT_DIR' shows what the cache holds"
        )
    return work, record


def job_status(output_dir: str | Path, *, work_dir: str | Path | None = None) -> JobStatus:
    """Each series' last Slurm job in the runs into ``output_dir``, as it is now.

    Slurm is asked once for all the jobs (one ``squeue``, and one ``sacct`` for those that
    left the queue); the cache says whether a job's steps failed (a completed job whose step
    raised is ``failed``) and, for a job Slurm no longer knows, whether its steps are cached
    (``completed``) or failed.

    Args:
        output_dir: The output folder of the runs.
        work_dir: The cache; default: the one the last run into ``output_dir`` recorded,
            else ``OUTPUT_DIR/.kwneuro-cache``.

    Returns:
        The `JobStatus`.

    Raises:
        AppError: No run into ``output_dir`` recorded a Slurm job, or Slurm's commands
            cannot be run.
    """
    from kwneuro_pydra.pydra import FINAL_STATE_MEANINGS, failure_recorded, recorded_states

    work, record = _record_of(output_dir, work_dir)
    try:
        states = recorded_states(record)
    except OSError as error:
        raise AppError(f"cannot ask Slurm about the jobs of {record}: {error}") from None
    steps = {s.__name__ for s in pipeline().STEPS}
    jobs = []
    for name, (job_id, step, slurm) in states.items():
        cache = work / name
        if failure_recorded(cache) and slurm not in _QUEUED and slurm != "RUNNING":
            state = "failed"
        elif slurm in _QUEUED:
            state = "queued"
        elif slurm == "COMPLETED":
            state = "completed"
        elif slurm == "CANCELLED":
            state = "cancelled"
        elif slurm in FINAL_STATE_MEANINGS:
            state = "failed"
        elif slurm != "UNKNOWN":
            state = "running"  # RUNNING, COMPLETING, CONFIGURING, SUSPENDED ...
        elif cache.is_dir() and steps <= set(Cache(cache).steps()):
            state = "completed"  # accounting forgot the job; the cache holds every step
        else:
            state = "unknown"
        jobs.append(SeriesJob(name, job_id, step, slurm, state))
    return JobStatus(work, record, tuple(jobs))


def cancel_jobs(
    output_dir: str | Path, *, work_dir: str | Path | None = None
) -> tuple[SeriesJob, ...]:
    """Cancel the Slurm jobs of the runs into ``output_dir`` still queued or running.

    One ``scancel`` for all of them (see `kwneuro_pydra.pydra.cancel_recorded`); the
    cache keeps every step they finished, and a later run submits the rest again.

    Args:
        output_dir: The output folder of the runs.
        work_dir: The cache (default as for `job_status`).

    Returns:
        The jobs cancelled, in the order they were recorded.

    Raises:
        AppError: No run into ``output_dir`` recorded a Slurm job, or Slurm's commands
            cannot be run.
    """
    from kwneuro_pydra.pydra import cancel_recorded, recorded_jobs

    _, record = _record_of(output_dir, work_dir)
    try:
        cancelled = set(cancel_recorded(record))
    except OSError as error:
        raise AppError(f"cannot ask Slurm about the jobs of {record}: {error}") from None
    return tuple(
        SeriesJob(name, job_id, step, "CANCELLED", "cancelled")
        for name, (job_id, step) in recorded_jobs(record).items()
        if job_id in cancelled
    )

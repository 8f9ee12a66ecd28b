"""Our Slurm worker: per-step requests, a job per node or per subject, failures said plainly.

It extends Pydra's ``slurm`` worker and keeps Pydra's job pickles, result files and
scheduling; it submits and watches each job itself (see `_workarounds` for why):

- each job's sbatch options are the user's ``sbatch_args``, ``--no-requeue`` unless
  ``--requeue`` is given, then the step's `Request` (per subject: all steps' requests
  combined, see `for_subject`);
- with a job per subject, the subjects ready together are submitted as one job array (one
  sbatch call; an array task per subject, watched as its own job);
- all the jobs followed are looked at together: one ``squeue`` a look, one ``sacct`` for the
  jobs that left the queue; the delay between looks doubles while nothing changes;
- each job submitted is recorded (``record``) first thing; a later run follows a job of the
  record still queued or running instead of submitting it again;
- a job that ends other than COMPLETED is recorded per subject as a `SchedulerError` naming
  the job id, Slurm's state and what it means, and is never resubmitted or requeued;
- a job pending longer than ``pending_timeout`` seconds for a reason waiting does not
  resolve (`stuck`) is cancelled and reported with Slurm's reason;
- the job's log records (the ``kwneuro_pydra`` logger), its stderr and the scheduler's
  events go to ``<log_dir>/<subject>.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any, ClassVar

import attrs
from pydra.engine.job import save  # type: ignore[import-untyped]
from pydra.workers import base, slurm  # type: ignore[import-untyped]

from kwneuro_pydra._files import open_shared, read_regular, write_atomic
from kwneuro_pydra.pydra._jobs import RUN_PREFIX
from kwneuro_pydra.pydra._resources import Request, for_subject, refuse_owned, requests
from kwneuro_pydra.pydra._workarounds import sbatch_args

__all__ = [
    "FINAL_STATE_MEANINGS",
    "JOB_NAME",
    "STUCK_REASONS",
    "SchedulerError",
    "SlurmWorker",
    "cancel_recorded",
    "compact_record",
    "read_record",
    "recorded_jobs",
    "recorded_runs",
    "recorded_states",
    "stuck",
]

FINAL_STATE_MEANINGS = {
    "CANCELLED": "the job was cancelled (scancel, or by an administrator)",
    "TIMEOUT": "the job reached its time limit: raise 'time' for this step",
    "OUT_OF_MEMORY": "the job ran out of memory: raise 'mem' for this step",
    "NODE_FAIL": "the node running the job failed",
    "BOOT_FAIL": "the node for the job failed to boot",
    "PREEMPTED": "the job was preempted by another job",
    "DEADLINE": "the job could not finish before its deadline",
    "REVOKED": "the job was revoked (federation)",
    "FAILED": "the job's command exited with an error",
}
"""What each final Slurm state other than COMPLETED means, for the messages."""
_FINAL = frozenset(FINAL_STATE_MEANINGS) | {"COMPLETED"}
_MEMORY_KILL = re.compile(r"exceeded (job )?memory limit", re.IGNORECASE)
"""What slurmstepd writes to a job's stderr when jobacct_gather's OverMemoryKill ends it
(Slurm then records FAILED or CANCELLED, where the cgroup plugin records OUT_OF_MEMORY)."""
_ARRAY_WINDOW = 0.1
"""Seconds the first subject ready waits for the others to join its job array (Pydra hands
all the subjects of a run to the worker at once)."""
_UNKNOWN_POLLS = 5
"""Consecutive looks at a job that neither the controller nor accounting knows before giving
up on it."""
THREAD_LIMITS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
)
"""Thread counts a job sets to its ``--cpus-per-task`` (1 without), unless already set."""
JOB_NAME = "kwneuro-pydra:"
"""The start of our jobs' names: ``kwneuro-pydra:sub-01`` (a job per subject),
``kwneuro-pydra:sub-01:brain_mask`` (a job per node), ``kwneuro-pydra:sub-01..sub-20`` (a job
array of several subjects)."""
STUCK_REASONS = frozenset(
    {
        "PartitionDown",
        "PartitionInactive",
        "PartitionConfig",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "BadConstraints",
        "DependencyNeverSatisfied",
        "InvalidAccount",
        "InvalidQOS",
        "JobHeldAdmin",
        "FrontEndDown",
        "ReqNodeNotAvail",
        "NodeDown",
    }
)
"""Slurm's reasons for a pending job that waiting does not resolve (with the association and
QOS limits, see `stuck`); ``pending_timeout`` counts only time pending for these."""
_LIMIT = re.compile(r"(Assoc|QOS)\w*Limit\Z")
_NODE_REASONS = frozenset({"ReqNodeNotAvail", "NodeDown"})
"""Stuck reasons that a node coming back resolves: ``pending_timeout`` starts counting only
after ``node_grace``."""


def stuck(reason: str) -> bool:
    """True when a job pending for Slurm's ``reason`` will not start by waiting alone.

    ``Resources``, ``Priority``, ``Dependency``, ``BeginTime``, ``JobArrayTaskLimit`` (the
    ``%N`` throttle) and any other reason not in `STUCK_REASONS` resolve as other jobs end;
    an association's or QOS's limit (``AssocGrpCpuLimit``, ``QOSMaxWallDurationPerJobLimit``
    ...) is the administrators' quota, which this run's waiting does not lift.
    """
    first = reason.split(",")[0].strip()
    return first in STUCK_REASONS or bool(_LIMIT.match(first))


def _record_text(path: str | os.PathLike[str]) -> str:
    """The text of a job record ("" when there is none yet), read as a regular file only.

    Raises:
        NotRegularFileError: The record is a FIFO, a device or a folder (named; reading a FIFO
            planted in a shared cache would block for good).
    """
    try:
        return read_regular(Path(path)).decode()
    except FileNotFoundError:
        return ""


def read_record(path: str | os.PathLike[str] | None) -> dict[str, tuple[str, Path]]:
    """The jobs a worker's ``record`` file lists: Pydra checksum -> (job id, stderr file);
    the last line for a checksum wins, a truncated last line is ignored.
    """
    if path is None:
        return {}
    found = {}
    for line in _record_text(path).splitlines(keepends=True):
        fields = line.rstrip("\n").split("\t")
        if line.endswith("\n") and len(fields) == 5:
            found[fields[0]] = (fields[1], Path(fields[4]))
    return found


def recorded_runs(record: str | os.PathLike[str] | None, jobs: Path) -> set[Path]:
    """The run directories of the job cache ``jobs`` that the jobs of ``record`` ran in.

    A job submitted by an earlier run writes its result into that run's directory; kept,
    a rerun that follows the job (or finds it completed) collects the result from there.

    Args:
        record: A worker's record file (`SlurmWorker.record`), or None.
        jobs: The job cache whose run directories hold the jobs' scripts and results.

    Returns:
        The directories (children of ``jobs``).
    """
    runs: set[Path] = set()
    for _, errors in read_record(record).values():
        runs.update(p for p in errors.parents if p.parent == jobs)
    return runs


def _collect(job: Any, errors: Path) -> bool:
    """Bring the result of ``job`` that an earlier run's Slurm job wrote (into that run's
    job cache, which holds ``errors``) into this run's; True when this run has it.
    """
    new = Path(job.cache_dir)
    if (new / "_result.pklz").exists():
        return True
    root = Path(job.cache_root)
    earlier = next((p for p in errors.parents if p.parent == root.parent), None)
    if earlier is None or earlier == root:
        return False
    old = earlier / new.relative_to(root)
    if not (old / "_result.pklz").exists():
        return False
    shutil.copytree(old, new, symlinks=True, dirs_exist_ok=True)
    return True


class _Unanswered(LookupError):
    """The controller did not answer about a job (down, restarting, overloaded)."""


_Outcome = tuple[str, str] | LookupError
"""A job's state and Slurm's reason, or why nobody knows the job (`_Unanswered`,
`LookupError`)."""


def _names(steps: Iterable[str]) -> tuple[str, ...]:
    return tuple(steps)


def _as_requests(resources: Any) -> dict[str, Request]:
    """Validate a user's resources mapping (its step names are checked at submission)."""
    if resources and all(isinstance(r, Request) for r in resources.values()):
        return dict(resources)
    return requests(resources, resources or ())


ALL_STEPS = "all steps"
"""How logs, job names and the job record name the job of a whole subject (its steps)."""


class SchedulerError(RuntimeError):
    """A job the scheduler did not run to completion (or would not run at all).

    Attributes:
        job_id: Slurm's job id, or None when no job was submitted.
        state: Slurm's state (``TIMEOUT``, ``OUT_OF_MEMORY``, ``CANCELLED`` ...), ``PENDING``
            for a job cancelled after ``pending_timeout``, ``UNKNOWN`` when neither the
            controller nor accounting knows the job (or the controller stopped answering),
            ``SBATCH`` when sbatch refused it, ``DETACHED`` for a job left to run.
        step: The step the job ran, or None for a job per subject (all its steps).
    """

    def __init__(self, message: str, *, job_id: str | None, state: str, step: str | None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.state = state
        self.step = step

    def __reduce__(self) -> Any:
        return _rebuild, (str(self), self.job_id, self.state, self.step)


def _rebuild(message: str, job_id: str | None, state: str, step: str | None) -> SchedulerError:
    return SchedulerError(message, job_id=job_id, state=state, step=step)


@attrs.define
class SlurmWorker(slurm.SlurmWorker):  # type: ignore[misc]
    """Pydra's Slurm worker with per-step requests, job granularity and plain failures.

    Pass an instance as ``Submitter(worker=...)`` to run `to_workflow`/`to_task` classes
    yourself; `run_subjects` builds one from its options.

    Attributes:
        sbatch_args: sbatch options for every job (those the worker sets itself are
            refused, see `refuse_owned`).
        poll_delay: Seconds between two looks at the queue while something changes (a job
            submitted, started, ended, its reason changed); the delay doubles while nothing
            does, up to ``max_poll_delay``. Each look is one ``squeue`` for all the jobs
            followed, and one ``sacct`` for those that left the queue.
        max_poll_delay: The longest delay between two looks at the queue (default: 60 s,
            or ``poll_delay`` if longer).
        resources: What each step's jobs ask for, by step name: ``{"estimate_dti":
            {"mem": "2G", "cpus": 2, "time": "00:30:00"}}`` (see `run_subjects`); kept
            as a `Request` per step.
        per_subject: One job per subject workflow (its steps run inside it, in process)
            instead of one job per node; the subjects ready together are submitted as one
            job array (at most ``MaxArraySize`` tasks an array).
        steps: The names of the steps a subject's workflow runs, for the request of a job
            per subject (`for_subject`; default: the steps ``resources`` names).
        max_running: At most this many of the run's jobs at once (a job array's ``%N``;
            with a job per node, jobs beyond it wait in the submitter); None: no limit.
        pending_timeout: Seconds a job may stay pending for a reason waiting cannot resolve
            (`stuck`) before it is cancelled; None: no limit.
        node_grace: Seconds a job may pend on ``ReqNodeNotAvail`` or ``NodeDown`` (a node
            rebooting, drained for maintenance) before ``pending_timeout`` starts counting.
        controller_timeout: Seconds the controller may go without answering (restarting,
            overloaded) while accounting does not know a job either, before the job is
            given up as ``UNKNOWN``.
        log_dir: Directory of the per-subject log files; None: no log files.
        record: File recording the jobs submitted (a line per job: Pydra's checksum of
            what it runs, the job id, the subject, the step); a later worker given the same
            file follows a job still queued or running instead of submitting it again.
            None: no record.
        follow: Follow (or collect) the record's jobs of an earlier run; False for a run
            that forces steps, whose jobs compute anew.
        detach: Submit (or find queued from the record) each job and leave it to run: its
            subject is reported ``DETACHED``; a later run with the same ``record`` follows the
            jobs still queued or running and collects what they cached. Needs
            ``per_subject`` (a job per node would leave the later steps unsubmitted).
        directory: Working directory of the jobs (default: the current directory when the
            worker is made; Pydra changes directory while it runs workflows, and a job
            imports the steps from there as ``python -m`` does).
        failures: `SchedulerError` per subject (the subject cache directory's name) of the
            jobs that did not complete, filled while jobs run.
        job_ids: Ids of the jobs submitted, in order (not those followed from a record).
        queries: Scheduler commands run to follow jobs (``squeue`` and ``sacct`` calls).
        polls: Looks at the queue (each one ``squeue``, and a ``sacct`` when jobs left it).
    """

    _plugin_name: ClassVar[str] = "slurm"

    resources: dict[str, Request] = attrs.field(factory=dict, converter=_as_requests)
    per_subject: bool = False
    steps: tuple[str, ...] = attrs.field(default=(), converter=_names)
    max_running: int | None = None
    max_poll_delay: float | None = None
    pending_timeout: float | None = None
    node_grace: float = 600.0
    controller_timeout: float = 600.0
    log_dir: str | None = None
    record: str | None = None
    follow: bool = True
    detach: bool = False
    directory: str = attrs.field(factory=os.getcwd)
    failures: dict[str, SchedulerError] = attrs.field(factory=dict)
    job_ids: list[str] = attrs.field(factory=list)
    queries: int = 0
    polls: int = 0
    _array: list[tuple[Path, str, asyncio.Future[tuple[str | None, str, Path]]]] = attrs.field(
        factory=list, init=False
    )
    _records: dict[str, tuple[str, Path]] | None = attrs.field(default=None, init=False)
    _followed: set[str] = attrs.field(factory=set, init=False)
    _final: set[str] = attrs.field(factory=set, init=False)
    _seen: dict[str, _Outcome] = attrs.field(factory=dict, init=False)
    _polled: asyncio.Future[dict[str, _Outcome]] | None = attrs.field(default=None, init=False)
    _poller: asyncio.Task[None] | None = attrs.field(default=None, init=False)
    _news: asyncio.Event | None = attrs.field(default=None, init=False)
    _slots: asyncio.Semaphore | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        refuse_owned(sbatch_args(self.sbatch_args), "sbatch_args")
        if self.max_running is not None and not (
            isinstance(self.max_running, int) and self.max_running > 0
        ):
            raise ValueError(f"max_running={self.max_running!r}: expected a positive integer")
        if self.detach and not self.per_subject:
            raise ValueError(
                "detach needs a job per subject (granularity='subject'): with a job per node "
                "the steps after the first could not be submitted"
            )
        if self.max_poll_delay is None:
            self.max_poll_delay = max(60.0, self.poll_delay)
        if not self.max_poll_delay >= self.poll_delay > 0:
            raise ValueError(
                f"poll_delay={self.poll_delay!r}, max_poll_delay={self.max_poll_delay!r}: "
                "expected 0 < poll_delay <= max_poll_delay"
            )

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = super().__getstate__()
        state.update(
            failures={},
            job_ids=[],
            _array=[],
            _followed=set(),
            _final=set(),
            _seen={},
            _polled=None,
            _poller=None,
            _news=None,
            _slots=None,
            _records=None,
        )
        return state

    async def submit(self, job: Any, rerun: bool = False) -> Any:
        """Run a subject's workflow as one job when ``per_subject``; else as Pydra does."""
        if self.per_subject and job.is_async and _subject_dir(job) is not None:
            return await self.run(job, rerun=rerun)
        return await super().submit(job, rerun=rerun)

    async def run(self, job: Any, rerun: bool = False) -> bool:
        """Submit one job (a node, or a whole subject), wait for it, and say how it ended.

        A job the record says an earlier run submitted, and still queued or running, is
        followed instead of submitted again.

        Raises:
            SchedulerError: sbatch refused the job, it pended too long, or it ended
                other than COMPLETED (also recorded in `failures`).
        """
        in_array = self.per_subject and job.is_async
        if self.max_running is not None and not in_array:
            if self._slots is None:
                self._slots = asyncio.Semaphore(self.max_running)
            async with self._slots:
                return await self._run(job, rerun)
        return await self._run(job, rerun)

    async def _run(self, job: Any, rerun: bool) -> bool:
        subject_dir = _subject_dir(job)
        subject = Path(subject_dir).name if subject_dir else job.name
        step = ALL_STEPS if job.is_async else type(job.task).__name__
        if job.is_async:
            request = for_subject(self.resources, self.steps)
        else:
            request = self.resources.get(step, Request())
        log = self._log_file(subject)
        earlier = None if rerun else await self._earlier(job)  # rerun: compute anew
        if earlier is not None:
            job_id, errors = earlier
            _append(log, f"slurm job {job_id}: {step} followed (submitted by an earlier run)")
        else:
            job_id, errors = await self._submit_job(job, rerun, subject, step, request, log)
        if self.detach:
            message = (
                f"Slurm job {job_id} ({step} for {subject}) is left to run (detached): run "
                "again to collect the results"
            )
            raise self._failed(subject, step, job_id, "DETACHED", message, log)
        state = await self._wait(job_id, subject, step, log)
        tail = _tail(errors)
        if state in ("FAILED", "CANCELLED") and _MEMORY_KILL.search(tail):
            state = "OUT_OF_MEMORY"  # killed by OverMemoryKill, without cgroups
        _append(
            log, f"slurm job {job_id}: {step} ended {state}" + f"; stderr:\n{tail}" * bool(tail)
        )
        if state == "COMPLETED":
            if earlier is not None:  # it wrote its result into the earlier run's job cache
                _collect(job, errors)
            _tidy(Path(job.cache_root) / "slurm_scripts" / job.checksum, errors)
            return True
        meaning = FINAL_STATE_MEANINGS[state]
        message = f"Slurm job {job_id} ({step} for {subject}) ended {state}: {meaning}"
        if state == "FAILED" and tail:
            message += f"; its last error line: {tail.splitlines()[-1]}"
        raise self._failed(subject, step, job_id, state, message, log)

    async def _submit_job(
        self, job: Any, rerun: bool, subject: str, step: str, request: Request, log: Path | None
    ) -> tuple[str, Path]:
        """Write the job's script and submit it (alone, or in the subjects' array)."""
        script_dir = Path(job.cache_root) / "slurm_scripts" / job.checksum
        script_dir.mkdir(parents=True, exist_ok=True)
        pickled = script_dir / "_job.pklz"
        save(script_dir, job=job)
        script = script_dir / "job.sh"
        command = [sys.executable, "-m", "kwneuro_pydra.pydra._job", str(pickled)]
        command += [str(int(rerun)), str(log or ""), step]
        config = shlex.quote(str(Path(job.cache_root) / "config" / "matplotlib"))
        threads = "".join(f'export {name}="${{{name}:-$n}}"\n' for name in THREAD_LIMITS)
        script.write_text(
            f"#!/bin/sh\nexport MPLCONFIGDIR={config}\n"
            f'n="${{SLURM_CPUS_PER_TASK:-1}}"\n{threads}exec {shlex.join(command)}\n'
        )
        options = [
            f"--chdir={self.directory}",
            *sbatch_args(self.sbatch_args),
            *request.sbatch_args(),
        ]
        if self.per_subject and job.is_async:
            job_id, said, errors = await self._in_array(script, subject, options)
        else:
            job_id, said = await _sbatch(
                f"--job-name={JOB_NAME}{subject}:{step}",
                f"--output={script_dir / 'slurm-%j.out'}",
                f"--error={script_dir / 'slurm-%j.err'}",
                *options,
                str(script),
            )
            errors = script_dir / f"slurm-{job_id}.err"
        if job_id is None:
            message = f"sbatch refused the job of {step} for {subject}: {said}"
            raise self._failed(subject, step, None, "SBATCH", message, log)
        self.job_ids.append(job_id)
        if self.record is not None:  # first, lest the submitter be killed now
            line = f"{job.checksum}\t{job_id}\t{subject}\t{step}\t{errors}\n"
            _append_line(Path(self.record), line)
        _append(log, f"slurm job {job_id}: {step} submitted ({' '.join(options[1:])})")
        return job_id, errors

    async def _in_array(
        self, script: Path, subject: str, options: list[str]
    ) -> tuple[str | None, str, Path]:
        """Submit ``script`` as a task of the job array of the subjects ready now.

        Returns:
            The array task's job id (``<array>_<index>``; None if sbatch refused the
            array), what sbatch said, and the task's stderr file.
        """
        task: asyncio.Future[tuple[str | None, str, Path]]
        task = asyncio.get_running_loop().create_future()
        self._array.append((script, subject, task))
        if len(self._array) == 1:  # the first ready submits the array once the others joined
            await asyncio.sleep(_ARRAY_WINDOW)
            tasks, self._array = self._array, []
            try:
                await _submit_arrays(tasks, options, self.max_running)
            except Exception as error:  # e.g. the script cannot be written: every task fails
                for _, _, waiting in tasks:
                    if not waiting.done():
                        waiting.set_exception(error)
        return await task

    async def _wait(self, job_id: str, subject: str, step: str, log: Path | None) -> str:
        """Follow the job until it reaches a final state; cancel it if it is stuck too long."""
        unknown, silent_since, stuck_since = 0, None, None
        try:
            while True:
                try:
                    state, reason = await self._look(job_id)
                    unknown, silent_since = 0, None
                except _Unanswered as said:
                    silent_since = silent_since or time.monotonic()
                    silent = time.monotonic() - silent_since
                    if silent < self.controller_timeout:
                        continue
                    message = (
                        f"Slurm job {job_id} ({step} for {subject}): the controller has not "
                        f"answered for {silent:.0f} s (squeue said: {said}) and accounting has "
                        "no record of the job; its outcome is unknown. Check slurmctld "
                        "(scontrol ping), or raise controller_timeout"
                    )
                    raise self._failed(subject, step, job_id, "UNKNOWN", message, log) from None
                except LookupError as said:
                    unknown += 1
                    if unknown < _UNKNOWN_POLLS:
                        continue
                    message = (
                        f"Slurm job {job_id} ({step} for {subject}): the controller no longer "
                        "knows it and accounting has no record of it (accounting unavailable? "
                        f"sacct said: {said}); its outcome is unknown. Start slurmdbd (Slurm "
                        "accounting) or raise MinJobAge in slurm.conf"
                    )
                    raise self._failed(subject, step, job_id, "UNKNOWN", message, log) from None
                if state in _FINAL:
                    self._final.add(job_id)
                    return state
                now = time.monotonic()
                if state != "PENDING" or not stuck(reason):
                    stuck_since = None
                    continue
                if stuck_since is None:
                    grace = self.node_grace if reason.split(",")[0] in _NODE_REASONS else 0
                    stuck_since = now + grace
                limit = self.pending_timeout
                if limit is not None and now - stuck_since > limit:
                    await self._cancel([job_id])
                    message = (
                        f"Slurm job {job_id} ({step} for {subject}) was pending for "
                        f"{now - stuck_since:.0f} s for a reason waiting does not resolve "
                        f"(Slurm's reason: {reason}); cancelled it. Check what the job asks "
                        "for (resources, sbatch_args) against the cluster (sinfo -N -l, "
                        "sacctmgr show assoc), or raise pending_timeout"
                    )
                    raise self._failed(subject, step, job_id, "PENDING", message, log)
        finally:
            self._followed.discard(job_id)

    async def _look(self, job_id: str) -> tuple[str, str]:
        """The job's state and reason at the next look at the queue (all jobs, one query).

        Raises:
            _Unanswered: The controller did not answer, and accounting does not know the job.
            LookupError: Neither the controller nor accounting knows the job.
        """
        if job_id not in self._followed:
            self._followed.add(job_id)
            if self._news is not None:
                self._news.set()
        if self._poller is None or self._poller.done():
            self._news = asyncio.Event()
            self._polled = asyncio.get_running_loop().create_future()
            self._poller = asyncio.create_task(self._poll(), name="kwneuro-pydra-slurm-poll")
        while True:
            assert self._polled is not None
            found = await asyncio.shield(self._polled)
            if job_id in found:
                outcome = found[job_id]
                if isinstance(outcome, LookupError):
                    raise outcome
                return outcome

    async def _poll(self) -> None:
        """Look at the queue for all the jobs followed, until none is; back off while
        nothing changes.
        """
        assert self.max_poll_delay is not None  # set when the worker is made
        delay, longest = self.poll_delay, await _longest_delay(self.max_poll_delay)
        assert self._news is not None
        while self._followed:
            try:  # a newly followed job brings the next look forward
                await asyncio.wait_for(self._news.wait(), timeout=delay)
                delay = self.poll_delay
                await asyncio.sleep(delay)  # gather the jobs submitted together
            except TimeoutError:
                pass
            self._news.clear()
            if not self._followed:
                break
            polled, self._polled = self._polled, asyncio.get_running_loop().create_future()
            assert polled is not None
            try:
                found, queries = await _states(sorted(self._followed))
            except Exception as error:
                polled.set_exception(error)
                raise
            self.polls += 1
            self.queries += queries
            changed = any(self._seen.get(job) != outcome for job, outcome in found.items())
            self._seen.update(found)
            polled.set_result(found)
            delay = self.poll_delay if changed else min(delay * 2, longest)

    async def _earlier(self, job: Any) -> tuple[str, Path] | None:
        """The job (its id and stderr file) an earlier run submitted for ``job``, if it is
        still queued or running (and is the user's), or completed with its result in the job
        cache (it ended after this run looked at the subject's cache).
        """
        if not self.follow:
            return None
        if self._records is None:
            self._records = read_record(self.record)
        found = self._records.get(job.checksum)
        if found is None or found[0] in self.job_ids:
            return None
        try:
            state, _ = await self._look(found[0])
        except LookupError:
            return None
        finally:
            self._followed.discard(found[0])
        if state == "COMPLETED" and _collect(job, found[1]):
            return found
        return None if state in _FINAL else found

    def close(self) -> None:
        """Cancel the tasks left on Pydra's loop (an interrupted run) before Pydra closes it.

        Without this, each waiting job's task is destroyed pending, and asyncio says so.
        """
        loop = getattr(self, "loop", None)
        if loop is not None and not loop.is_closed() and not loop.is_running():
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        super().close()

    def cancel_submitted(self) -> list[str]:
        """Cancel the jobs this worker submitted that have not ended (one ``scancel``).

        Returns:
            The ids of the jobs cancelled.
        """
        live = [job for job in self.job_ids if job not in self._final]
        if live:
            subprocess.run(["scancel", *live], capture_output=True, check=False)
        return live

    async def _cancel(self, job_ids: list[str]) -> None:
        await base.read_and_display_async("scancel", *job_ids, hide_display=True)

    def _failed(
        self,
        subject: str,
        step: str,
        job_id: str | None,
        state: str,
        message: str,
        log: Path | None,
    ) -> SchedulerError:
        error = SchedulerError(
            message, job_id=job_id, state=state, step=None if step == ALL_STEPS else step
        )
        self.failures.setdefault(subject, error)
        _append(log, message)
        return error

    def _log_file(self, subject: str) -> Path | None:
        if self.log_dir is None:
            return None
        log = Path(self.log_dir) / f"{subject}.log"
        _append_line(log, "")  # made, or refused if a link, before anything is submitted
        return log


async def _sbatch(*args: str) -> tuple[str | None, str]:
    """Run sbatch; return the job id (None when sbatch refused the job) and what it said."""
    rc, out, err = await base.read_and_display_async("sbatch", *args, hide_display=True)
    found = re.search(r"\d+", out)
    return (found.group() if found and not rc else None), err.strip() or out.strip()


async def _config() -> dict[str, str]:
    """The controller's configuration (``scontrol show config``; empty if it does not answer)."""
    rc, out, _ = await base.read_and_display_async("scontrol", "show", "config", hide_display=True)
    pairs = (line.partition("=")[::2] for line in out.splitlines() if rc == 0)
    return {key.strip(): value.strip() for key, value in pairs}


async def _longest_delay(wanted: float) -> float:
    """``wanted``, or less without accounting: a job's outcome is then known only while the
    controller remembers the job, ``MinJobAge`` seconds after it ends; look twice as often.
    """
    config = await _config()
    if config.get("AccountingStorageType", "accounting_storage/none") != "accounting_storage/none":
        return wanted
    found = re.match(r"(\d+) sec", config.get("MinJobAge", ""))
    return min(wanted, max(int(found.group(1)) / 2, 0.1)) if found else wanted


async def _submit_arrays(
    tasks: list[tuple[Path, str, asyncio.Future[tuple[str | None, str, Path]]]],
    options: list[str],
    max_running: int | None,
) -> None:
    """Submit each subject's ``job.sh`` as a task of a job array; resolve the tasks' futures.

    An array holds at most the cluster's ``MaxArraySize`` tasks: more make several arrays,
    each running at most ``max_running`` tasks at once (``%N``). Its script, output files
    and ``tasks.tsv`` (task index, subject, job script) go next to the first subject's job
    directory.
    """
    found = (await _config()).get("MaxArraySize", "")
    size = max(1, int(found)) if found.isdigit() else 1001  # Slurm's default
    for start in range(0, len(tasks), size):
        chunk = tasks[start : start + size]
        where = chunk[0][0].parent.parent / f"array-{chunk[0][0].parent.name}"
        where.mkdir(parents=True, exist_ok=True)
        cases = "".join(
            f"{index}) exec /bin/sh {shlex.quote(str(script))} ;;\n"
            for index, (script, _, _) in enumerate(chunk)
        )
        array = where / "array.sh"
        array.write_text(f'#!/bin/sh\ncase "$SLURM_ARRAY_TASK_ID" in\n{cases}esac\nexit 1\n')
        (where / "tasks.tsv").write_text(
            "".join(
                f"{index}\t{subject}\t{script}\n"
                for index, (script, subject, _) in enumerate(chunk)
            )
        )
        first, last = chunk[0][1], chunk[-1][1]
        throttle = f"%{max_running}" if max_running is not None else ""
        array_id, said = await _sbatch(
            f"--job-name={JOB_NAME}{first}" + f"..{last}" * (len(chunk) > 1),
            f"--array=0-{len(chunk) - 1}{throttle}",
            f"--output={where / 'slurm-%A_%a.out'}",
            f"--error={where / 'slurm-%A_%a.err'}",
            *options,
            str(array),
        )
        for index, (_, _, task) in enumerate(chunk):
            job_id = None if array_id is None else f"{array_id}_{index}"
            task.set_result((job_id, said, where / f"slurm-{array_id}_{index}.err"))


async def _states(job_ids: list[str]) -> tuple[dict[str, _Outcome], int]:
    """Each job's state and Slurm's reason: one ``squeue`` for all, one ``sacct`` for those
    that left the queue.

    Array tasks (``<array>_<index>``) are asked for by their array, one id per array.

    Returns:
        The outcome by job id, and the number of commands run (1 or 2).
    """
    asked = sorted({job.split("_")[0] for job in job_ids})
    rc, out, said = await base.read_and_display_async(
        "squeue",
        "--me",
        "-h",
        "-r",
        "-t",
        "all",
        "-j",
        ",".join(asked),
        "-o",
        "%i|%T|%r",
        hide_display=True,
    )
    found: dict[str, _Outcome] = {}
    if rc == 0:
        for line in out.splitlines():
            job, _, rest = line.strip().partition("|")
            state, _, reason = rest.partition("|")
            found[job] = (state, reason)
    answered = rc == 0 or "Invalid job id" in said
    left = [job for job in job_ids if job not in found]
    queries = 1 + bool(left)
    if left:
        rc, out, err = await base.read_and_display_async(
            "sacct",
            "-n",
            "-X",
            "-P",
            "-j",
            ",".join(sorted({j.split("_")[0] for j in left})),
            "-o",
            "JobID,State",
            hide_display=True,
        )
        rows = dict(line.strip().partition("|")[::2] for line in out.splitlines() if rc == 0)
        for job in left:
            state = rows.get(job) or _array_row(job, rows)
            if state:
                found[job] = (state.split()[0], "")
        for job in left:
            if job not in found:
                why = _Unanswered(" ".join(said.split()) or "nothing") if not answered else None
                found[job] = why or LookupError(err.strip() or "nothing")
    return {job: found[job] for job in job_ids}, queries


def recorded_jobs(record: str | os.PathLike[str]) -> dict[str, tuple[str, str]]:
    """The last job a worker's ``record`` lists for each subject (no Slurm command).

    Args:
        record: The record file (`SlurmWorker.record`); missing: no job.

    Returns:
        Subject -> (job id, step), in the order the subjects were first recorded.
    """
    last: dict[str, tuple[str, str]] = {}
    for line in _record_text(record).splitlines():
        fields = line.split("\t")
        if len(fields) == 5:
            last[fields[2]] = (fields[1], fields[3])
    return last


def recorded_states(record: str | os.PathLike[str]) -> dict[str, tuple[str, str, str]]:
    """What the jobs of a worker's ``record`` are doing now (one ``squeue``, one ``sacct``).

    Args:
        record: The record file (``<cache_root>/.logs/slurm-jobs.tsv`` for `run_subjects`).

    Returns:
        Subject -> (job id, step, Slurm's state or ``UNKNOWN``) of the last job recorded for
        each subject.
    """
    last = recorded_jobs(record)
    if not last:
        return {}
    found, _ = asyncio.run(_states(sorted({job for job, _ in last.values()})))
    states = {job: "UNKNOWN" if isinstance(o, LookupError) else o[0] for job, o in found.items()}
    return {subject: (job, step, states[job]) for subject, (job, step) in last.items()}


def cancel_recorded(record: str | os.PathLike[str]) -> list[str]:
    """Cancel the jobs of a worker's ``record`` still queued or running (one ``scancel``).

    Returns:
        The ids of the jobs cancelled.
    """
    states = recorded_states(record).values()
    live = sorted(job for job, _, state in states if state not in _FINAL | {"UNKNOWN"})
    if live:
        subprocess.run(["scancel", *live], capture_output=True, check=False)
    return live


def _array_row(job: str, rows: dict[str, str]) -> str | None:
    """The state sacct records for array task ``job`` as part of its array: Slurm 22.05
    keeps no record of its own for a task cancelled before it started, only the array's
    (``<array>_[0-3]``, or ``<array>`` when its tasks were cancelled one by one).
    """
    array, _, index = job.partition("_")
    if not index:
        return None
    for name, state in rows.items():
        head, _, spec = name.partition("_[")
        if head == array and spec and _in_range(int(index), spec.rstrip("]")):
            return state
    return rows.get(array)


def _in_range(index: int, spec: str) -> bool:
    """True when ``index`` is in an array range such as ``0-3,7,9-11%2``."""
    for part in spec.split("%")[0].split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and int(low) <= index <= int(high or low):
            return True
    return False


def _subject_dir(job: Any) -> str | None:
    """The ``cache_dir`` input of a kwneuro node or subject workflow, else None."""
    value = getattr(job.task, "cache_dir", None)
    return value if isinstance(value, str) else None


def _tidy(script_dir: Path, errors: Path) -> None:
    """Remove what a completed job leaves in the job cache: its script directory, its output
    files, and the directory of its job array once every task of it completed.

    A failed job's files stay (until its step completes in a later run): the job cache
    holds only what may still be read.
    """
    shutil.rmtree(script_dir, ignore_errors=True)
    for leftover in (errors, errors.with_suffix(".out")):
        leftover.unlink(missing_ok=True)
    tasks = errors.parent / "tasks.tsv"
    try:
        scripts = [line.split("\t")[-1] for line in tasks.read_text().splitlines()]
    except OSError:
        return  # not a job array
    if not any(Path(script).exists() for script in scripts):  # every task completed
        shutil.rmtree(errors.parent, ignore_errors=True)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _append(log: Path | None, message: str) -> None:
    """Append a line to a subject's log (one write: whole lines from concurrent writers)."""
    if log is not None:
        _append_line(log, f"{time.strftime('%Y-%m-%d %H:%M:%S')} [scheduler] {message}\n")


def _append_line(path: Path, line: str) -> None:
    """Append ``line`` to ``path`` in one write (whole lines from concurrent writers).

    Raises:
        UnsafeFileError: ``path`` (or its folder) is a symbolic link or not a regular file;
            it is refused, never followed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # the file now at ``path``, not one `compact_record` replaced meanwhile
        fd = open_append(path)
        fcntl.flock(fd, fcntl.LOCK_SH)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def compact_record(
    record: str | os.PathLike[str], *, gone: Collection[Path] = (), dry_run: bool = False
) -> int:
    """Drop the lines of a worker's ``record`` that no run can use any more.

    Those are the lines a later line replaces (the same Pydra checksum: `read_record` reads
    the last), and those whose job ran in a run directory of a job cache that no longer
    holds it, or that is in ``gone``: the job ended long ago (a run directory a record names
    is kept `kwneuro_pydra.pydra._jobs.MAX_AGE`), and its result cannot be collected. A
    line whose job cache is missing altogether is kept (it may live on another machine).
    The record is replaced atomically while holding it locked: appenders wait, then append
    to the new file.

    Args:
        record: The record file.
        gone: Run directories removed (or, with ``dry_run``, to be removed).
        dry_run: Count the lines, rewrite nothing.

    Returns:
        The number of lines dropped.

    Raises:
        UnsafeFileError: ``record`` is a symbolic link or not a regular file.
    """
    fd = open_shared(Path(record))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(os.dup(fd), "rb") as stream:
            lines = stream.read().decode().splitlines(keepends=True)
        last = {line.split("\t")[0]: index for index, line in enumerate(lines)}
        kept = [
            line
            for index, line in enumerate(lines)
            if last[line.split("\t")[0]] == index and not _ran_in_gone(line, gone)
        ]
        if len(kept) < len(lines) and not dry_run:
            write_atomic(Path(record), "".join(kept).encode(), mode=0o644)
        return len(lines) - len(kept)
    finally:
        os.close(fd)


def _ran_in_gone(line: str, gone: Collection[Path]) -> bool:
    """True when the record ``line``'s job ran in a run directory that is gone."""
    fields = line.rstrip("\n").split("\t")
    if len(fields) != 5:
        return False  # a line being written, or not ours: kept
    run = next((p for p in Path(fields[4]).parents if p.name.startswith(RUN_PREFIX)), None)
    return run is not None and (run in gone or (run.parent.is_dir() and not run.is_dir()))


def open_append(path: str | Path) -> int:
    """Open (or create) a log file for appending, never through a symbolic link.

    Args:
        path: The file (a subject's log, the job record).

    Returns:
        A descriptor whose every write goes to the end of the file (the caller closes it).

    Raises:
        UnsafeFileError: ``path`` or its folder is a symbolic link, or ``path`` is not a
            regular file (see `kwneuro_pydra._files.open_shared`).
    """
    fd = open_shared(path)
    fcntl.fcntl(fd, fcntl.F_SETFL, os.O_APPEND)  # and blocking again: a regular file
    return fd

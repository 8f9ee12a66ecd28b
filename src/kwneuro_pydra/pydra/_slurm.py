"""Our Slurm worker: per-step requests, a job per node or per subject, failures said plainly.

It extends Pydra's ``slurm`` worker and keeps Pydra's job pickles, result files and
scheduling; it submits and watches each job itself (see `_workarounds` for why):

- each job's sbatch options are the user's ``sbatch_args``, ``--no-requeue`` unless
  ``--requeue`` is given, then the step's `Request` (per subject: all steps' requests
  combined, see `Request.and_then`);
- with a job per subject, the subjects ready together are submitted as one job array (one
  sbatch call; an array task per subject, watched as its own job);
- a job that ends other than COMPLETED is recorded per subject as a `SchedulerError` naming
  the job id, Slurm's state and what it means, and is never resubmitted or requeued;
- a job pending longer than ``pending_timeout`` seconds is cancelled and reported with
  Slurm's reason;
- the job's log records (the ``kwneuro_pydra`` logger), its stderr and the scheduler's
  events go to ``<log_dir>/<subject>.log``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import attrs
from pydra.engine.job import save  # type: ignore[import-untyped]
from pydra.workers import base, slurm  # type: ignore[import-untyped]

from kwneuro_pydra.pydra._resources import Request, in_sequence, requests
from kwneuro_pydra.pydra._workarounds import sbatch_args

__all__ = ["SchedulerError", "SlurmWorker"]

MEANINGS = {
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
_FINAL = frozenset(MEANINGS) | {"COMPLETED"}
_MEMORY_KILL = re.compile(r"exceeded (job )?memory limit", re.IGNORECASE)
"""What slurmstepd writes to a job's stderr when jobacct_gather's OverMemoryKill ends it
(Slurm then records FAILED or CANCELLED, where the cgroup plugin records OUT_OF_MEMORY)."""
_ARRAY_WINDOW = 0.1
"""Seconds the first subject ready waits for the others to join its job array (Pydra hands
all the subjects of a run to the worker at once)."""
_UNKNOWN_POLLS = 5
"""Consecutive looks at a job that neither the controller nor accounting knows before giving
up on it."""


def _as_requests(resources: Any) -> dict[str, Request]:
    """Validate a user's resources mapping (its step names are checked at submission)."""
    if resources and all(isinstance(r, Request) for r in resources.values()):
        return dict(resources)
    return requests(resources, resources or ())


class SchedulerError(RuntimeError):
    """A job the scheduler did not run to completion (or would not run at all).

    Attributes:
        job_id: Slurm's job id, or None when no job was submitted.
        state: Slurm's state (``TIMEOUT``, ``OUT_OF_MEMORY``, ``CANCELLED`` ...), ``PENDING``
            for a job cancelled after ``pending_timeout``, ``UNKNOWN`` when neither the
            controller nor accounting knows the job (or the controller stopped answering),
            ``SBATCH`` when sbatch refused it.
        step: The step the job ran, or None for a job of a whole subject (its steps).
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
        sbatch_args: sbatch options for every job (``-o``/``-e`` are refused).
        poll_delay: Seconds between two looks at a job's state.
        resources: What each step's jobs ask for, by step name: ``{"estimate_dti":
            {"mem": "2G", "cpus": 2, "time": "00:30:00"}}`` (see `run_subjects`); kept
            as a `Request` per step.
        per_subject: One job per subject workflow (its steps run inside it, in process)
            instead of one job per node; the subjects ready together are submitted as one
            job array (at most ``MaxArraySize`` tasks an array).
        pending_timeout: Seconds a job may pend before it is cancelled; None: no limit.
        controller_timeout: Seconds the controller may go without answering (restarting,
            overloaded) while accounting does not know a job either, before the job is
            given up as ``UNKNOWN``.
        log_dir: Directory of the per-subject log files; None: no log files.
        directory: Working directory of the jobs (default: the current directory when the
            worker is made; Pydra changes directory while it runs workflows, and a job
            imports the steps from there as ``python -m`` does).
        failures: `SchedulerError` per subject (the subject cache directory's name) of the
            jobs that did not complete, filled while jobs run.
        job_ids: Ids of the jobs submitted, in order.
    """

    _plugin_name: ClassVar[str] = "slurm"

    resources: dict[str, Request] = attrs.field(factory=dict, converter=_as_requests)
    per_subject: bool = False
    pending_timeout: float | None = None
    controller_timeout: float = 600.0
    log_dir: str | None = None
    directory: str = attrs.field(factory=os.getcwd)
    failures: dict[str, SchedulerError] = attrs.field(factory=dict)
    job_ids: list[str] = attrs.field(factory=list)
    _array: list[tuple[Path, asyncio.Future[tuple[str | None, str, Path]]]] = attrs.field(
        factory=list, init=False
    )

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = super().__getstate__()
        state.update(failures={}, job_ids=[], _array=[])
        return state

    async def submit(self, job: Any, rerun: bool = False) -> Any:
        """Run a subject's workflow as one job when ``per_subject``; else as Pydra does."""
        if self.per_subject and job.is_async and _subject_dir(job) is not None:
            return await self.run(job, rerun=rerun)
        return await super().submit(job, rerun=rerun)

    async def run(self, job: Any, rerun: bool = False) -> bool:
        """Submit one job (a node, or a whole subject), wait for it, and say how it ended.

        Raises:
            SchedulerError: sbatch refused the job, it pended too long, or it ended
                other than COMPLETED (also recorded in `failures`).
        """
        subject_dir = _subject_dir(job)
        subject = Path(subject_dir).name if subject_dir else job.name
        step: str | None = None if job.is_async else type(job.task).__name__
        what = _what(step)
        if step is None:
            request = in_sequence(self.resources.values())
        else:
            request = self.resources.get(step, Request())
        script_dir = Path(job.cache_root) / "slurm_scripts" / job.uid
        script_dir.mkdir(parents=True, exist_ok=True)
        pickled = script_dir / "_job.pklz"
        if not pickled.exists():
            save(script_dir, job=job)
        log = self._log_file(subject)
        script = script_dir / "job.sh"
        command = [sys.executable, "-m", "kwneuro_pydra.pydra._job", str(pickled)]
        command += [str(int(rerun)), str(log or ""), what]
        script.write_text(f"#!/bin/sh\nexec {shlex.join(command)}\n")
        options = [
            f"--chdir={self.directory}",
            *sbatch_args(self.sbatch_args),
            *request.sbatch_args(),
        ]
        if self.per_subject and job.is_async:
            job_id, said, errors = await self._in_array(script, options)
        else:
            job_id, said = await _sbatch(
                f"--job-name=kwneuro.{subject}.{what.replace(' ', '_')}",
                f"--output={script_dir / 'slurm-%j.out'}",
                f"--error={script_dir / 'slurm-%j.err'}",
                *options,
                str(script),
            )
            errors = script_dir / f"slurm-{job_id}.err"
        if job_id is None:
            message = f"sbatch refused the job of {what} for {subject}: {said}"
            raise self._failed(subject, step, None, "SBATCH", message, log)
        self.job_ids.append(job_id)
        _append(log, f"slurm job {job_id}: {what} submitted ({' '.join(options[1:])})")
        state = await self._wait(job_id, subject, step, log)
        tail = _tail(errors)
        if state in ("FAILED", "CANCELLED") and _MEMORY_KILL.search(tail):
            state = "OUT_OF_MEMORY"  # killed by OverMemoryKill, without cgroups
        _append(
            log, f"slurm job {job_id}: {what} ended {state}" + f"; stderr:\n{tail}" * bool(tail)
        )
        if state == "COMPLETED":
            return True
        message = f"Slurm job {job_id} ({what} for {subject}) ended {state}: {MEANINGS[state]}"
        if state == "FAILED" and tail:
            message += f"; its last error line: {tail.splitlines()[-1]}"
        raise self._failed(subject, step, job_id, state, message, log)

    async def _in_array(self, script: Path, options: list[str]) -> tuple[str | None, str, Path]:
        """Submit ``script`` as a task of the job array of the subjects ready now.

        Returns:
            The array task's job id (``<array>_<index>``; None if sbatch refused the
            array), what sbatch said, and the task's stderr file.
        """
        task: asyncio.Future[tuple[str | None, str, Path]]
        task = asyncio.get_running_loop().create_future()
        self._array.append((script, task))
        if len(self._array) == 1:  # the first ready submits the array once the others joined
            await asyncio.sleep(_ARRAY_WINDOW)
            tasks, self._array = self._array, []
            try:
                await _submit_arrays(tasks, options)
            except Exception as error:  # e.g. the script cannot be written: every task fails
                for _, waiting in tasks:
                    if not waiting.done():
                        waiting.set_exception(error)
        return await task

    async def _wait(self, job_id: str, subject: str, step: str | None, log: Path | None) -> str:
        """Poll until the job reaches a final state; cancel it if it pends too long."""
        what = _what(step)
        submitted, unknown, silent_since = time.monotonic(), 0, None
        while True:
            try:
                state, reason = await _state(job_id)
                unknown, silent_since = 0, None
            except _Unanswered as said:
                silent_since = silent_since or time.monotonic()
                silent = time.monotonic() - silent_since
                if silent < self.controller_timeout:
                    await asyncio.sleep(self.poll_delay)
                    continue
                message = (
                    f"Slurm job {job_id} ({what} for {subject}): the controller has not "
                    f"answered for {silent:.0f} s (squeue said: {said}) and accounting has no "
                    "record of the job; its outcome is unknown. Check slurmctld (scontrol "
                    "ping), or raise controller_timeout"
                )
                raise self._failed(subject, step, job_id, "UNKNOWN", message, log) from None
            except LookupError as said:
                unknown += 1
                if unknown < _UNKNOWN_POLLS:
                    await asyncio.sleep(self.poll_delay)
                    continue
                message = (
                    f"Slurm job {job_id} ({what} for {subject}): the controller no longer "
                    "knows it and accounting has no record of it (accounting unavailable? "
                    f"sacct said: {said}); its outcome is unknown. Start slurmdbd (Slurm "
                    "accounting) or raise MinJobAge in slurm.conf"
                )
                raise self._failed(subject, step, job_id, "UNKNOWN", message, log) from None
            if state in _FINAL:
                return state
            waited = time.monotonic() - submitted
            limit = self.pending_timeout
            if state == "PENDING" and limit is not None and waited > limit:
                await base.read_and_display_async("scancel", job_id, hide_display=True)
                message = (
                    f"Slurm job {job_id} ({what} for {subject}) was still pending after "
                    f"{waited:.0f} s (Slurm's reason: {reason}); cancelled it. Check what "
                    "the job asks for (resources, sbatch_args) against the cluster "
                    "(sinfo -N -l), or raise pending_timeout"
                )
                raise self._failed(subject, step, job_id, "PENDING", message, log)
            await asyncio.sleep(self.poll_delay)

    def _failed(
        self,
        subject: str,
        step: str | None,
        job_id: str | None,
        state: str,
        message: str,
        log: Path | None,
    ) -> SchedulerError:
        error = SchedulerError(message, job_id=job_id, state=state, step=step)
        self.failures.setdefault(subject, error)
        _append(log, message)
        return error

    def _log_file(self, subject: str) -> Path | None:
        if self.log_dir is None:
            return None
        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        return Path(self.log_dir) / f"{subject}.log"


def _what(step: str | None) -> str:
    """What a job runs, for messages and logs: its step, or ``all steps`` of a subject."""
    return "all steps" if step is None else step


async def _sbatch(*args: str) -> tuple[str | None, str]:
    """Run sbatch; return the job id (None when sbatch refused the job) and what it said."""
    rc, out, err = await base.read_and_display_async("sbatch", *args, hide_display=True)
    found = re.search(r"\d+", out)
    return (found.group() if found and not rc else None), err.strip() or out.strip()


async def _submit_arrays(
    tasks: list[tuple[Path, asyncio.Future[tuple[str | None, str, Path]]]],
    options: list[str],
) -> None:
    """Submit each subject's ``job.sh`` as a task of a job array; resolve the tasks' futures.

    An array holds at most the cluster's ``MaxArraySize`` tasks: more make several arrays.
    Its script and output files go next to the first subject's job directory.
    """
    rc, out, _ = await base.read_and_display_async("scontrol", "show", "config", hide_display=True)
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    size = max(1, int(found.group(1))) if rc == 0 and found else 1001  # Slurm's default
    for start in range(0, len(tasks), size):
        chunk = tasks[start : start + size]
        where = chunk[0][0].parent.parent / f"array-{chunk[0][0].parent.name}"
        where.mkdir(parents=True, exist_ok=True)
        cases = "".join(
            f"{index}) exec /bin/sh {shlex.quote(str(script))} ;;\n"
            for index, (script, _) in enumerate(chunk)
        )
        array = where / "array.sh"
        array.write_text(f'#!/bin/sh\ncase "$SLURM_ARRAY_TASK_ID" in\n{cases}esac\nexit 1\n')
        array_id, said = await _sbatch(
            f"--job-name=kwneuro.{len(chunk)}_subjects.all_steps",
            f"--array=0-{len(chunk) - 1}",
            f"--output={where / 'slurm-%A_%a.out'}",
            f"--error={where / 'slurm-%A_%a.err'}",
            *options,
            str(array),
        )
        for index, (_, task) in enumerate(chunk):
            job_id = None if array_id is None else f"{array_id}_{index}"
            task.set_result((job_id, said, where / f"slurm-{array_id}_{index}.err"))


class _Unanswered(LookupError):
    """The controller did not answer about a job (down, restarting, overloaded)."""


async def _state(job_id: str) -> tuple[str, str]:
    """The job's state and Slurm's reason: from the controller, else from accounting.

    Raises:
        _Unanswered: The controller did not answer, and accounting does not know the job
            (the message says what squeue said).
        LookupError: Neither knows the job (the message says what sacct said).
    """
    rc, out, said = await base.read_and_display_async(
        "squeue", "-h", "-j", job_id, "-t", "all", "-o", "%T|%r", hide_display=True
    )
    if rc == 0 and out.strip():
        state, _, reason = out.strip().splitlines()[0].partition("|")
        return state, reason
    answered = rc == 0 or "Invalid job id" in said
    rc, out, err = await base.read_and_display_async(
        "sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State", hide_display=True
    )
    if rc == 0 and out.strip():
        return out.split()[0], ""
    if not answered:
        raise _Unanswered(" ".join(said.split()) or "nothing")
    raise LookupError(err.strip() or "nothing")


def _subject_dir(job: Any) -> str | None:
    """The ``cache_dir`` input of a kwneuro node or subject workflow, else None."""
    value = getattr(job.task, "cache_dir", None)
    return value if isinstance(value, str) else None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _append(log: Path | None, message: str) -> None:
    """Append a line to a subject's log (one write: whole lines from concurrent writers)."""
    if log is None:
        return
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} [scheduler] {message}\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)

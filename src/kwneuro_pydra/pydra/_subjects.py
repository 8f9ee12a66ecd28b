"""`run_subjects`: one pipeline over many subjects as one Pydra submission."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import cloudpickle  # type: ignore[import-untyped]
from pydra.engine.result import load_result  # type: ignore[import-untyped]
from pydra.engine.submitter import Submitter  # type: ignore[import-untyped]
from pydra.engine.workflow import Workflow  # type: ignore[import-untyped]

from kwneuro_pydra._files import read_regular
from kwneuro_pydra._plan import plan
from kwneuro_pydra.cache import NotStoredWarning
from kwneuro_pydra.pydra import _failures, _jobs, _task, _workflow
from kwneuro_pydra.pydra._progress import progress_line
from kwneuro_pydra.pydra._scheduler import (
    cancel_on_interrupt,
    check_before_submitting,
    prepare_worker,
    scheduler_failure,
)
from kwneuro_pydra.pydra._slurm import SlurmWorker, recorded_runs

__all__ = ["StepFailure", "SubjectResult", "run_subjects"]

_log = logging.getLogger("kwneuro_pydra.pydra")
_SUBJECT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*\Z")


@attrs.frozen
class StepFailure:
    """Why a subject failed.

    Attributes:
        subject: The subject id.
        step: Name of the step that raised, or None when the failure came from elsewhere.
        exception: The exception raised, rebuilt from its record: an instance of its class
            for built-in exceptions, else a `StepError` carrying the class's name (records
            are JSON: nothing read from a cache is unpickled).
        traceback: The formatted traceback.
    """

    subject: str
    step: str | None
    exception: BaseException
    traceback: str

    @property
    def reason(self) -> str:
        """``step 'mean_b0' failed: ResourceFileError: <message>``: what failed, one line."""
        where = f"step {self.step!r}" if self.step else "the workflow"
        return f"{where} failed: {_failures.describe(self.exception)}"

    def __str__(self) -> str:
        return f"{self.subject}: {self.reason}"


@attrs.frozen
class SubjectResult:
    """The outcome of one subject of `run_subjects`.

    Attributes:
        subject: The subject id.
        outputs: What the pipeline returned (a tuple for several outputs); None on failure.
        failure: Why it failed, or None.
        cache_dir: The subject's cache directory, ``cache_root/<subject>``.
        not_stored: The steps whose results were computed but could not be stored in it
            (a folder this user cannot write, a full disk): step name -> why (the
            `NotStoredWarning`, which `run_subjects` gives too). Their results in
            ``outputs`` are files in Pydra's job cache, kept until a later run; or, where
            the job directory could not keep them either, held in memory (the warning
            says so).
    """

    subject: str
    outputs: Any
    failure: StepFailure | None
    cache_dir: Path
    not_stored: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def ok(self) -> bool:
        """True when the subject's pipeline completed."""
        return self.failure is None


def run_subjects(
    pipeline: Callable[..., Any],
    subjects: Mapping[str, Mapping[str, Any]],
    cache_root: str | os.PathLike[str],
    *,
    worker: str = "cf",
    force: set[str] | frozenset[str] = frozenset(),
    progress: bool | None = None,
    resources: Mapping[str, Mapping[str, Any]] | None = None,
    granularity: str = "node",
    pending_timeout: float | None = None,
    job_cache: str | os.PathLike[str] | None = None,
    **worker_options: Any,
) -> dict[str, SubjectResult]:
    """Run a pipeline for many subjects as one Pydra workflow split over subjects.

    Each subject's steps are cached under ``cache_root/<subject>/`` (the same entries an
    eager ``with Cache(cache_root / subject)`` run makes and reuses). Subjects whose caches
    already hold every result are served from them and never submitted; in the others, the
    steps whose arguments exist before the run and whose results are cached are served while
    the workflow is built, so only missing steps become jobs. Pydra's own job
    cache (pickles, which are loaded) goes to a directory only you can write, ``job_cache``,
    with its hash memo (unless ``PYDRA_HASH_CACHE`` is set); nothing under ``cache_root`` is
    ever unpickled, so the cache root may be shared. Each run submits into a fresh directory
    of the job cache, removed by the next run: Pydra's results never outlive their run, so
    removing the cache root, a subject's cache or entries never strands a rerun. A failing
    subject is reported while the others' results are kept, even where an entry made before
    holds the step's result (a forced step that raised fails its subject); a rerun
    recomputes only what failed or is missing.
    Progress: INFO records on the ``kwneuro_pydra.pydra`` logger (one per node, from the
    process that runs it) and a progress line on stderr.

    Args:
        pipeline: A pipeline function (see `to_workflow`).
        subjects: Inputs of the pipeline by subject id. Ids must be safe directory names.
        cache_root: Directory of the per-subject caches.
        worker: A Pydra worker: ``"cf"`` (processes; ``n_procs=``), ``"debug"`` (in
            process, subject after subject), ``"slurm"`` (``sbatch_args=``, ``poll_delay=``;
            see ``docs/cluster.md``). ``"sge"`` is refused: Pydra's SGE worker is broken.
        force: Step names to recompute for every subject, with every step depending on
            them; nothing else is recomputed, nor scheduled when it is cached.
        progress: Show the progress line; default: when stderr is a terminal.
        resources: Slurm only: what each step's jobs ask for, by step name, e.g.
            ``{"estimate_dti": {"mem": "2G", "cpus": 2, "time": "00:30:00"}}`` (keys
            ``mem``, ``cpus``, ``time``, ``options``; see `load_resources`).
        granularity: ``"node"`` runs each step call as a job (a process of ``cf``);
            ``"subject"`` runs each subject's steps one after the other in one job: for
            ``cf`` in one process of the pool (a DWI is then decompressed once per subject);
            for Slurm in one job asking for the largest memory and CPUs and the sum of the
            times of ``resources``, the subjects in one job array (one sbatch call per
            ``MaxArraySize`` subjects).
        pending_timeout: Slurm only: seconds a job may pend before it is cancelled and its
            subject reported with Slurm's reason; None waits for ever.
        job_cache: Directory of Pydra's job cache; default
            ``$XDG_CACHE_HOME/kwneuro-pydra/jobs/<digest of cache_root>`` (``~/.cache``
            without ``XDG_CACHE_HOME``). Created with mode 0700; it must be visible from the
            nodes of a cluster. Each run submits into its own ``run-*`` directory in it,
            removed by a later run once no run holds it (see ``docs/workflows.md``).
        **worker_options: Passed to Pydra's ``Submitter`` (for ``"slurm"``: ``sbatch_args``,
            ``poll_delay``).

    Returns:
        A `SubjectResult` per subject id, in the order of ``subjects``.

    Raises:
        ValueError: A subject id is not a safe name, inputs are missing or unknown,
            ``force`` or ``resources`` name a step the pipeline does not call, the worker is
            unknown or ``"sge"``, the cache root is not writable, or the pipeline cannot be
            sent to workers (defined in ``__main__`` and using a global that cannot be
            pickled); for Slurm: a step does not import in a fresh interpreter, sbatch
            refuses the options, ``sbatch_args`` sets ``-o``/``-e``. All raised before
            anything is submitted.
        LazyValueError: The pipeline uses a step's result other than by passing it on.
        PermissionError: The job cache is not yours alone to write.
    """
    root = Path(cache_root).absolute()
    jobs = _jobs.job_cache(root, job_cache)
    workflow_class = _workflow.to_workflow(pipeline)
    ids = list(subjects)
    inputs = {s: _inputs_of(pipeline, s, subjects[s]) for s in ids}
    with _pydra_environment(jobs / "hash-memo"):
        calls = {s: _workflow.discover(pipeline, inputs[s]) for s in ids}
        known = {n: fn for p in calls.values() for n, fn in p.steps.items()}
        unknown = sorted(set(force) - set(known))
        if unknown:
            raise ValueError(
                f"force names steps {pipeline.__name__} does not call: {', '.join(unknown)} "
                f"(its steps: {', '.join(sorted(known))})"
            )
        chosen, options = prepare_worker(
            worker,
            root,
            known,
            resources=resources,
            granularity=granularity,
            pending_timeout=pending_timeout,
            options=worker_options,
        )
        forced: set[str] = set()
        for call in calls.values():
            forced |= call.dependents(set(force)) if force else set()
        if forced and isinstance(chosen, SlurmWorker):
            chosen.follow = False  # a forced step computes anew, never an earlier run's job
        start = time.perf_counter()
        # Cache first: a subject its cache answers is never submitted.
        results = {s: None if forced else _replay(pipeline, s, inputs[s], root) for s in ids}
        tasks = {
            s: dict(inputs[s], cache_dir=str(root / s), code_digest=calls[s].digest)
            for s in ids
            if results[s] is None
        }
        n_nodes = sum(len(calls[s].steps) for s in tasks)
        _log.info(
            "running %s for %d subject(s) (%d served from their caches, %d step(s) to "
            "schedule) with worker %r in %s%s",
            pipeline.__name__,
            len(ids),
            len(ids) - len(tasks),
            n_nodes,
            worker,
            root,
            f", forcing {', '.join(sorted(forced))}" if forced else "",
        )
        names = _output_names(calls[ids[0]].n_outputs) if ids else []
        outcomes: dict[str, SubjectResult] = {}
        if tasks:
            _check_sendable(pipeline, workflow_class, known)
            check_before_submitting(chosen, root, jobs, known)
            for s in tasks:
                _failures.clear(root / s)
            with (
                _jobs.run_directory(
                    jobs, recorded_runs(getattr(chosen, "record", None), jobs)
                ) as run_jobs,
                _submitting(forced),
                progress_line(run_jobs, progress, n_nodes),
                cancel_on_interrupt(chosen),
            ):
                _submit(workflow_class, tasks, run_jobs, chosen, options)
                not_stored = _not_stored(run_jobs, {str(root / s): s for s in tasks})
                for s in tasks:  # a step that raised in this run fails its subject
                    raised = _failures.failure_recorded(root / s)
                    outcomes[s] = (
                        (None if raised else _replay(pipeline, s, inputs[s], root))
                        or _scheduler_outcome(chosen, s, root)
                        or _from_pydra(workflow_class, s, tasks[s], root, run_jobs, names)
                    )
                    if s in not_stored and outcomes[s].ok:
                        outcomes[s] = attrs.evolve(outcomes[s], not_stored=not_stored[s])
        outcomes = {s: results[s] or outcomes[s] for s in ids}
    failed = [r for r in outcomes.values() if not r.ok]
    _log.info(
        "%s: %d subject(s) done, %d failed in %.2f s%s",
        pipeline.__name__,
        len(ids) - len(failed),
        len(failed),
        time.perf_counter() - start,
        "".join(f"\n  {r.failure}" for r in failed),
    )
    return outcomes


def _inputs_of(
    pipeline: Callable[..., Any], subject: str, given: Mapping[str, Any]
) -> dict[str, Any]:
    if not _SUBJECT.match(subject):
        raise ValueError(
            f"subject id {subject!r} is not a safe directory name: use letters, digits, '_', "
            "'.', '+' or '-'"
        )
    import inspect

    params = inspect.signature(pipeline).parameters
    unknown = sorted(set(given) - set(params))
    missing = sorted(n for n, p in params.items() if p.default is p.empty and n not in given)
    if unknown or missing:
        raise ValueError(
            f"subject {subject!r}: "
            + "; ".join(
                ([f"unknown inputs {', '.join(unknown)}"] if unknown else [])
                + ([f"missing inputs {', '.join(missing)}"] if missing else [])
            )
            + f" (inputs of {pipeline.__name__}: {', '.join(params)})"
        )
    return {n: given.get(n, p.default) for n, p in params.items()}


_SET_BY_US: set[str] = set()


@contextlib.contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """Set (or, with None, unset) an environment variable for the context; then restore it."""
    prior = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if prior is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = prior


def _pydra_environment(memo: Path) -> contextlib.AbstractContextManager[None]:
    """Point Pydra's hash memo to ``memo`` (unless the user set it) for this run."""
    prior = os.environ.get("PYDRA_HASH_CACHE")
    if prior is not None and prior not in _SET_BY_US:
        return contextlib.nullcontext()
    ours = str(memo)
    _SET_BY_US.add(ours)
    return _environment("PYDRA_HASH_CACHE", ours)


@contextlib.contextmanager
def _submitting(forced: set[str]) -> Iterator[None]:
    """Tell the nodes which steps to recompute, and the workflows to serve cached steps."""
    forcing = _environment(_task.FORCE_ENV, ",".join(sorted(forced)) or None)
    with forcing, _environment(_task.SERVE_ENV, "1"):
        yield


def _check_sendable(
    pipeline: Callable[..., Any], workflow_class: Any, steps: Mapping[str, Callable[..., Any]]
) -> None:
    """Refuse, before submitting, a pipeline that Pydra cannot send to its workers.

    Pydra pickles every job, even for the ``debug`` worker; steps and pipelines defined in
    ``__main__`` (a script, a notebook) travel by value, with the globals they use.
    """
    try:
        cloudpickle.dumps([workflow_class, *(_task.to_task(fn) for fn in steps.values())])
    except Exception as error:
        raise ValueError(
            f"pipeline {pipeline.__qualname__} cannot be sent to Pydra's workers ({error}): "
            "steps and pipelines defined in a script or a notebook are sent by value with "
            "the global values they use, so those must be picklable; or define the steps and "
            "the pipeline in an importable module"
        ) from error


def _submit(
    workflow_class: Any,
    tasks: dict[str, dict[str, Any]],
    jobs: Path,
    worker: Any,
    options: dict[str, Any],
) -> None:
    """Run the subjects' workflows; failures are read back per subject afterwards."""

    def run(task: Any) -> None:
        with Submitter(cache_root=jobs, worker=worker, **options) as submitter:
            try:
                submitter(task, raise_errors=False)
            except Exception as error:  # a failed subject: reported per subject
                _log.debug("Pydra reported: %s", error)

    def submit(task: Any) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            run(task)
            return
        # A notebook's event loop runs in this thread, and Pydra's asynchronous workers
        # cannot run theirs inside it: submit from a thread of our own.
        with concurrent.futures.ThreadPoolExecutor(1, "kwneuro-pydra-submit") as pool:
            pool.submit(run, task).result()

    # Constructing a workflow here serves the steps its cache answers (_workflow._Builder),
    # and Pydra memoizes constructions per process: none may outlive the entries it served.
    Workflow.clear_cache()
    try:
        if worker == "debug":  # fail-fast within one submission: one submission per subject
            for values in tasks.values():
                submit(workflow_class(**values))
            return
        names = list(next(iter(tasks.values())))
        columns = {n: [values[n] for values in tasks.values()] for n in names}
        submit(workflow_class().split(tuple(names), **columns))
    finally:
        Workflow.clear_cache()


def _replay(
    pipeline: Callable[..., Any], subject: str, inputs: dict[str, Any], root: Path
) -> SubjectResult | None:
    """A subject's result read from its cache (intact entries only), or None if incomplete.

    Pydra schedules; the cache owns the results: an entry removed, damaged or superseded
    (an upstream step forced eagerly, say) since Pydra ran is caught here.
    """
    found = plan(pipeline, inputs, root / subject)
    if not found.complete:
        return None
    return SubjectResult(subject, found.outputs, None, root / subject)


def _from_pydra(
    workflow_class: Any,
    subject: str,
    values: dict[str, Any],
    root: Path,
    jobs: Path,
    names: list[str],
) -> SubjectResult:
    """A subject whose outputs are not in its cache: Pydra's result, else why it failed.

    Pydra's result stands in only where a step ran uncached (an argument that cannot be
    fingerprinted); for a failed subject it carries the error.
    """
    task = workflow_class(**values)
    result = load_result(task._checksum, [jobs], retries=1, polling_interval=0)
    cache_dir = root / subject
    if result is not None and not result.errored and not _failures.failure_recorded(cache_dir):
        value = tuple(getattr(result.outputs, name) for name in names)
        return SubjectResult(subject, value if len(value) > 1 else value[0], None, cache_dir)
    return SubjectResult(subject, None, _why(subject, cache_dir, result), cache_dir)


def _not_stored(jobs: Path, subjects: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Subject -> step -> why, for the results the nodes of a run could not store; each
    warned about here (as `NotStoredWarning`), the nodes' own warnings reaching no console.

    Args:
        jobs: The run's directory of Pydra's job cache.
        subjects: Subject cache folder (as nodes name it) -> subject id.
    """
    found: dict[str, dict[str, str]] = {}
    record = f"{_task.NOT_STORED}.json"
    # os.walk passes over what cannot be listed (rglob raises: a path too long, say)
    records = (Path(d, record) for d, _, names in os.walk(jobs) if record in names)
    for path in sorted(records):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
            why = json.loads(read_regular(path))
            subject = subjects[why["cache_dir"]]
            for step, message in why["steps"].items():
                if step not in found.setdefault(subject, {}):
                    found[subject][step] = str(message)
                    warnings.warn(f"{subject}: {message}", NotStoredWarning, stacklevel=3)
    return found


def _scheduler_outcome(worker: Any, subject: str, root: Path) -> SubjectResult | None:
    """The subject failed because of a job the scheduler did not complete, if so.

    A job that merely exited with an error defers to the step's own failure record.
    """
    error = scheduler_failure(worker, subject)
    if error is None or (error.state == "FAILED" and _failures.failure_recorded(root / subject)):
        return None
    failure = StepFailure(subject, error.step, error, str(error))
    return SubjectResult(subject, None, failure, root / subject)


def _output_names(n_outputs: int) -> list[str]:
    return ["out"] if n_outputs == 1 else [f"out{i}" for i in range(1, n_outputs + 1)]


def _why(subject: str, cache_dir: Path, result: Any) -> StepFailure:
    record = _failures.read(cache_dir)
    if record is not None:
        return StepFailure(subject, *record)
    text = ""
    if result is not None and result.errors:
        text = "".join(result.errors.get("error message", []))
    found = re.search(r"\[kwneuro\] step '([^']+)'", text)
    message = text.strip().splitlines()[-1] if text.strip() else "no result was produced"
    return StepFailure(subject, found and found.group(1), RuntimeError(message), text)

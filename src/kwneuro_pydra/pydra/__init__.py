"""Pydra 1.0 adapter: `cacheable` steps as workflow nodes, pipelines as workflows, many subjects.

The same steps run eagerly under ``with Cache(...)`` and as Pydra nodes, sharing one cache:
a node given ``cache_dir`` runs its step inside ``Cache(cache_dir)``, so Pydra only schedules.

Example::

    from kwneuro_pydra.pydra import run_subjects
    from kwneuro_pydra.workflows import dti_pipeline

    results = run_subjects(dti_pipeline, {"sub-01": {"dwi": dwi1}}, "derivatives")

Importing this module imports Pydra (``import kwneuro_pydra`` alone does not), sets
``NO_ET=1`` (no telemetry request) unless ``NO_ET`` is set, and registers our hashing with
Pydra: numpy arrays by dtype, shape and content for every task; paths by content and
fingerprintable classes by our fingerprint for the inputs of our tasks only (see
`register_pydra_hash`). ``run_subjects`` never unpickles anything from the cache root:
Pydra's job cache lives in a directory only you can write (``job_cache=``).
Requires ``pydra==1.0a12`` and ``cloudpickle<3.1.3``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("NO_ET", "1")  # before any Submitter: Pydra checks once per process

from kwneuro_pydra.pydra import _task, _workflow
from kwneuro_pydra.pydra._failures import StepError, failure_recorded
from kwneuro_pydra.pydra._hash import register_pydra_hash
from kwneuro_pydra.pydra._jobs import Pruned, prune_scheduler
from kwneuro_pydra.pydra._lazy import LazyValueError
from kwneuro_pydra.pydra._preflight import ClusterWarning
from kwneuro_pydra.pydra._resources import load_resources
from kwneuro_pydra.pydra._scheduler import job_record
from kwneuro_pydra.pydra._slurm import (
    FINAL_STATE_MEANINGS,
    SchedulerError,
    SlurmWorker,
    cancel_recorded,
    recorded_jobs,
    recorded_states,
)
from kwneuro_pydra.pydra._subjects import StepFailure, SubjectResult, run_subjects

__all__ = [
    "FINAL_STATE_MEANINGS",
    "ClusterWarning",
    "LazyValueError",
    "Pruned",
    "SchedulerError",
    "SlurmWorker",
    "StepError",
    "StepFailure",
    "SubjectResult",
    "cancel_recorded",
    "failure_recorded",
    "job_record",
    "load_resources",
    "prune_scheduler",
    "recorded_jobs",
    "recorded_states",
    "register_pydra_hash",
    "run_subjects",
    "to_task",
    "to_workflow",
]


def to_task(step: Callable[..., Any]) -> Any:
    """Return the Pydra python task class of a `cacheable` step.

    The class is named after the step. Its inputs are the step's parameters with their
    annotations and defaults, plus ``cache_dir: str | None = None``: given, the node runs
    the step inside ``Cache(cache_dir)`` (an eager run with the same directory and the node
    reuse each other's entries); omitted, the step runs plainly. Outputs: ``out``; for a
    step annotated to return ``tuple[A, B]``, ``out1`` and ``out2``; for a ``NamedTuple``
    return type, its field names. Works for bare and `CacheSpec` steps, static methods, and
    functions decorated by upstream kwneuro 1.0's ``cacheable``. The class is built once
    per step.

    Pydra writes a hash memo under ``$PYDRA_HASH_CACHE`` (default: under your home) whenever
    it hashes: set it when you submit these tasks yourself (`run_subjects` does).

    Args:
        step: A `cacheable`-decorated function, importable by module and qualified name.

    Returns:
        A Pydra 1.0 python task class.

    Raises:
        TypeError: ``step`` is not a `cacheable` step, or its annotations do not resolve.
        ValueError: A parameter is named ``function``, ``split``, ``combine``,
            ``cache_dir`` or ``code_digest``, is positional-only or variadic; or the step
            cannot be imported by name (Pydra workers load it that way).
    """
    return _task.to_task(step)


def to_workflow(pipeline: Callable[..., Any]) -> Any:
    """Return a Pydra workflow class built from a plain pipeline function.

    The pipeline calls `cacheable` steps, e.g.
    ``def pipeline(dwi): mask = brain_mask(dwi); return estimate_dti(dwi, mask=mask)``, and
    still runs eagerly (under ``with Cache(...)`` or not). While Pydra constructs the
    workflow, each step call becomes a node (named after the step; ``name_2`` ... when a
    step is called again) and returns stand-ins of its outputs. Passing a stand-in to
    another step, or returning it, is all a pipeline may do with it: any other use (``if``,
    attribute access, formatting, arithmetic ...) raises `LazyValueError` naming the value.

    Inputs: the pipeline's parameters, plus ``cache_dir: str | None`` (handed to every node)
    and ``code_digest`` (defaults to a digest of the steps' code: after a step is edited the
    workflow's own cached result is not reused). Outputs: ``out``, or ``out1`` ... ``outN``
    when the pipeline returns a tuple. The class is built once per pipeline.

    Args:
        pipeline: A function whose parameters are positional-or-keyword or keyword-only.

    Returns:
        A Pydra 1.0 workflow class named after the pipeline.

    Raises:
        ValueError: A parameter name is reserved or the parameter kind unsupported; a step
            it calls cannot be a Pydra task (see `to_task`).
        LazyValueError: The pipeline uses a step's result other than by passing it on.
    """
    return _workflow.to_workflow(pipeline)

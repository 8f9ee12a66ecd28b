"""What a Slurm job of our worker runs: one pickled Pydra job, logging to its subject's log.

``python -m kwneuro_pydra.pydra._job JOB_PKL RERUN LOG STEP``: a node runs as Pydra's
``load_and_run`` would run it; a subject's workflow (a job per subject) runs its nodes one after
the other in this process (Pydra's ``debug`` worker); the steps of a pipeline defined in
the user's ``__main__`` are given to this one's. Records of the ``kwneuro_pydra``
logger at INFO and above are appended to ``LOG`` (when not empty), tagged with the job id
(``<array>_<index>`` for an array task, as the scheduler's lines say). A ``cf`` worker
process runs a subject's workflow the same way (`run_workflow`, see ``SubjectProcessWorker``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> None:
    """Run the job ``argv`` describes (see the module docstring)."""
    pickled, rerun, log, step = Path(argv[0]), argv[1] == "1", argv[2], argv[3]
    if log:
        from kwneuro_pydra.pydra._slurm import open_append

        handler = logging.StreamHandler(os.fdopen(open_append(log), "a"))  # never a link
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s [job {_job_id()} {step}] %(name)s %(levelname)s: %(message)s",
                "%Y-%m-%d %H:%M:%S",
            )
        )
        logger = logging.getLogger("kwneuro_pydra")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    from pydra.engine.job import load_job  # type: ignore[import-untyped]

    job = load_job(pickled)
    if not job.is_async:
        job.run(rerun=rerun)  # records the error and an errored result itself
        return
    run_workflow(job, rerun)


def run_workflow(job: Any, rerun: bool) -> None:
    """Run a workflow's job here, its nodes one after the other (Pydra's ``debug`` worker).

    Args:
        job: Pydra's job of a workflow (a subject's).
        rerun: Recompute results Pydra's job cache holds.
    """
    from pydra.engine.submitter import Submitter  # type: ignore[import-untyped]

    _adopt_main(job.task)
    with Submitter(worker="debug", cache_root=job.cache_root) as submitter:
        job.submitter = submitter
        job.run(rerun=rerun)


def _job_id() -> str:
    """The job's id as the scheduler's lines give it: ``<array>_<index>`` for an array task."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and index:
        return f"{array}_{index}"
    return os.environ.get("SLURM_JOB_ID", "?")


def _adopt_main(task: Any) -> None:
    """Give this process's ``__main__`` the steps of a pipeline defined in the user's.

    A pipeline defined in a script or notebook travels by value with the steps it calls;
    building its workflow here looks each step up by module and name, and this process's
    ``__main__`` is this module.
    """
    pipeline = getattr(getattr(task, "constructor", None), "__wrapped__", None)
    if getattr(pipeline, "__module__", None) != "__main__":
        return
    main = sys.modules["__main__"]
    for name, value in pipeline.__globals__.items():  # type: ignore[union-attr]
        if getattr(value, "__module__", None) == "__main__" and not hasattr(main, name):
            setattr(main, name, value)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Our workarounds for bugs of Pydra 1.0a12's scheduler workers, each with its upstream problem.

Our Slurm worker (`kwneuro_pydra.pydra._slurm`) submits and watches jobs itself; it keeps
Pydra's job scripts, result files and scheduling. What it does differently, and why:

1. ``-e``/``--error`` in ``sbatch_args`` crashes ``pydra/workers/slurm.py``
   (``SlurmWorker.run``: ``error_file = None`` then ``error_file.replace(...)``:
   ``AttributeError: 'NoneType' object has no attribute 'replace'``), after the job was
   submitted, so it runs unwatched; ``-o``/``--output`` moves the job's output away from
   where failures are read. We refuse both with the reason (`sbatch_args`).
2. A CANCELLED, TIMEOUT or PREEMPTED job is put back in the queue (``scontrol requeue``)
   unless ``--no-requeue`` is among the options, so ``scancel`` never stops it and a job
   that cannot finish loops. We add ``--no-requeue`` (`sbatch_args`) and never requeue.
3. Without accounting (no slurmdbd), ``sacct`` prints nothing and the worker raises
   ``Job information not found`` after every job; each subject is then misreported as
   failed and resubmitted. We read the job's state from ``squeue`` while the controller
   remembers it, and only then from ``sacct``; if neither knows the job we say so.
4. Pydra's ``sge`` worker is not usable (`refuse_sge`).
"""

from __future__ import annotations

import shlex

__all__ = ["SGE_PROBLEMS", "refuse_sge", "sbatch_args"]

_OUTPUT_OPTIONS = ("-e", "--error", "-o", "--output")

SGE_PROBLEMS = (
    "Pydra 1.0a12's 'sge' worker cannot run our workflows: every submission fails with "
    "\"TypeError: unsupported operand type(s) for +=: 'dict' and 'int'\" "
    "(pydra/workers/sge.py:225, threads_used is a dict); with that worked around, a job that "
    "fails on the node is never noticed and Pydra's submitter spins in get_runnable_tasks "
    '("Tasks finished: 0") without end, and two or more subjects spin without submitting. '
    "Use worker='slurm', or 'cf' on one machine."
)


def sbatch_args(given: str) -> list[str]:
    """Split user ``sbatch_args`` and add ``--no-requeue`` unless ``--requeue`` is given.

    Args:
        given: sbatch options as one string, e.g. ``"--partition=short --qos=normal"``.

    Returns:
        The options as separate arguments.

    Raises:
        ValueError: An option sets the job's output or error file (``-o``, ``-e``,
            ``--output``, ``--error``): each job's output goes to its own file next to the
            job script, where failures are read from, and Pydra's worker crashes on ``-e``.
    """
    args = shlex.split(given)
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in _OUTPUT_OPTIONS or (arg[:2] in ("-e", "-o") and not arg.startswith("--")):
            raise ValueError(
                f"sbatch_args: {arg!r} is not accepted: each job's output and error go to "
                "files next to its job script (in Pydra's job cache), where "
                "kwneuro-pydra reads why a job failed, and Pydra 1.0a12's slurm worker crashes "
                "on -e (AttributeError: 'NoneType' object has no attribute 'replace'). "
                "Each node's log lines are in <cache_root>/.logs/<subject>.log."
            )
    if "--requeue" not in args and "--no-requeue" not in args:
        args.append("--no-requeue")
    return args


def refuse_sge() -> None:
    """Raise at once for ``worker="sge"``.

    Raises:
        ValueError: Always, with `SGE_PROBLEMS`.
    """
    raise ValueError(SGE_PROBLEMS)

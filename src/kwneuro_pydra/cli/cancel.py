"""``kwneuro-pydra cancel OUTPUT_DIR``: cancel the Slurm jobs of the runs into OUTPUT_DIR.

Calls `kwneuro_pydra.app.cancel_jobs`: one ``scancel`` for the jobs the record lists that are
still queued or running (a detached run's), and prints each.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kwneuro_pydra.app import cancel_jobs
from kwneuro_pydra.cli._common import add_work_dir, plural

__all__ = ["add_parser", "run"]


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``cancel`` to the command line."""
    parser = commands.add_parser(
        "cancel",
        parents=parents,
        help="cancel the Slurm jobs of the runs into OUTPUT_DIR",
        description="Cancel the Slurm jobs that runs into OUTPUT_DIR submitted (recorded in "
        "WORK_DIR/.logs/slurm-jobs.tsv) and that are still queued or running, e.g. those of "
        "'run --detach'. The cache keeps every step they finished; a later 'run' computes the "
        "rest.",
    )
    parser.add_argument("output_dir", type=Path, help="the runs' output folder")
    add_work_dir(parser, recorded=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Cancel the jobs still queued or running, print each; return 0."""
    cancelled = cancel_jobs(args.output_dir, work_dir=args.work_dir)
    for job in cancelled:
        print(f"cancelled Slurm job {job.job_id} ({job.step} for {job.name})")
    print(
        f"{plural(len(cancelled), 'Slurm job')} cancelled"
        + ("" if cancelled else " (none of the recorded jobs is queued or running)")
    )
    return 0

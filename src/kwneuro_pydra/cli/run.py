"""``kwneuro-pydra run BIDS_DIR OUTPUT_DIR participant``: the BIDS app's command line.

Parses, calls `kwneuro_pydra.app.run_bids_app`, prints the summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kwneuro_pydra.app import WORKERS, run_bids_app
from kwneuro_pydra.cli._cluster import add_scheduler_options, scheduler_options
from kwneuro_pydra.cli._common import add_work_dir, positive_int
from kwneuro_pydra.cli._display import LiveProgress, print_detached, print_summary
from kwneuro_pydra.cli._options import add_dti_options, parameters_of

__all__ = ["add_parser", "add_selection", "run"]


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``run`` to the command line."""
    parser = commands.add_parser(
        "run",
        parents=parents,
        help="run the DTI BIDS app on a dataset",
        description="Fit DTI to every DWI series of a BIDS dataset; write BIDS-Derivatives "
        "(maps, masks, JSON sidecars), sub-<label>.html reports and report.html. Reruns reuse "
        "every cached step.",
    )
    parser.add_argument("bids_dir", type=Path, help="the BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="where the derivatives and reports go")
    parser.add_argument("analysis_level", choices=["participant"], help="participant")
    add_selection(parser)
    add_dti_options(parser)
    execution = parser.add_argument_group("execution")
    add_work_dir(execution, recorded=False)
    execution.add_argument(
        "--worker", choices=WORKERS, default="cf", help="Pydra worker (default: cf)"
    )
    execution.add_argument(
        "--n-procs", type=positive_int, metavar="N", help="processes of the cf worker"
    )
    add_scheduler_options(parser)
    execution.add_argument(
        "--force",
        type=_steps,
        default=[],
        metavar="STEP[,STEP]",
        help="recompute these steps (and what depends on them)",
    )
    parser.set_defaults(run=run)


def add_selection(parser: argparse.ArgumentParser) -> None:
    """The BIDS-Apps options choosing participants and sessions (shared with ``status``)."""
    selection = parser.add_argument_group("selection")
    selection.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        default=[],
        metavar="LABEL",
        help="only these subjects (with or without sub-)",
    )
    selection.add_argument(
        "--session-label",
        "--session_label",
        nargs="+",
        default=[],
        metavar="LABEL",
        help="only these sessions (with or without ses-)",
    )


def _steps(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def run(args: argparse.Namespace) -> int:
    """Run the BIDS app; return 0 when every series succeeded (or was left to run as a
    Slurm job, with ``--detach``), else 1.
    """
    result = run_bids_app(
        args.bids_dir,
        args.output_dir,
        participants=args.participant_label,
        sessions=args.session_label,
        work_dir=args.work_dir,
        parameters=parameters_of(args),
        worker=args.worker,
        force=args.force,
        on_progress=LiveProgress(args.verbosity),
        **scheduler_options(args),
    )
    if result.detached:
        print_detached(result)
        return 0 if all(s.ok or s.job for s in result.series) else 1
    print_summary(result, args.verbosity)
    return 0 if result.ok else 1

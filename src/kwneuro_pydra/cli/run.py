"""``kwneuro-pydra run BIDS_DIR OUTPUT_DIR participant``: the BIDS app's command line.

Parses, calls `kwneuro_pydra.app.run_bids_app`, prints the summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kwneuro_pydra.app import WORKERS, run_bids_app
from kwneuro_pydra.cli._common import UsageError, positive_float, positive_int
from kwneuro_pydra.cli._display import LiveProgress, print_summary
from kwneuro_pydra.cli._options import add_dti_options, parameters_of

__all__ = ["add_parser", "add_scheduler_options", "add_selection", "run", "scheduler_options"]


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``run`` to the command line."""
    parser = commands.add_parser(
        "run", parents=parents, help="run the DTI BIDS app on a dataset",
        description="Fit DTI to every DWI series of a BIDS dataset; write BIDS-Derivatives "
        "(maps, masks, JSON sidecars), sub-<label>.html reports and report.html. Reruns reuse "
        "every cached step.",
    )  # fmt: skip
    parser.add_argument("bids_dir", type=Path, help="the BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="where the derivatives and reports go")
    parser.add_argument("analysis_level", choices=["participant"], help="participant")
    add_selection(parser)
    add_dti_options(parser)
    execution = parser.add_argument_group("execution")
    execution.add_argument(
        "-w", "--work-dir", type=Path, metavar="DIR",
        help="the cache (default: OUTPUT_DIR/.kwneuro-cache)",
    )  # fmt: skip
    execution.add_argument(
        "--worker", choices=WORKERS, default="cf", help="Pydra worker (default: cf)"
    )
    execution.add_argument(
        "--n-procs", type=positive_int, metavar="N", help="processes of the cf worker"
    )
    add_scheduler_options(parser)
    execution.add_argument(
        "--force", type=_steps, default=[], metavar="STEP[,STEP]",
        help="recompute these steps (and what depends on them)",
    )  # fmt: skip
    parser.set_defaults(run=run)


def add_scheduler_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``--worker slurm`` (see `kwneuro_pydra.pydra.run_subjects`)."""
    cluster = parser.add_argument_group("cluster (--worker slurm)")
    cluster.add_argument(
        "--sbatch-args", metavar="ARGS",
        help="sbatch options for every job, e.g. --sbatch-args='--partition=short -A lab' "
        "(-o and -e are refused: each series' log goes to WORK_DIR/.logs)",
    )  # fmt: skip
    cluster.add_argument(
        "--resources", type=Path, metavar="FILE",
        help="per-step requests: a .toml with a table per step (mem, cpus, time, options) "
        "or the same as .json",
    )  # fmt: skip
    cluster.add_argument(
        "--granularity", choices=("node", "subject"), default="node",
        help="one job per step call (node, the default) or one per series (subject), the "
        "series submitted together as Slurm job arrays",
    )  # fmt: skip
    cluster.add_argument(
        "--pending-timeout", type=positive_float, metavar="SECONDS",
        help="cancel and report jobs pending longer than this, with Slurm's reason",
    )  # fmt: skip
    cluster.add_argument(
        "--poll-delay", type=positive_float, metavar="SECONDS",
        help="seconds between looks at the queue",
    )  # fmt: skip


def scheduler_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `run_subjects` keyword arguments that the command line's options ask for.

    Raises:
        UsageError: A scheduler option was given without ``--worker slurm``, or the
            resources file cannot be read.
    """
    from kwneuro_pydra.pydra import load_resources

    given = {
        "sbatch_args": args.sbatch_args,
        "resources": args.resources,
        "pending_timeout": args.pending_timeout,
        "poll_delay": args.poll_delay,
    }
    given = {name: value for name, value in given.items() if value is not None}
    if args.granularity != "node":
        given["granularity"] = args.granularity
    if given and args.worker != "slurm":
        names = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"{names}: only with --worker slurm (got --worker {args.worker})")
    if "resources" in given:
        try:
            given["resources"] = load_resources(given["resources"])
        except (OSError, ValueError) as error:
            raise UsageError(f"--resources: {error}") from None
    if args.n_procs:
        given["n_procs"] = args.n_procs
    return given


def add_selection(parser: argparse.ArgumentParser) -> None:
    """The BIDS-Apps options choosing participants and sessions (shared with ``status``)."""
    selection = parser.add_argument_group("selection")
    selection.add_argument(
        "--participant-label", "--participant_label", nargs="+", default=[], metavar="LABEL",
        help="only these subjects (with or without sub-)",
    )  # fmt: skip
    selection.add_argument(
        "--session-label", "--session_label", nargs="+", default=[], metavar="LABEL",
        help="only these sessions (with or without ses-)",
    )  # fmt: skip


def _steps(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def run(args: argparse.Namespace) -> int:
    """Run the BIDS app; return 0 when every series succeeded, else 1."""
    result = run_bids_app(
        args.bids_dir, args.output_dir, participants=args.participant_label,
        sessions=args.session_label, work_dir=args.work_dir, parameters=parameters_of(args),
        worker=args.worker, force=args.force, on_progress=LiveProgress(args.verbosity),
        **scheduler_options(args),
    )  # fmt: skip
    print_summary(result, args.verbosity)
    return 0 if result.ok else 1

"""``run``'s options for ``--worker slurm``, and the `run_subjects` arguments they make."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kwneuro_pydra.cli._common import UsageError, positive_float, positive_int

__all__ = ["add_scheduler_options", "scheduler_options"]


def add_scheduler_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``--worker slurm`` (see `kwneuro_pydra.pydra.run_subjects`)."""
    cluster = parser.add_argument_group("cluster (--worker slurm)")
    cluster.add_argument(
        "--sbatch-args",
        metavar="ARGS",
        help="sbatch options for every job, e.g. --sbatch-args='--partition=short -A lab' "
        "(-o and -e are refused: each series' log goes to WORK_DIR/.logs)",
    )
    cluster.add_argument(
        "--resources",
        type=Path,
        metavar="FILE",
        help="per-step requests: a .toml with a table per step (mem, cpus, time, options) "
        "or the same as .json",
    )
    cluster.add_argument(
        "--granularity",
        choices=("node", "subject"),
        help="one job per step call (node, the default) or one per series (subject), the "
        "series submitted together as Slurm job arrays",
    )
    cluster.add_argument(
        "--detach",
        action="store_true",
        help="submit the series as a job array (a job per series: implies --granularity "
        "subject) and exit; 'status OUTPUT_DIR' follows them, 'cancel OUTPUT_DIR' cancels "
        "them, and running the same command without --detach collects the results",
    )
    cluster.add_argument(
        "--pending-timeout",
        type=positive_float,
        metavar="SECONDS",
        help="cancel and report jobs pending longer than this, with Slurm's reason",
    )
    cluster.add_argument(
        "--poll-delay",
        type=positive_float,
        metavar="SECONDS",
        help="seconds between looks at the queue",
    )
    cluster.add_argument(
        "--max-poll-delay",
        type=positive_float,
        metavar="SECONDS",
        help="longest delay between looks at the queue while nothing changes (default 60)",
    )
    cluster.add_argument(
        "--max-running",
        type=positive_int,
        metavar="N",
        help="at most N of the run's jobs at once (a job array's %%N)",
    )
    parser.add_argument(
        "--job-cache",
        type=Path,
        metavar="DIR",
        help="Pydra's job cache (default OUTPUT_DIR/logs/pydra-<uid>): private to you, and "
        "visible from the nodes with --worker slurm",
    )


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
        "max_poll_delay": args.max_poll_delay,
        "max_running": args.max_running,
    }
    given = {name: value for name, value in given.items() if value is not None}
    if args.granularity is not None:
        given["granularity"] = args.granularity
    if args.detach:
        if args.granularity == "node":
            raise UsageError(
                "--detach needs a job per series: --granularity subject (implied when "
                "--granularity is not given), not node"
            )
        given["detach"] = True
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
    if args.job_cache is not None:
        given["job_cache"] = args.job_cache
    return given

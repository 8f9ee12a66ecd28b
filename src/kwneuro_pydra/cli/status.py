"""``kwneuro-pydra status BIDS_DIR OUTPUT_DIR``: each series' steps as the cache holds them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kwneuro_pydra.cli._common import plural
from kwneuro_pydra.cli._options import add_dti_options, status_parameters
from kwneuro_pydra.cli._series import app, describe, look_up, read_record, units
from kwneuro_pydra.cli.run import add_selection

__all__ = ["add_parser", "run"]

_STYLE = {"cached": "green", "stale": "yellow", "missing": "dim", "failed": "red"}


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``status`` to the command line."""
    parser = commands.add_parser(
        "status", parents=parents, help="show which steps are cached, stale, missing or failed",
        description="For every DWI series of a BIDS dataset, show each step of the BIDS app as "
        "cached, stale (its code changed since), missing, or failed (in the last run), for "
        "the DTI options the last run into OUTPUT_DIR recorded (options given here override "
        "them). Computes and writes nothing.",
    )  # fmt: skip
    parser.add_argument("bids_dir", type=Path, help="the BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="the run's output folder")
    parser.add_argument(
        "-w", "--work-dir", type=Path, metavar="DIR",
        help="the cache (default: OUTPUT_DIR/.kwneuro-cache)",
    )  # fmt: skip
    add_selection(parser)
    add_dti_options(parser, recorded=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the status table; return 0."""
    from rich.console import Console
    from rich.table import Table

    all_units = units(args.bids_dir, args.participant_label, args.session_label)
    work_dir = (args.work_dir or args.output_dir / ".kwneuro-cache").absolute()
    failures = read_record(work_dir)
    parameters, options = status_parameters(args, args.output_dir.absolute())
    steps = [s.__name__ for s in app().STEPS]
    table = Table(title=f"{describe(all_units)}; cache {work_dir}", title_justify="left")
    table.add_column("series")
    for step in steps:
        table.add_column(step)
    counts = dict.fromkeys(_STYLE, 0)
    for unit in all_units:
        if unit.dwi is None:
            table.add_row(unit.name, f"[red]cannot load: {unit.failure}[/red]")
            counts["failed"] += 1
            continue
        states: dict[str, str] = dict(look_up(unit, work_dir, parameters).states)
        failed_step = failures.get(unit.name, {}).get("step")
        if failed_step in states and states[failed_step] != "cached":
            states[failed_step] = "failed"
        for state in states.values():
            counts[state] += 1
        table.add_row(unit.name, *(f"[{_STYLE[states[s]]}]{states[s]}[/]" for s in steps))
    out = Console(highlight=False)
    out.print(table)
    out.print(", ".join(f"{plural(n, 'step')} {state}" for state, n in counts.items()))
    out.print(options, soft_wrap=True)
    return 0

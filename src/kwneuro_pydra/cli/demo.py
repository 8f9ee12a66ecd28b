"""``kwneuro-pydra demo OUTPUT``: write a BIDS dataset of phantoms and run the app on it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kwneuro_pydra.app import WORKERS, demo_accuracy, run_bids_app, write_demo
from kwneuro_pydra.cli._common import positive_int
from kwneuro_pydra.cli._display import LiveProgress, print_summary

__all__ = ["add_parser", "run"]


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to the command line."""
    parser = commands.add_parser(
        "demo",
        parents=parents,
        help="run the BIDS app on built-in phantom subjects",
        description="Write a BIDS dataset of DWI phantoms to OUTPUT/bids (some subjects with "
        "two sessions) and run `kwneuro-pydra run OUTPUT/bids OUTPUT/derivatives participant` "
        "on it. Run it twice: the second run is served from the cache. A folder holding a "
        "dataset the demo did not write is refused.",
    )
    parser.add_argument("output", type=Path, help="folder for the dataset and derivatives")
    parser.add_argument(
        "--subjects", type=positive_int, default=4, metavar="N", help="phantom subjects (4)"
    )
    parser.add_argument("--worker", choices=WORKERS, default="cf", help="Pydra worker (cf)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the dataset, run the app on it, print its error; 0 when every series succeeded."""
    from kwneuro_pydra.workflows.demo import DEMO_MASK_OPTIONS

    bids_dir, derivatives = write_demo(args.output, args.subjects)
    result = run_bids_app(
        bids_dir,
        derivatives,
        worker=args.worker,
        parameters=DEMO_MASK_OPTIONS,
        on_progress=LiveProgress(args.verbosity),
    )
    print_summary(result, args.verbosity)
    if args.verbosity >= 0:
        _print_accuracy(bids_dir, derivatives, args.subjects)
    return 0 if result.ok else 1


def _print_accuracy(bids_dir: Path, derivatives: Path, subjects: int) -> None:
    """Print each series' FA and MD error against the phantom's ground truth."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="Error against the phantoms' ground truth (tissue in the mask)",
        title_justify="left",
    )
    for column in ("series", "voxels", "median |FA error|", "median |MD error| / MD"):
        table.add_column(column, justify="left" if column == "series" else "right")
    for error in demo_accuracy(bids_dir, derivatives, subjects):
        table.add_row(
            error.series,
            str(error.voxels),
            f"{error.fa_error:.4f}",
            f"{100 * error.md_error:.2f} %",
        )
    Console(highlight=False).print(table)

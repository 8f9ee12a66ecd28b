"""``kwneuro-pydra demo OUTPUT``: write a BIDS dataset of phantoms and run the app on it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from kwneuro_pydra.bids import DwiSeries, derivative_path, discover
from kwneuro_pydra.cli._common import positive_int
from kwneuro_pydra.cli.run import WORKERS
from kwneuro_pydra.resources import NiftiVolumeResource

__all__ = ["accuracy", "add_parser", "run"]


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to the command line."""
    parser = commands.add_parser(
        "demo", parents=parents, help="run the BIDS app on built-in phantom subjects",
        description="Write a BIDS dataset of DWI phantoms to OUTPUT/bids (some subjects with "
        "two sessions) and run `kwneuro-pydra run OUTPUT/bids OUTPUT/derivatives participant` "
        "on it. Run it twice: the second run is served from the cache.",
    )  # fmt: skip
    parser.add_argument("output", type=Path, help="folder for the dataset and derivatives")
    parser.add_argument(
        "--subjects", type=positive_int, default=4, metavar="N", help="phantom subjects (4)"
    )
    parser.add_argument("--worker", choices=WORKERS, default="cf", help="Pydra worker (cf)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the dataset, then run the app on it; return the app's exit status."""
    from kwneuro_pydra.cli import main
    from kwneuro_pydra.cli.run import _folder
    from kwneuro_pydra.workflows.demo import (
        DEMO_MASK_OPTIONS,
        write_demo_dataset,
    )

    output = _folder(args.output, "OUTPUT")
    bids_dir: Path = write_demo_dataset(output / "bids", subjects=args.subjects)
    derivatives = output / "derivatives"
    verbosity = ["-q"] if args.verbosity < 0 else ["-v"] * args.verbosity
    status: int = main([
        "run", str(bids_dir), str(derivatives), "participant", "--worker", args.worker,
        "--mask-median-radius", str(DEMO_MASK_OPTIONS["median_radius"]),
        "--mask-numpass", str(DEMO_MASK_OPTIONS["numpass"]), *verbosity,
    ])  # fmt: skip
    if args.verbosity >= 0:
        _print_accuracy(bids_dir, derivatives, args.subjects)
    return status


def _print_accuracy(bids_dir: Path, derivatives: Path, subjects: int) -> None:
    """Print each series' FA and MD error against the phantom's ground truth."""
    from rich.console import Console
    from rich.table import Table

    from kwneuro_pydra.workflows.demo import demo_truths

    table = Table(
        title="Error against the phantoms' ground truth (tissue in the mask)",
        title_justify="left",
    )
    for column in ("series", "voxels", "median |FA error|", "median |MD error| / MD"):
        table.add_column(column, justify="left" if column == "series" else "right")
    truths = demo_truths(subjects)
    for series in discover(bids_dir):
        error = accuracy(series, derivatives, truths[series.name])
        if error is not None:
            voxels, fa, md = error
            table.add_row(series.name, str(voxels), f"{fa:.4f}", f"{100 * md:.2f} %")
    Console(highlight=False).print(table)


def accuracy(series: DwiSeries, derivatives: Path, truth: Any) -> tuple[int, float, float] | None:
    """Compare a series' FA and MD derivatives with a phantom's truth.

    Args:
        series: The demo series.
        derivatives: The derivatives folder.
        truth: Its `kwneuro_pydra.workflows.phantom.PhantomTruth`.

    Returns:
        (tissue voxels in the brain mask, median absolute FA error, median relative MD error),
        or None when the series has no derivatives (it failed).
    """
    paths = [derivative_path(series, derivatives, name) for name in ("mask", "fa", "md")]
    if not all(path.is_file() for path in paths):
        return None
    mask, fa, md = (NiftiVolumeResource(path).get_array() for path in paths)
    inside = (mask > 0) & (truth.labels > 0)
    fa_error = np.abs(fa[inside] - truth.fa[inside])
    md_error = np.abs(md[inside] - truth.md[inside]) / truth.md[inside]
    return int(inside.sum()), float(np.median(fa_error)), float(np.median(md_error))

"""``kwneuro-pydra demo OUTPUT``: write a BIDS dataset of phantoms and run the app on it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kwneuro_pydra.cli._common import positive_int
from kwneuro_pydra.cli.run import WORKERS

__all__ = ["add_parser", "run"]


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
    from kwneuro_pydra.workflows.demo import (  # type: ignore[import-not-found,unused-ignore]
        DEMO_MASK_OPTIONS,
        write_demo_dataset,
    )

    output = _folder(args.output, "OUTPUT")
    bids_dir: Path = write_demo_dataset(output / "bids", subjects=args.subjects)
    verbosity = ["-q"] if args.verbosity < 0 else ["-v"] * args.verbosity
    status: int = main([
        "run", str(bids_dir), str(output / "derivatives"), "participant", "--worker", args.worker,
        "--mask-median-radius", str(DEMO_MASK_OPTIONS["median_radius"]),
        "--mask-numpass", str(DEMO_MASK_OPTIONS["numpass"]), *verbosity,
    ])  # fmt: skip
    return status

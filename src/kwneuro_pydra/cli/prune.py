"""``kwneuro-pydra prune``: remove crash leftovers and entries beyond a retention policy."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kwneuro_pydra.bids import stale_temporaries
from kwneuro_pydra.cache import Cache
from kwneuro_pydra.cli._common import plural, positive_float, positive_int
from kwneuro_pydra.cli._select import select

__all__ = ["add_parser", "run"]


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``prune`` to the command line."""
    parser = commands.add_parser(
        "prune",
        parents=parents,
        help="remove old entries and crash leftovers",
        description="Remove leftovers of crashed writes, and entries beyond --keep (per step) "
        "or older than --older-than-days, in one cache or every cache under a folder.",
    )
    parser.add_argument("cache_dir", help="a cache, or a folder of caches")
    parser.add_argument(
        "--keep", type=positive_int, metavar="N", help="keep the N newest entries per step (>= 1)"
    )
    parser.add_argument(
        "--older-than-days",
        type=positive_float,
        metavar="D",
        help="remove entries created more than D days ago (D > 0)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be removed, remove nothing"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Prune (or list what would go); return the exit status."""
    selection = select(args.cache_dir, [])
    older = args.older_than_days * 86400 if args.older_than_days is not None else None
    paths = []
    for folder in selection.caches:
        paths += Cache(folder).prune(keep=args.keep, older_than=older, dry_run=args.dry_run)
    for output_dir in {Path(args.cache_dir).absolute(), Path(args.cache_dir).absolute().parent}:
        if (output_dir / "dataset_description.json").is_file():  # OUTPUT_DIR, or inside it
            paths += [_discard(p, args.dry_run) for p in stale_temporaries(output_dir)]
    verb = "would remove" if args.dry_run else "removed"
    for path in paths:
        print(f"{verb} {path}")
    print(
        f"{plural(len(paths), 'folder')} {'would be ' if args.dry_run else ''}removed from "
        f"{selection.describe()}"
    )
    return 0


def _discard(path: Path, dry_run: bool) -> Path:
    """Remove ``path`` unless ``dry_run``; return it."""
    if not dry_run:
        path.unlink(missing_ok=True)
    return path

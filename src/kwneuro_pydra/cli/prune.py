"""``kwneuro-pydra prune``: remove crash leftovers and entries beyond a retention policy, and
what scheduler runs leave beside the caches (job cache run directories, old job record lines,
old subject logs).
"""

from __future__ import annotations

import argparse
import os
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
        "or older than --older-than-days, in one cache or every cache under a folder. Also "
        "prunes what runs leave beside the caches: Pydra's job cache (run-* folders no run "
        "holds; those a job record names after 7 days), the lines of WORK_DIR/.logs/"
        "slurm-jobs.tsv whose jobs ended long ago, and subject logs in WORK_DIR/.logs "
        "unchanged for --older-than-days (default 30).",
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
    records = _prune_scheduler(selection.root, selection.caches, older, args.dry_run, paths)
    verb = "would remove" if args.dry_run else "removed"
    for path in paths:
        print(f"{verb} {path}")
    for record, lines in records.items():
        drop = "would drop" if args.dry_run else "dropped"
        print(f"{drop} {plural(lines, 'line')} of jobs long ended from {record}")
    print(
        f"{plural(len(paths), 'folder')} {'would be ' if args.dry_run else ''}removed from "
        f"{selection.describe()}"
    )
    return 0


def _prune_scheduler(
    root: Path, caches: list[Path], older: float | None, dry_run: bool, paths: list[Path]
) -> dict[Path, int]:
    """Prune the job caches and ``.logs`` of the cache roots holding ``caches`` (and
    ``root``), adding what goes to ``paths``; return the job records' lines dropped.
    """
    from kwneuro_pydra.app import LOGS

    roots = {folder.parent for folder in caches} | {root}
    roots = {r for r in roots if (r / ".logs").is_dir()}
    job_caches = {  # the BIDS app's: OUTPUT_DIR/logs/pydra-<uid>, for OUTPUT_DIR given or above
        where / LOGS / f"pydra-{os.getuid()}" for where in (root, *(r.parent for r in roots))
    }
    job_caches = {j for j in job_caches if j.is_dir()}
    if not roots and not job_caches:
        return {}
    from kwneuro_pydra.pydra import prune_scheduler

    pruned = prune_scheduler(roots, job_caches, age=older, dry_run=dry_run)
    paths += pruned.paths
    return dict(pruned.records)


def _discard(path: Path, dry_run: bool) -> Path:
    """Remove ``path`` unless ``dry_run``; return it."""
    if not dry_run:
        path.unlink(missing_ok=True)
    return path

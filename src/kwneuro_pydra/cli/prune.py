"""``kwneuro-pydra prune``: remove crash leftovers and entries beyond a retention policy."""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import Any

from kwneuro_pydra.cache import Cache
from kwneuro_pydra.cli._common import plural, positive_float, positive_int
from kwneuro_pydra.cli._select import select

__all__ = ["add_parser", "run"]


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``prune`` to the command line."""
    parser = commands.add_parser(
        "prune", parents=parents, help="remove old entries and crash leftovers",
        description="Remove leftovers of crashed writes, and entries beyond --keep (per step) "
        "or older than --older-than-days, in one cache or every cache under a folder.",
    )  # fmt: skip
    parser.add_argument("cache_dir", help="a cache, or a folder of caches")
    parser.add_argument(
        "--keep", type=positive_int, metavar="N", help="keep the N newest entries per step (>= 1)"
    )
    parser.add_argument(
        "--older-than-days", type=positive_float, metavar="D",
        help="remove entries created more than D days ago (D > 0)",
    )  # fmt: skip
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be removed, remove nothing"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Prune (or list what would go); return the exit status."""
    selection = select(args.cache_dir, [])
    older = args.older_than_days * 86400 if args.older_than_days is not None else None
    if args.dry_run:
        doomed = _doomed(selection.caches, args.keep, older)
        for path in doomed:
            print(f"would remove {path}")
        print(f"{plural(len(doomed), 'entry', 'entries')} would be removed from "
              f"{selection.describe()} (crash leftovers not counted)")  # fmt: skip
        return 0
    removed = []
    for folder in selection.caches:
        removed += Cache(folder).prune(keep=args.keep, older_than=older)
    for path in removed:
        print(f"removed {path}")
    print(f"{plural(len(removed), 'folder')} removed from {selection.describe()}")
    return 0


def _doomed(caches: list[Any], keep: int | None, older: float | None) -> list[Any]:
    """What `Cache.prune` would remove for ``keep`` and ``older`` (its documented policy)."""
    cutoff = time.time() - older if older is not None else None
    doomed = []
    for folder in caches:
        cache = Cache(folder)
        for step in cache.steps():
            entries = cache.entries(step)  # oldest first
            chosen = entries[: max(len(entries) - keep, 0)] if keep is not None else []
            if cutoff is not None:
                chosen += [
                    e for e in entries if datetime.fromisoformat(e.created).timestamp() < cutoff
                ]
            doomed += sorted({e.path for e in chosen})
    return doomed

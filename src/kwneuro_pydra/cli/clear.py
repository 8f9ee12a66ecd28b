"""``kwneuro-pydra clear``: remove every entry (of some steps) after asking."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kwneuro_pydra.cache import Cache
from kwneuro_pydra.cli._common import UsageError, plural, size
from kwneuro_pydra.cli._select import select

__all__ = ["add_parser", "run"]


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``clear`` to the command line."""
    parser = commands.add_parser(
        "clear",
        parents=parents,
        help="remove every entry (of some steps)",
        description="Remove every entry, or those of the steps named, from one cache or every "
        "cache under a folder. Asks first unless --yes.",
    )
    parser.add_argument("cache_dir", help="a cache, or a folder of caches")
    parser.add_argument("steps", nargs="*", metavar="STEP", help="only these steps")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be removed, remove nothing"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Clear (after confirmation); return the exit status."""
    selection = select(args.cache_dir, args.steps)
    entries = selection.entries()
    what = (
        f"{plural(len(entries), 'entry', 'entries')} ({size(sum(e.nbytes for _, e in entries))})"
        f" of {plural(len(selection.steps), 'step')} in {selection.describe()}"
    )
    if args.dry_run:
        for _, entry in entries:
            print(f"would remove {entry.path}")
        print(f"{what} would be removed")
        return 0
    if not entries:
        print(f"nothing to remove in {selection.describe()}")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"would remove {what}: confirm with --yes (no terminal to ask on)")
        answer = input(f"Remove {what}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 0
    removed = sum(
        Cache(folder).clear(step)
        for folder in selection.caches
        for step in selection.steps
        if step in Cache(folder).steps()
    )
    print(f"{plural(removed, 'entry', 'entries')} removed from {selection.describe()}")
    return 0

"""``kwneuro-pydra ls``: list the entries of one cache or of every cache under a folder."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kwneuro_pydra._kwneuro import flat_cache_steps
from kwneuro_pydra.cli._common import plural, size
from kwneuro_pydra.cli._select import select

__all__ = ["add_parser", "run"]


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``ls`` to the command line."""
    parser = commands.add_parser(
        "ls",
        parents=parents,
        help="list cache entries",
        description="List the entries of a cache, or of every cache under a folder (such as "
        "a run's OUTPUT_DIR/.kwneuro-cache or the demo's output folder).",
    )
    parser.add_argument("cache_dir", help="a cache, or a folder of caches")
    parser.add_argument("steps", nargs="*", metavar="STEP", help="only these steps")
    parser.add_argument("--json", action="store_true", help="one JSON object per entry")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """List the entries; return the exit status."""
    selection = select(args.cache_dir, args.steps)
    entries = selection.entries()
    if args.json:
        for folder, entry in entries:
            print(
                json.dumps(
                    {
                        "cache": str(folder),
                        "step": entry.step,
                        "key": entry.key,
                        "path": str(entry.path),
                        "created": entry.created,
                        "duration": entry.duration,
                        "bytes": entry.nbytes,
                        "files": sorted(entry.files),
                        "scalars": entry.scalars,
                        "hashes": entry.hashes,
                    }
                )
            )
        return 0
    rows = [
        (
            selection.label(folder),
            entry.step,
            entry.key[:12],
            entry.created[:19].replace("T", " "),
            f"{entry.duration:.2f} s",
            size(entry.nbytes),
            " ".join(sorted(entry.files)),
        )
        for folder, entry in entries
    ]
    header = ("CACHE", "STEP", "KEY", "CREATED (UTC)", "TIME", "SIZE", "FILES")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [
            f"{c:>{w}}" if i in (4, 5) else f"{c:<{w}}"
            for i, (c, w) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        print("  ".join([*cells, row[-1]]))
    total = sum(entry.nbytes for _, entry in entries)
    print(f"{plural(len(entries), 'entry', 'entries')}, {size(total)}, in {selection.describe()}")
    for folder in dict.fromkeys([selection.root, *selection.caches]):
        if flat := flat_cache_steps(folder):
            print(
                f"{folder} also holds a flat kwneuro 1.0 cache ({', '.join(flat)}): not read "
                "here, its steps are computed once more (see docs/kwneuro.md)"
            )
    return 0

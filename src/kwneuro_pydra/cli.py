"""The ``kwneuro-pydra`` command: inspect and maintain caches, run the demo workflow."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from kwneuro_pydra.cache import Cache

__all__ = ["main"]


def _cache(directory: str) -> Cache:
    path = Path(directory)
    if not path.is_dir():
        raise SystemExit(f"kwneuro-pydra: no cache directory at {path}")
    return Cache(path)


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    raise AssertionError("unreachable")


def _ls(args: argparse.Namespace) -> int:
    cache = _cache(args.cache_dir)
    steps = [args.step] if args.step else cache.steps()
    for step in steps:
        for entry in cache.entries(step):
            if args.json:
                print(json.dumps({"step": step, "key": entry.key, "path": str(entry.path),
                                  "created": entry.created, "duration": entry.duration,
                                  "bytes": entry.nbytes, "scalars": entry.scalars,
                                  "hashes": entry.hashes}))  # fmt: skip
                continue
            scalars = " ".join(f"{k}={v!r}" for k, v in sorted(entry.scalars.items()))
            print(
                f"{step:<24} {entry.key[:12]}  {entry.created[:19]}  "
                f"{entry.duration:8.2f} s  {_size(entry.nbytes):>9}  {scalars}"
            )
    return 0


def _prune(args: argparse.Namespace) -> int:
    older = args.older_than_days * 86400 if args.older_than_days is not None else None
    removed = _cache(args.cache_dir).prune(keep=args.keep, older_than=older)
    for path in removed:
        print(f"removed {path}")
    print(f"{len(removed)} removed")
    return 0


def _clear(args: argparse.Namespace) -> int:
    print(f"{_cache(args.cache_dir).clear(args.step)} entries removed")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from kwneuro_pydra.workflows.demo import run_demo  # type: ignore[import-not-found,unused-ignore]

    status: int = run_demo(Path(args.output), subjects=args.subjects, worker=args.worker)
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kwneuro-pydra",
        description="Inspect and maintain kwneuro-pydra caches; run the demo DTI workflow.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    ls = commands.add_parser("ls", help="list the entries of a cache directory")
    ls.add_argument("cache_dir")
    ls.add_argument("step", nargs="?", help="only this step")
    ls.add_argument("--json", action="store_true", help="one JSON object per entry")
    ls.set_defaults(run=_ls)

    prune = commands.add_parser("prune", help="remove crash leftovers and old entries")
    prune.add_argument("cache_dir")
    prune.add_argument("--keep", type=int, help="keep this many newest entries per step")
    prune.add_argument("--older-than-days", type=float, help="remove entries older than this")
    prune.set_defaults(run=_prune)

    clear = commands.add_parser("clear", help="remove every entry (of one step)")
    clear.add_argument("cache_dir")
    clear.add_argument("step", nargs="?", help="only this step")
    clear.set_defaults(run=_clear)

    demo = commands.add_parser("demo", help="run the DTI workflow on built-in demo subjects")
    demo.add_argument("output", help="directory for the demo data and derivatives")
    demo.add_argument("--subjects", type=int, default=4, help="number of subjects (4)")
    demo.add_argument("--worker", default="cf", help="Pydra worker: cf (default) or debug")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kwneuro-pydra`` command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The process exit status.
    """
    args = _parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())

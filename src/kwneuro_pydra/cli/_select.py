"""Select caches and steps from a command line path and step names (ls, prune, clear)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kwneuro_pydra import Entry
from kwneuro_pydra.cache import Cache
from kwneuro_pydra.cli._common import UsageError, caches_under, plural

__all__ = ["Selection", "select"]


class Selection:
    """The caches under a path and the entries of the chosen steps.

    Attributes:
        root: The path given.
        caches: The cache folders found.
        steps: The chosen step names (every step when none was named).
    """

    def __init__(self, root: Path, caches: list[Path], steps: list[str]) -> None:
        self.root = root
        self.caches = caches
        self.steps = steps

    def entries(self) -> list[tuple[Path, Entry]]:
        """Every entry of the chosen steps as ``(cache folder, entry)``, cache by cache."""
        found: list[tuple[Path, Entry]] = []
        for folder in self.caches:
            cache = Cache(folder)
            for step in self.steps:
                found.extend((folder, entry) for entry in cache.entries(step))
        return found

    def describe(self) -> str:
        """``3 caches under ROOT`` or ``the cache ROOT``."""
        if self.caches == [self.root]:
            return f"the cache {self.root}"
        return f"{plural(len(self.caches), 'cache')} under {self.root}"

    def label(self, folder: Path) -> str:
        """A cache folder as shown in listings: relative to the path given, or ``.``."""
        return folder.relative_to(self.root).as_posix() if folder != self.root else "."


def select(path: str, steps: Sequence[str]) -> Selection:
    """Find the caches under ``path`` and check the step names against them.

    Args:
        path: The folder given on the command line.
        steps: Step names given (none: every step).

    Returns:
        The `Selection`.

    Raises:
        UsageError: No cache under ``path``, or a step name no cache there knows (the
            message lists the steps that exist).
    """
    root = Path(path).absolute()
    caches = caches_under(root)
    if not caches:
        raise UsageError(
            f"no kwneuro-pydra cache in {root} (a cache holds <step>/<key>/ entry folders; "
            "a run keeps its caches in OUTPUT_DIR/.kwneuro-cache)"
        )
    known = sorted({step for folder in caches for step in Cache(folder).steps()})
    unknown = [s for s in steps if s not in known]
    if unknown:
        raise UsageError(
            f"unknown step{'s' * (len(unknown) > 1)} {', '.join(unknown)}: "
            f"the steps in {root} are {', '.join(known)}"
        )
    return Selection(root, caches, list(steps) or known)

"""What every command shares: errors, wording, the console and logging, finding caches."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from kwneuro_pydra import app
from kwneuro_pydra.app import plural
from kwneuro_pydra.cache import Cache

__all__ = [
    "UsageError",
    "add_work_dir",
    "argument_type",
    "caches_under",
    "console",
    "logging_to_console",
    "natural",
    "plural",
    "positive_float",
    "positive_int",
    "setup_logging",
    "size",
]

_MAX_DEPTH = 3
T = TypeVar("T")


class UsageError(Exception):
    """A mistake in what the user asked for: one line on stderr, exit status 2."""


def add_work_dir(parser: Any, *, recorded: bool) -> None:
    """Add ``-w/--work-dir``, the cache folder, to ``parser`` (a parser or an argument group).

    Args:
        parser: Where to add it.
        recorded: The default is the one the last run into OUTPUT_DIR recorded (commands that
            look at earlier runs), else ``OUTPUT_DIR/.kwneuro-cache``; False: the latter only.
    """
    default = "the last run's, else " * recorded + "OUTPUT_DIR/.kwneuro-cache"
    parser.add_argument(
        "-w", "--work-dir", type=Path, metavar="DIR", help=f"the cache (default: {default})"
    )


def size(nbytes: float) -> str:
    """A byte count for people: ``512 B``, ``1.5 MB``.

    Args:
        nbytes: Bytes.

    Returns:
        The size with a decimal unit.
    """
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    raise AssertionError("unreachable")


def argument_type(convert: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a converter that raises ValueError: its message is shown."""

    def parse(text: str) -> T:
        try:
            return convert(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


positive_int = argument_type(app.positive_int)
"""Argument type: an integer of at least 1."""
natural = argument_type(app.natural)
"""Argument type: an integer of at least 0."""
positive_float = argument_type(app.positive_float)
"""Argument type: a number above 0."""


_CONSOLE = None


def console() -> "rich.console.Console":  # type: ignore[name-defined]  # noqa: F821, UP037
    """The stderr console that progress, tables and log lines share (never interleaved).

    Returns:
        A `rich.console.Console` on stderr.
    """
    global _CONSOLE
    from rich.console import Console

    if _CONSOLE is None or _CONSOLE.file is not sys.stderr:
        _CONSOLE = Console(stderr=True, highlight=False)
    return _CONSOLE


def _rich_handler() -> type[logging.Handler]:
    from rich.logging import RichHandler

    return RichHandler


class _ConsoleHandler(_rich_handler()):  # type: ignore[misc]
    """The command's log handler: rich's, on the shared console."""


class _ThisProcess(logging.Filter):
    """Let through only records of the process that set up logging.

    Pydra's ``cf`` workers are forked from it and inherit its handlers: their lines would
    cut into the live display. Their progress shows in the display, their failures in the
    summary.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pid = os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        return os.getpid() == self.pid


@contextlib.contextmanager
def logging_to_console(verbosity: int) -> Iterator[None]:
    """Route logging (and Python warnings) through the shared console for the context.

    Args:
        verbosity: -1 quiet (errors), 0 warnings, 1 ``-v`` (info), 2 ``-vv`` (debug).
    """
    root, pydra = logging.getLogger(), logging.getLogger("pydra")
    levels = root.level, pydra.level
    setup_logging(verbosity)
    if verbosity < 1:  # a failed subject is reported once, by the command, not by Pydra too
        pydra.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if isinstance(h, _ConsoleHandler)]:
            root.removeHandler(handler)
        root.setLevel(levels[0])
        pydra.setLevel(levels[1])
        logging.captureWarnings(False)
        warnings.formatwarning = _PYTHON_FORMAT


def setup_logging(verbosity: int) -> None:
    """Route logging (and Python warnings) through the shared console.

    Args:
        verbosity: -1 quiet (errors), 0 warnings, 1 ``-v`` (info), 2 ``-vv`` (debug).
    """
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = _ConsoleHandler(
        console=console(), show_time=verbosity > 0, show_path=verbosity > 1, markup=False
    )
    handler.addFilter(_ThisProcess())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ConsoleHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    warnings.formatwarning = _PYTHON_FORMAT if verbosity > 1 else _plain_warning


_PYTHON_FORMAT = warnings.formatwarning


def _plain_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """A warning as the command shows it: its class and message; where it was raised only
    with ``-vv``.
    """
    return f"{category.__name__}: {message}"


def _is_cache(path: Path) -> bool:
    if not path.is_dir():
        return False
    found = Cache(path)
    return any(found.entries(step) for step in found.steps())


def caches_under(path: Path) -> list[Path]:
    """The caches at ``path``: itself when it is one subject's cache, else those below it.

    A run's work folder (``OUTPUT_DIR/.kwneuro-cache``) holds one cache per series; the
    demo's output folder holds the work folder; both are searched a few levels deep.

    Args:
        path: A folder given on the command line.

    Returns:
        The cache folders, sorted (empty when there is none).

    Raises:
        UsageError: ``path`` does not exist or is not a folder.
    """
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder")
    return sorted(_walk(path, 0))


def _walk(path: Path, depth: int) -> Iterator[Path]:
    if _is_cache(path):
        yield path
        return
    if depth >= _MAX_DEPTH:
        return
    for child in sorted(path.iterdir()):
        if child.is_dir() and not child.name.startswith(".pydra"):
            yield from _walk(child, depth + 1)

"""Watch what the code under test asks of the operating system, through Python's audit hooks.

An audit hook stays for the life of the process: one is installed when this module is
imported, and it hands the events to the watchers active at the time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Watcher = Callable[[str, tuple[Any, ...]], None]

_WATCHERS: list[Watcher] = []


def _hook(event: str, args: tuple[Any, ...]) -> None:
    for watcher in tuple(_WATCHERS):
        watcher(event, args)


sys.addaudithook(_hook)


@contextmanager
def watching(watcher: Watcher) -> Iterator[None]:
    """Call ``watcher(event, args)`` on every audit event raised inside the block."""
    _WATCHERS.append(watcher)
    try:
        yield
    finally:
        _WATCHERS.remove(watcher)

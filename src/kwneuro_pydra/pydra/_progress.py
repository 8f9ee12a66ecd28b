"""The progress line `run_subjects` shows on stderr."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["progress_line"]


@contextlib.contextmanager
def progress_line(pydra_root: Path, show: bool | None, total: int) -> Iterator[None]:
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        yield
        return
    start, stop = time.time(), threading.Event()

    def line() -> str:
        done = failed = 0
        with contextlib.suppress(OSError):
            for job in pydra_root.glob("python-*"):
                with contextlib.suppress(OSError):
                    if (job / "_error.pklz").exists():
                        failed += 1
                    elif (job / "_result.pklz").stat().st_mtime >= start:
                        done += 1
        return (
            f"\r[kwneuro-pydra] {done}/{total} nodes computed, {failed} failed, "
            f"{time.time() - start:.1f} s"
        )

    def poll() -> None:
        while not stop.wait(0.5):
            sys.stderr.write(line())
            sys.stderr.flush()

    thread = threading.Thread(target=poll, name="kwneuro-pydra-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sys.stderr.write(line() + "\n")
        sys.stderr.flush()

"""Steps of the reliability tests, importable by name from child processes.

Every step counts its executions in `CALLS` (per process), so a test can tell a hit from a
recomputation.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import numpy as np

from kwneuro_pydra import CacheSpec, cacheable

CALLS: collections.Counter[str] = collections.Counter()


def _save(result: np.ndarray, directory: Path) -> None:
    np.save(directory / "out.npy", result)


def _load(directory: Path) -> np.ndarray:
    array: np.ndarray = np.load(directory / "out.npy")
    return array


NPY = CacheSpec(files=["out.npy"], save=_save, load=_load)


@cacheable(NPY)
def rl_square(n: int) -> np.ndarray:
    """``n * n`` in a one-element array."""
    CALLS["rl_square"] += 1
    return np.array([n * n])


@cacheable(NPY)
def rl_ramp(n: int, size: int) -> np.ndarray:
    """``size`` int64 values from ``n``: a result of ``8 * size`` bytes."""
    CALLS["rl_ramp"] += 1
    return np.arange(n, n + size, dtype=np.int64)


@cacheable(NPY)
def rl_total(path: Path) -> np.ndarray:
    """The sum of a file's bytes (its content, read now)."""
    CALLS["rl_total"] += 1
    return np.array([int(np.fromfile(path, dtype=np.uint8).sum())])


_INSIDE: list[int] = []


@cacheable(NPY)
def rl_itself(n: int) -> np.ndarray:
    """Calls itself once with its own arguments: the inner call returns ``[n]``, the outer
    ``[n + 1]``."""
    CALLS["rl_itself"] += 1
    if _INSIDE:
        return np.array([n])
    _INSIDE.append(n)
    try:
        return rl_itself(n) + 1
    finally:
        _INSIDE.pop()


@cacheable(NPY)
def rl_chain(n: int) -> np.ndarray:
    """``[n]``, counted up from ``rl_chain(n - 1)``: a chain of ``n`` nested steps."""
    CALLS["rl_chain"] += 1
    return np.array([0]) if n == 0 else rl_chain(n - 1) + 1


def _slow_save(result: np.ndarray, directory: Path) -> None:
    time.sleep(1.0)  # a wide window for another user to plant a link where it writes
    np.save(directory / "out.npy", result)


@cacheable(CacheSpec(files=["out.npy"], save=_slow_save, load=_load))
def rl_slow_save(n: int) -> np.ndarray:
    """``[n]``, saved a second after it is computed."""
    CALLS["rl_slow_save"] += 1
    return np.array([n])

"""Our cache on kwneuro 1.0's own steps: hit and miss, against kwneuro's cache and no cache.

Run ``python -m benchmarks.cases_kwneuro [--shape 96 96 60] [--directions 32]``. The input
is a phantom DWI written as NIfTI + FSL files and read with ``kwneuro.read_dwi_fsl`` (a
file-backed ``Dwi``, as a kwneuro script has it), and the same DWI loaded in memory
(``dwi.load()``: float64 arrays, which kwneuro fingerprints with ``tobytes()`` + sha256).
The step is kwneuro's ``Dti.estimate_dti`` (dipy's WLS tensor fit), adopted by our cache;
its fit is timed once, and the caches' own cost on a miss with a twin that returns the
precomputed tensors (a step decorated with kwneuro's ``cacheable``, adopted like kwneuro's).
Not part of ``benchmarks.run`` (needs the ``kwneuro`` extra).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kwneuro
from kwneuro.dti import Dti

import kwneuro_pydra
from kwneuro_pydra.workflows.phantom import write_phantom


def _seconds(call: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` calls, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cached(
    make_cache: Callable[[Path], Any], step: Callable[[Any], Any], dwi: Any, repeat: int
) -> tuple[float, float]:
    """(median miss, median hit) of ``step(dwi)``, each miss in a fresh cache directory."""
    misses, hits = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as directory, make_cache(Path(directory)):
            misses.append(_seconds(lambda: step(dwi), 1))
            hits.append(_seconds(lambda: step(dwi), repeat))
    return statistics.median(misses), statistics.median(hits)


_RESULT: list[Any] = []
"""The tensors `_no_compute` returns: computed once beforehand."""


@kwneuro.cacheable
def _no_compute(dwi: Any) -> Dti:
    """kwneuro's ``Dti.estimate_dti`` without its computation: its miss is the cache's cost
    (keying the input, saving the tensors, loading them back)."""
    return _RESULT[0]  # type: ignore[no-any-return]


def measure(shape: tuple[int, int, int], directions: int, repeat: int) -> list[tuple[str, ...]]:
    """Rows of (input, cache, fit, miss overhead, hit), formatted."""
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        paths = [Path(directory) / n for n in ("dwi.nii.gz", "dwi.bval", "dwi.bvec")]
        write_phantom(*paths, shape=shape, directions=directions)
        on_disk = kwneuro.read_dwi_fsl(*paths)
        inputs = {"file-backed Dwi": on_disk, "in-memory Dwi": on_disk.load()}
        fit = _seconds(lambda: _RESULT.append(Dti.estimate_dti(on_disk)), 1)
        rows.append(("file-backed Dwi", "no cache", f"{fit:.1f} s", "-", "-"))
        for label, dwi in inputs.items():
            for name, make_cache in (
                ("kwneuro.Cache", kwneuro.Cache),
                ("kwneuro_pydra.Cache", kwneuro_pydra.Cache),
            ):
                miss, hit = _cached(make_cache, _no_compute, dwi, repeat)
                rows.append((label, name, "-", f"{miss * 1e3:.0f} ms", f"{hit * 1e3:.2f} ms"))
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 60))
    parser.add_argument("--directions", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    print(
        f"Dti.estimate_dti on a {shape} x {args.directions + 2} phantom, kwneuro "
        f"{kwneuro.__version__}; medians of {args.repeat}"
    )
    print("| input | cache | tensor fit | miss overhead | hit |\n|---|---|---|---|---|")
    for row in measure(shape, args.directions, args.repeat):  # type: ignore[arg-type]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

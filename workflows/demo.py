"""Built-in demo data (synthetic DWI phantoms) and the demo run of the DTI workflow."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from kwneuro_pydra.resources import (
    Dwi,
    FslBvalResource,
    FslBvecResource,
    InMemoryBvalResource,
    InMemoryBvecResource,
    InMemoryVolumeResource,
    NiftiVolumeResource,
)

from .dti import dti_pipeline

__all__ = ["make_demo_subject", "run_demo"]


def _directions(count: int, rng: np.random.Generator) -> NDArray[np.float64]:
    vectors = rng.normal(size=(count, 3))
    unit: NDArray[np.float64] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit


def make_demo_subject(
    directory: Path, seed: int, *, shape: tuple[int, int, int] = (40, 40, 24)
) -> Dwi:
    """Write a synthetic DWI phantom (NIfTI + FSL b-values/b-vectors) and return it.

    The phantom is an ellipsoid of anisotropic tissue (a prolate tensor along x whose
    eigenvalues vary with ``seed``) in empty background, sampled with 2 b=0 and 30
    b=1000 volumes, with Gaussian noise. Existing files are reused.

    Args:
        directory: Where ``dwi.nii.gz``, ``dwi.bval`` and ``dwi.bvec`` go.
        seed: Random seed; different seeds give different subjects.
        shape: Spatial shape of the volume.

    Returns:
        The file-backed `Dwi`.
    """
    paths = [directory / f"dwi{suffix}" for suffix in (".nii.gz", ".bval", ".bvec")]
    if not all(p.exists() for p in paths):
        directory.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        bvals = np.array([0.0, 0.0] + [1000.0] * 30)
        bvecs = np.vstack([np.zeros((2, 3)), _directions(30, rng)])
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
        inside = ((grid / np.array([0.8, 0.7, 0.6])[:, None, None, None]) ** 2).sum(0) < 1
        l1, l2 = 1.5e-3 + 2e-4 * rng.random(), 3e-4 + 1e-4 * rng.random()
        attenuation = np.exp(-bvals * (l1 * bvecs[:, 0] ** 2 + l2 * (1 - bvecs[:, 0] ** 2)))
        signal = 1000.0 * inside[..., None] * attenuation + rng.normal(0, 10, (*shape, 32))
        volume = InMemoryVolumeResource(np.abs(signal).astype(np.float32), np.diag([2, 2, 2, 1]))
        NiftiVolumeResource.save(volume, paths[0])
        FslBvalResource.save(InMemoryBvalResource(bvals), paths[1])
        FslBvecResource.save(InMemoryBvecResource(bvecs), paths[2])
    return Dwi(NiftiVolumeResource(paths[0]), FslBvalResource(paths[1]), FslBvecResource(paths[2]))


def run_demo(output: Path, *, subjects: int = 4, worker: str = "cf") -> int:
    """Make demo subjects under ``output/data`` and run the DTI workflow over them in Pydra.

    Derivatives go to ``output/derivatives/<subject>/``. Run it twice: the second run is
    served from the cache.

    Args:
        output: Directory for data and derivatives.
        subjects: Number of demo subjects.
        worker: Pydra worker name.

    Returns:
        0 when every subject succeeded, 1 otherwise.
    """
    from kwneuro_pydra.pydra import run_subjects

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    inputs = {
        f"sub-{i + 1:02d}": {"dwi": make_demo_subject(output / "data" / f"sub-{i + 1:02d}", i)}
        for i in range(subjects)
    }
    start = time.perf_counter()
    results = run_subjects(dti_pipeline, inputs, output / "derivatives", worker=worker)
    elapsed = time.perf_counter() - start
    print(f"{'subject':<10} {'median FA':>10} {'median MD (mm2/s)':>18}")
    for subject, outcome in results.items():
        if not outcome.ok:
            print(f"{subject:<10} FAILED: {outcome.failure}")
            continue
        fa, md = (v.get_array() for v in outcome.outputs)
        print(f"{subject:<10} {np.median(fa[fa > 0]):>10.3f} {np.median(md[md > 0]):>18.2e}")
    print(f"{len(results)} subjects in {elapsed:.1f} s; derivatives in {output / 'derivatives'}")
    return 0 if all(r.ok for r in results.values()) else 1

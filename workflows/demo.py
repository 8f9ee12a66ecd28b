"""Built-in demo data (synthetic DWI phantoms) and the demo run of the DTI workflow."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

from kwneuro_pydra.resources import Dwi, FslBvalResource, FslBvecResource, NiftiVolumeResource

from .dti import dti_pipeline
from .phantom import write_phantom

__all__ = ["DEMO_MASK_OPTIONS", "make_demo_subject", "run_demo"]

DEMO_MASK_OPTIONS = {"median_radius": 2, "numpass": 2}
"""`dti_pipeline` mask options for demo subjects: dipy's defaults (radius 4, 4 passes) are
for brains about 60 voxels or more across and erode the 40 x 40 x 24 demo phantom's."""


def make_demo_subject(
    directory: Path, seed: int, *, shape: tuple[int, int, int] = (40, 40, 24)
) -> Dwi:
    """Write a synthetic DWI phantom (NIfTI + FSL b-values/b-vectors) and return it.

    The phantom is `kwneuro_pydra.workflows.phantom.write_phantom`'s (six tissue types
    with known tensors, curved bundles, Rician noise at SNR 30), sampled with 2 b=0 and 30
    b=1000 volumes. Existing files are reused.

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
        write_phantom(*paths, shape=shape, seed=seed)
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
        f"sub-{i + 1:02d}": {
            "dwi": make_demo_subject(output / "data" / f"sub-{i + 1:02d}", i),
            **DEMO_MASK_OPTIONS,
        }
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
        fa, md = outcome.outputs.fa.get_array(), outcome.outputs.md.get_array()
        print(f"{subject:<10} {np.median(fa[fa > 0]):>10.3f} {np.median(md[md > 0]):>18.2e}")
    print(f"{len(results)} subjects in {elapsed:.1f} s; derivatives in {output / 'derivatives'}")
    return 0 if all(r.ok for r in results.values()) else 1

"""Built-in demo data (DWI phantoms with known tensors) as loose files or as a BIDS dataset.

`write_demo_dataset` is what ``kwneuro-pydra demo`` runs the BIDS app on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from kwneuro_pydra.resources import (
    Dwi,
    FslBvalResource,
    FslBvecResource,
    InMemoryBvalResource,
    InMemoryBvecResource,
    NiftiVolumeResource,
)

from .phantom import PhantomTruth, fsl_bvecs, gradient_scheme, make_phantom, write_phantom

__all__ = [
    "DEMO_MASK_OPTIONS",
    "DEMO_NAME",
    "demo_truths",
    "make_demo_subject",
    "write_demo_dataset",
]

DEMO_NAME = "kwneuro-pydra demo phantoms"
"""The ``Name`` in the demo dataset's ``dataset_description.json``."""

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


def write_demo_dataset(
    root: Path,
    *,
    subjects: int = 4,
    shape: tuple[int, int, int] = (40, 40, 24),
    b0_volumes: int = 2,
    directions: int = 30,
) -> Path:
    """Write a BIDS dataset of DWI phantoms; every second subject has two sessions.

    Each series is a `make_phantom` subject of its own seed (by default 2 b=0 and 30 b=1000
    volumes, 2 mm voxels). All share one gradient table, stored once at the top
    (``dwi.bval``, ``dwi.bvec``) and found by BIDS inheritance. Existing images are reused.

    Args:
        root: The dataset folder.
        subjects: Number of subjects (``sub-01`` ...).
        shape: Spatial shape of each volume.
        b0_volumes: b=0 volumes per series.
        directions: b=1000 directions per series.

    Returns:
        ``root``.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": DEMO_NAME, "BIDSVersion": "1.10.0", "DatasetType": "raw"}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    bvals, bvecs = gradient_scheme(b0_volumes=b0_volumes, directions=directions)
    FslBvalResource.save(InMemoryBvalResource(bvals), root / "dwi.bval")
    fsl = fsl_bvecs(bvecs, np.diag([2.0, 2.0, 2.0, 1.0]))  # the images' affine (`Phantom.dwi`)
    FslBvecResource.save(InMemoryBvecResource(fsl), root / "dwi.bvec")
    for series in _demo_series(subjects):
        image = root / series.image
        if not image.exists():
            image.parent.mkdir(parents=True, exist_ok=True)
            phantom = make_phantom(
                shape, seed=series.seed, b0_volumes=b0_volumes, directions=directions
            )
            NiftiVolumeResource.save(phantom.dwi(2.0).volume, image)
    participants = ["participant_id", *(f"sub-{n:02d}" for n in range(1, subjects + 1))]
    (root / "participants.tsv").write_text("\n".join(participants) + "\n", encoding="utf-8")
    return root


def demo_truths(
    subjects: int = 4, *, shape: tuple[int, int, int] = (40, 40, 24)
) -> dict[str, PhantomTruth]:
    """The ground truth of every series `write_demo_dataset` writes, by series name.

    The phantoms are simulated again from their seeds (deterministic), so the truth needs
    no files of its own.

    Args:
        subjects: As given to `write_demo_dataset`.
        shape: As given to `write_demo_dataset`.

    Returns:
        Series name (``sub-02_ses-1``) -> its `PhantomTruth`.
    """
    return {
        series.name: make_phantom(shape, seed=series.seed).truth
        for series in _demo_series(subjects)
    }


class _DemoSeries(NamedTuple):
    name: str
    image: Path
    seed: int


def _demo_series(subjects: int) -> list[_DemoSeries]:
    """Every demo series: every second subject has two sessions; one seed per series."""
    found = []
    for number in range(1, subjects + 1):
        subject = f"sub-{number:02d}"
        sessions = ["ses-1", "ses-2"] if number % 2 == 0 else [None]
        for index, session in enumerate(sessions):
            name = "_".join(filter(None, (subject, session)))
            image = Path(subject, session or "", "dwi", f"{name}_dwi.nii.gz")
            found.append(_DemoSeries(name, image, 100 * number + index))
    return found

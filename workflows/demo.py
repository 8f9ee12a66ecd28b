"""Built-in demo data (synthetic DWI phantoms) as loose files or as a BIDS dataset.

`write_demo_dataset` is what ``kwneuro-pydra demo`` runs the BIDS app on.
"""

from __future__ import annotations

import json
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

__all__ = ["make_demo_subject", "write_demo_dataset"]

_BVALS = np.array([0.0, 0.0] + [1000.0] * 30)


def _directions(count: int, rng: np.random.Generator) -> NDArray[np.float64]:
    vectors = rng.normal(size=(count, 3))
    unit: NDArray[np.float64] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit


def _table(rng: np.random.Generator) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """2 b=0 and 30 b=1000 volumes with random directions."""
    return _BVALS, np.vstack([np.zeros((2, 3)), _directions(30, rng)])


def _phantom(
    shape: tuple[int, int, int],
    bvals: NDArray[np.float64],
    bvecs: NDArray[np.float64],
    rng: np.random.Generator,
) -> InMemoryVolumeResource:
    """An ellipsoid of anisotropic tissue (a prolate tensor along x whose eigenvalues vary
    with ``rng``) in empty background, with Gaussian noise; 2 mm voxels."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = ((grid / np.array([0.8, 0.7, 0.6])[:, None, None, None]) ** 2).sum(0) < 1
    l1, l2 = 1.5e-3 + 2e-4 * rng.random(), 3e-4 + 1e-4 * rng.random()
    attenuation = np.exp(-bvals * (l1 * bvecs[:, 0] ** 2 + l2 * (1 - bvecs[:, 0] ** 2)))
    signal = 1000.0 * inside[..., None] * attenuation + rng.normal(0, 10, (*shape, len(bvals)))
    return InMemoryVolumeResource(np.abs(signal).astype(np.float32), np.diag([2, 2, 2, 1]))


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
        bvals, bvecs = _table(rng)
        NiftiVolumeResource.save(_phantom(shape, bvals, bvecs, rng), paths[0])
        FslBvalResource.save(InMemoryBvalResource(bvals), paths[1])
        FslBvecResource.save(InMemoryBvecResource(bvecs), paths[2])
    return Dwi(NiftiVolumeResource(paths[0]), FslBvalResource(paths[1]), FslBvecResource(paths[2]))


def write_demo_dataset(
    root: Path, *, subjects: int = 4, shape: tuple[int, int, int] = (40, 40, 24)
) -> Path:
    """Write a BIDS dataset of DWI phantoms; every second subject has two sessions.

    All series share one gradient table, stored once at the top (``dwi.bval``,
    ``dwi.bvec``) and found by BIDS inheritance. Existing images are reused.

    Args:
        root: The dataset folder.
        subjects: Number of subjects (``sub-01`` ...).
        shape: Spatial shape of each volume.

    Returns:
        ``root``.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "kwneuro-pydra demo phantoms", "BIDSVersion": "1.10.0",
                    "DatasetType": "raw"}, indent=2) + "\n", encoding="utf-8",
    )  # fmt: skip
    bvals, bvecs = _table(np.random.default_rng(0))
    FslBvalResource.save(InMemoryBvalResource(bvals), root / "dwi.bval")
    FslBvecResource.save(InMemoryBvecResource(bvecs), root / "dwi.bvec")
    lines = ["participant_id"]
    for number in range(1, subjects + 1):
        subject = f"sub-{number:02d}"
        lines.append(subject)
        sessions = [f"ses-{s}" for s in (1, 2)] if number % 2 == 0 else [None]
        for index, session in enumerate(sessions):
            folder = root / subject / (session or "") / "dwi"
            image = folder / f"{'_'.join(filter(None, (subject, session)))}_dwi.nii.gz"
            if not image.exists():
                folder.mkdir(parents=True, exist_ok=True)
                rng = np.random.default_rng([number, index])
                NiftiVolumeResource.save(_phantom(shape, bvals, bvecs, rng), image)
    (root / "participants.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root

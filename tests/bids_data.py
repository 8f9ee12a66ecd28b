"""Small BIDS datasets for the BIDS app's tests: good phantoms and the bad inputs users have."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kwneuro_pydra.resources import (
    FslBvalResource,
    FslBvecResource,
    InMemoryBvalResource,
    InMemoryBvecResource,
    InMemoryVolumeResource,
    NiftiVolumeResource,
)
from kwneuro_pydra.workflows.demo import write_demo_dataset

SHAPE = (16, 16, 10)
MASK = ("--mask-median-radius", "1", "--mask-numpass", "1")
"""Brain mask options for phantoms this small (dipy's defaults erode them)."""


def good_dataset(root: Path, subjects: int = 3) -> Path:
    """The demo dataset at test size: sub-02 has two sessions; b-table at the top."""
    return write_demo_dataset(root, subjects=subjects, shape=SHAPE)


def add_series(
    root: Path,
    name: str,
    *,
    volumes: int = 8,
    table: int | None = 8,
    three_d: bool = False,
    b0: bool = True,
    folder: str = "dwi",
) -> Path:
    """Add ``sub-*/[ses-*/]dwi/<name>_dwi.nii.gz``; with ``table``, a b-table of that many
    rows beside it (None: no .bval/.bvec of its own)."""
    entities = dict(part.split("-", 1) for part in name.split("_"))
    directory = root / f"sub-{entities['sub']}"
    if "ses" in entities:
        directory /= f"ses-{entities['ses']}"
    directory /= folder
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name))
    shape = SHAPE if three_d else (*SHAPE, volumes)
    data = (100 + rng.random(shape) * 10).astype(np.float32)
    image = directory / f"{name}_dwi.nii.gz"
    NiftiVolumeResource.save(InMemoryVolumeResource(data, np.diag([2.0, 2, 2, 1])), image)
    if table is not None:
        bvals = np.full(table, 1000.0)
        if b0:
            bvals[0] = 0.0
        bvecs = rng.normal(size=(table, 3))
        bvecs /= np.linalg.norm(bvecs, axis=1, keepdims=True)
        bvecs[bvals == 0] = 0.0
        FslBvalResource.save(InMemoryBvalResource(bvals), directory / f"{name}_dwi.bval")
        FslBvecResource.save(InMemoryBvecResource(bvecs), directory / f"{name}_dwi.bvec")
    return image


def bare_dataset(root: Path) -> Path:
    """A dataset with only its description (no b-table at the top)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "test", "BIDSVersion": "1.10.0"}), encoding="utf-8"
    )
    return root

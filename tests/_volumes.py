"""Volumes as files: the file behind a cached volume, and what nibabel reads from a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib

from kwneuro_pydra.resources import NiftiVolumeResource


def path_of(volume: object) -> Path:
    """The NIfTI file of a volume served from a cache entry (a `NiftiVolumeResource`)."""
    assert isinstance(volume, NiftiVolumeResource), f"not a file-backed volume: {volume!r}"
    return volume.path


def nibabel_image(path: Path) -> Any:
    """``nib.load(path)``, typed for what the tests read from it (a NIfTI image)."""
    return nib.load(path)

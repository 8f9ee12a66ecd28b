"""An importable step and pipeline that consume a `DtiResult` (Pydra workers load them by name)."""

from __future__ import annotations

import numpy as np

from kwneuro_pydra import cacheable
from kwneuro_pydra.resources import Dwi, InMemoryVolumeResource, VolumeResource
from kwneuro_pydra.workflows import DtiResult, dti_pipeline


@cacheable
def white_matter(result: DtiResult, *, threshold: float = 0.3) -> VolumeResource:
    """Voxels whose FA is above ``threshold`` (uint8)."""
    fa = result.fa.get_array()
    return InMemoryVolumeResource((fa > threshold).astype(np.uint8), result.fa.get_affine())


def white_matter_pipeline(
    dwi: Dwi, *, fit_method: str = "WLS"
) -> tuple[DtiResult, VolumeResource]:
    """DTI of a small phantom (a small median filter), then its white matter."""
    result = dti_pipeline(dwi, fit_method=fit_method, median_radius=2, numpass=2)
    return result, white_matter(result)

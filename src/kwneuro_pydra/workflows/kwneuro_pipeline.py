"""kwneuro 1.0's own diffusion pipeline, unchanged, as one of our workflows.

`kwneuro_pipeline` calls kwneuro's decorated steps as any kwneuro script does (``Dwi.denoise``:
dipy's Patch2Self; ``Dti.estimate_dti``; ``estimate_response_function`` and
``compute_csd_peaks``) and our `brain_mask` (median-Otsu) between them.
It runs eagerly (plainly, inside ``with kwneuro_pydra.Cache(...)``, or inside kwneuro's own
``Cache``) and as a Pydra workflow through `kwneuro_pydra.pydra.to_workflow` or
`kwneuro_pydra.pydra.run_subjects`; every step call becomes a node, cached in our store.
Needs ``pip install 'kwneuro-pydra[kwneuro]'``.
"""

from __future__ import annotations

from typing import NamedTuple

from kwneuro.csd import compute_csd_peaks, estimate_response_function
from kwneuro.dti import Dti
from kwneuro.dwi import Dwi
from kwneuro.resource import VolumeResource

import kwneuro_pydra  # noqa: F401  (adopts kwneuro's steps before they are called)

from .dti import brain_mask

__all__ = ["KwneuroResult", "kwneuro_pipeline"]


class KwneuroResult(NamedTuple):
    """What `kwneuro_pipeline` returns (the outputs of its workflow, by these names).

    Attributes:
        denoised: The denoised DWI (kwneuro's ``Dwi``).
        mask: The brain mask (ours: a `kwneuro_pydra.resources.VolumeResource`).
        dti: The tensors (kwneuro's ``Dti``).
        peak_dirs: CSD peak directions, ``(x, y, z, n_peaks, 3)``.
        peak_values: CSD peak values, ``(x, y, z, n_peaks)``.
    """

    denoised: Dwi
    mask: object
    dti: Dti
    peak_dirs: VolumeResource
    peak_values: VolumeResource


def kwneuro_pipeline(
    dwi: Dwi,
    *,
    median_radius: int = 4,
    numpass: int = 4,
    fa_thr: float = 0.8,
    n_peaks: int = 5,
) -> tuple[Dwi, object, Dti, VolumeResource, VolumeResource]:
    """Denoise, mask, fit tensors and find CSD peaks of one kwneuro DWI.

    Args:
        dwi: The subject's DWI, as ``kwneuro.read_dwi_fsl`` reads it (ours is converted).
        median_radius: Radius of the mask's median filter in voxels (see `brain_mask`).
        numpass: Passes of the mask's median filter.
        fa_thr: FA threshold of the voxels the response function is estimated from
            (kwneuro's ``estimate_response_function``).
        n_peaks: CSD peaks per voxel.

    Returns:
        The denoised DWI, the brain mask, the tensors, the peak directions and values
        (in the order of `KwneuroResult`).
    """
    denoised = Dwi.denoise(dwi)
    mask = brain_mask(denoised, median_radius=median_radius, numpass=numpass)  # type: ignore[arg-type]
    dti = Dti.estimate_dti(denoised, mask)
    response = estimate_response_function(denoised, mask, fa_thr=fa_thr)
    peak_dirs, peak_values = compute_csd_peaks(denoised, mask, response, n_peaks=n_peaks)
    return denoised, mask, dti, peak_dirs, peak_values

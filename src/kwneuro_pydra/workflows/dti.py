"""Diffusion tensor imaging (DTI) for one subject: mean b0, brain mask, tensor maps.

The steps give dipy's numbers (``dipy.reconst.dti.TensorModel`` and
``dipy.segment.mask.median_otsu``; see ``tests/test_dti_dipy.py``) on real data without a
crash: the acquisition is checked first (`fitted_scheme`), and unusual voxels get documented
values with a warning. The numerics live in `kwneuro_pydra.workflows._tensor` (the fit) and
`kwneuro_pydra.workflows._mask` (the mask).
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from kwneuro_pydra.cache import cacheable
from kwneuro_pydra.resources import B0_THRESHOLD, Dwi, InMemoryVolumeResource, VolumeResource
from kwneuro_pydra.resources._files import source_of
from kwneuro_pydra.resources._kwneuro import from_kwneuro

from ._mask import b0_average, median_otsu
from ._result import DtiResult
from ._scheme import fitted_scheme
from ._tensor import MIN_POSITIVE_SIGNAL, FitMethod, design_matrix, fit_volume

__all__ = ["FIT_METHODS", "brain_mask", "dti_pipeline", "estimate_dti", "mean_b0"]

FIT_METHODS = ("WLS", "OLS")
"""The ``fit_method`` values of `estimate_dti`: dipy's weighted and ordinary least squares."""

_DESCRIPTIONS = {
    "fa": "fractional anisotropy",
    "md": "mean diffusivity mm2/s",
    "ad": "axial diffusivity mm2/s",
    "rd": "radial diffusivity mm2/s",
    "evals": "eigenvalues desc mm2/s",
    "evecs": "eigenvectors as columns",
    "tensor": "tensor Dxx Dxy Dyy Dxz Dyz Dzz mm2/s",
    "s0": "fitted b=0 signal",
    "color_fa": "colour FA RGB 0-1",
    "mean_b0": "mean b=0 image",
    "mask": "brain mask median-Otsu",
}
"""What each volume holds, for the ``descrip`` field of its NIfTI header."""

_MM, _SEC = 2, 8
"""NIfTI ``xyzt_units`` codes of millimetres and seconds."""


def _volume(array: NDArray[Any], dwi: Dwi, name: str, what: str) -> InMemoryVolumeResource:
    """A volume with the DWI's affine and spatial units, and a ``descrip`` of its content."""
    units = int(np.asarray(dwi.volume.get_metadata().get("xyzt_units", 0))) & 0x07
    metadata = {"xyzt_units": (units or _MM) | _SEC, "descrip": f"{what} {_DESCRIPTIONS[name]}"}
    return InMemoryVolumeResource(array, dwi.volume.get_affine(), metadata)


@cacheable
def mean_b0(dwi: Dwi) -> VolumeResource:
    """Average the b=0 volumes (b-value at most 50 s/mm²) of a DWI.

    Args:
        dwi: The diffusion-weighted image.

    Returns:
        A 3-D float32 volume with the DWI's affine.

    Raises:
        ValueError: The DWI has no b=0 volume.
    """
    return _volume(b0_average(dwi, step="mean_b0"), dwi, "mean_b0", "kwneuro-pydra")


@cacheable
def brain_mask(
    dwi: Dwi,
    *,
    median_radius: int = 4,
    numpass: int = 4,
    dilate: int = 0,
    finalize_mask: bool = True,
) -> VolumeResource:
    """A brain mask by median-Otsu (dipy's ``median_otsu``) of the mean b=0 image.

    ``numpass`` passes of a median filter over cubes of side ``2 * median_radius + 1``,
    Otsu's threshold of the result, ``dilate`` iterations of a 6-connected dilation, then
    (``finalize_mask``) the largest connected component with its holes filled. dipy's
    defaults, except that dipy does not finalize unless asked.

    Args:
        dwi: The diffusion-weighted image.
        median_radius: Radius of the median filter in voxels (0 for none).
        numpass: Passes of the median filter.
        dilate: Dilation iterations after thresholding (0 for none).
        finalize_mask: Keep the largest connected component and fill its holes.

    Returns:
        A 3-D uint8 volume (1 inside the brain) with the DWI's affine.

    Raises:
        ValueError: A parameter is negative, or the DWI has no b=0 volume.
    """
    for name, value in (("median_radius", median_radius), ("numpass", numpass),
                        ("dilate", dilate)):  # fmt: skip
        if int(value) != value or value < 0:
            raise ValueError(f"brain_mask: {name} must be a whole number >= 0, got {value!r}")
    mask = median_otsu(
        b0_average(dwi, step="brain_mask"),
        median_radius=int(median_radius),
        numpass=int(numpass),
        dilate=int(dilate),
        finalize=finalize_mask,
    )
    return _volume(mask.astype(np.uint8), dwi, "mask", "kwneuro-pydra")


@cacheable
def estimate_dti(
    dwi: Dwi,
    mask: VolumeResource | None = None,
    *,
    fit_method: str = "WLS",
    bmax: float = 1500.0,
) -> DtiResult:
    """Fit a diffusion tensor in every voxel of ``mask``, as dipy's ``TensorModel`` does.

    ``fit_method="WLS"`` (dipy's default) is one weighted least-squares pass of the
    log-signal with weights from an OLS first pass; ``"OLS"`` is dipy's ``"LS"``. Samples
    are raised to dipy's minimum signal (1e-4) before the logarithm, b-values are used as
    given, non-finite b-vectors of b=0 volumes count as 0, and eigenvalues are clipped
    below at dipy's floor (``1e-6 / max(b-matrix)``).

    The acquisition is checked first: b-values in s/mm², at least one b=0 volume, at least
    6 non-collinear directions among the volumes fitted. Of a multi-shell acquisition only
    the shells up to ``bmax`` are fitted, with a warning naming those left out; a single
    shell above ``bmax`` (dipy's ``small_25``, b=2000) is fitted as it is.

    Voxels are left at 0 in every map (FA 0, MD 0) when they are outside ``mask``, when no
    sample is above 0, or when a sample is NaN or infinite (a warning gives their count).
    Negative samples are raised to the minimum signal like any other (a warning gives the
    count of voxels that have them).

    Args:
        dwi: The diffusion-weighted image.
        mask: Voxels to fit (nonzero); every voxel when None.
        fit_method: ``"WLS"`` or ``"OLS"``.
        bmax: Highest shell to fit, in s/mm².

    Returns:
        The maps (`DtiResult`), float32, with the DWI's affine and spatial units.

    Raises:
        ValueError: ``fit_method`` is unknown; ``bmax`` is not above the b=0 threshold;
            the mask's shape differs from the DWI's; the acquisition cannot give a tensor
            (b-values in another unit, no b=0 volume, fewer than 6 non-collinear directions).
    """
    dwi, mask = from_kwneuro(dwi), None if mask is None else from_kwneuro(mask)  # kwneuro's too
    if fit_method not in FIT_METHODS:
        raise ValueError(
            f"estimate_dti: fit_method must be one of {', '.join(FIT_METHODS)}, got {fit_method!r}"
        )
    if not bmax > B0_THRESHOLD:
        raise ValueError(
            f"estimate_dti: bmax must be above the b=0 threshold ({B0_THRESHOLD:g} s/mm²), "
            f"got {bmax!r}"
        )
    scheme = fitted_scheme(dwi, bmax=bmax, step="estimate_dti")
    spatial = tuple(dwi.volume.get_shape()[:3])
    inside = np.ones(spatial, bool) if mask is None else np.asarray(mask.get_array()) != 0
    if inside.shape != spatial:
        raise ValueError(
            f"estimate_dti: mask shape {inside.shape} ({source_of(mask)}) differs from the "
            f"DWI's {spatial} ({source_of(dwi.volume)})"
        )
    design = design_matrix(scheme.bvals, scheme.bvecs)
    method = cast(FitMethod, fit_method)
    fit = fit_volume(dwi.volume.get_array(), inside, scheme.keep, design, method)
    where = source_of(dwi.volume)
    if fit.nonfinite:
        warnings.warn(
            f"estimate_dti: {fit.nonfinite} voxels of {where} have NaN or infinite samples; "
            "they are not fitted and all their maps are 0 (check the preprocessing that "
            "wrote the DWI, or pass a mask that leaves them out)",
            UserWarning,
            stacklevel=2,
        )
    if fit.negative:
        warnings.warn(
            f"estimate_dti: {fit.negative} voxels of {where} have negative samples; those "
            f"samples are raised to {MIN_POSITIVE_SIGNAL:g} before the fit, as dipy does",
            UserWarning,
            stacklevel=2,
        )
    what = f"kwneuro-pydra DTI {fit_method}"
    return DtiResult(**{name: _volume(a, dwi, name, what) for name, a in fit.maps.items()})


def dti_pipeline(
    dwi: Dwi,
    *,
    fit_method: str = "WLS",
    bmax: float = 1500.0,
    median_radius: int = 4,
    numpass: int = 4,
) -> DtiResult:
    """The per-subject DTI workflow: median-Otsu brain mask, then the tensor fit inside it.

    The mask's defaults are dipy's, chosen for brains about 60 voxels or more across; a
    smaller image (a phantom, a low-resolution scan) needs a smaller median filter.

    Args:
        dwi: The subject's diffusion-weighted image.
        fit_method: ``"WLS"`` or ``"OLS"`` (see `estimate_dti`).
        bmax: Highest shell to fit, in s/mm².
        median_radius: Radius of the mask's median filter in voxels (see `brain_mask`).
        numpass: Passes of the mask's median filter.

    Returns:
        The tensor maps.
    """
    mask = brain_mask(dwi, median_radius=median_radius, numpass=numpass)
    return estimate_dti(dwi, mask, fit_method=fit_method, bmax=bmax)

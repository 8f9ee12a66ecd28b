"""Diffusion tensor imaging (DTI) for one subject: mean b0, brain mask, tensor maps.

The steps give dipy's numbers (``dipy.reconst.dti.TensorModel``, and
``dipy.segment.mask.median_otsu`` for the ``median-otsu`` mask; see
``tests/test_dti_dipy.py``) on real data without a
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
from kwneuro_pydra.resources import (
    B0_THRESHOLD,
    Dwi,
    InMemoryVolumeResource,
    VolumeResource,
    from_kwneuro,
    source_of,
)

from ._mask import b0_average, group_means, median_otsu, shells_mask, volume_groups
from ._result import DtiResult, FitRecord
from ._scheme import SHELL_TOLERANCE, fitted_scheme
from ._tensor import MIN_POSITIVE_SIGNAL, FitMethod, design_matrix, fit_volume, world_rotation

__all__ = [
    "FIT_METHODS",
    "FRAMES",
    "MASK_METHODS",
    "brain_mask",
    "dti_pipeline",
    "estimate_dti",
    "mean_b0",
]

FIT_METHODS = ("WLS", "OLS")
"""The ``fit_method`` values of `estimate_dti`: dipy's weighted and ordinary least squares."""

MASK_METHODS = ("shells", "median-otsu")
"""The ``mask_method`` values of `brain_mask`: every volume, as MRtrix3's ``dwi2mask``
(the default), or dipy's ``median_otsu`` of the mean b=0 image."""

_MIN_MASK_FRACTION = 0.005
"""A mask of fewer voxels than this fraction of the image fails its step (an empty mask
would give all-zero maps and a "successful" series)."""

FRAMES = ("bvec", "world")
"""The ``frame`` values of `estimate_dti`: the eigenvectors' and tensor's coordinates."""

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
    "mask": "brain mask",
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
    mask_method: str = "shells",
    median_radius: int = 4,
    numpass: int = 4,
    dilate: int = 0,
    finalize_mask: bool = True,
    neighbourhood_mm: float = 4.0,
    bridge_mm: float = 8.0,
) -> VolumeResource:
    """A brain mask: brain tissue and the CSF inside the skull.

    ``mask_method="shells"`` (the default) uses every volume, as MRtrix3's ``dwi2mask``
    does: the mean b=0 image and the mean of each shell (a DSI-like scheme's b-values
    pooled six volumes or more at a time) are each thresholded (Otsu, then half-way
    between the tissue and the background around each voxel, within about
    ``neighbourhood_mm``), united, and cleaned: the largest connected component, its holes
    filled, the parts joined by bridges narrower than ``bridge_mm`` cut off.

    ``mask_method="median-otsu"`` is dipy's ``median_otsu`` of the mean b=0 image, exactly:
    ``numpass`` passes of a median filter over cubes of side ``2 * median_radius + 1``,
    Otsu's threshold of the result, ``dilate`` iterations of a 6-connected dilation, then
    (``finalize_mask``) the largest connected component with its holes filled. dipy's
    defaults, except that dipy does not finalize unless asked.

    Each method reads only its own parameters; the others' are accepted and ignored, so
    that one set of options serves both.

    Args:
        dwi: The diffusion-weighted image.
        mask_method: ``"shells"`` or ``"median-otsu"``.
        median_radius: median-otsu: radius of the median filter in voxels (0 for none).
        numpass: median-otsu: passes of the median filter.
        dilate: median-otsu: dilation iterations after thresholding (0 for none).
        finalize_mask: median-otsu: keep the largest connected component and fill its holes.
        neighbourhood_mm: shells: width (Gaussian standard deviation) of the neighbourhood
            of the local threshold, in mm (0 keeps Otsu's threshold).
        bridge_mm: shells: the widest bridge cut, in mm (0 cuts none).

    Returns:
        A 3-D uint8 volume (1 inside the brain) with the DWI's affine.

    Raises:
        ValueError: ``mask_method`` is unknown; a parameter is negative; median-otsu and the
            DWI has no b=0 volume; the mask is empty or holds less than 0.5 % of the image
            (the message names the DWI and what to try).
    """
    if mask_method not in MASK_METHODS:
        raise ValueError(
            f"brain_mask: mask_method must be one of {', '.join(MASK_METHODS)}, "
            f"got {mask_method!r}"
        )
    for name, value in (
        ("median_radius", median_radius),
        ("numpass", numpass),
        ("dilate", dilate),
    ):
        if int(value) != value or value < 0:
            raise ValueError(f"brain_mask: {name} must be a whole number >= 0, got {value!r}")
    for name, length in (("neighbourhood_mm", neighbourhood_mm), ("bridge_mm", bridge_mm)):
        if not length >= 0:
            raise ValueError(f"brain_mask: {name} must be a length >= 0 in mm, got {length!r}")
    if mask_method == "median-otsu":
        mask = median_otsu(
            b0_average(dwi, step="brain_mask"),
            median_radius=int(median_radius),
            numpass=int(numpass),
            dilate=int(dilate),
            finalize=finalize_mask,
        )
    else:
        images = group_means(dwi.volume.get_array(), volume_groups(np.asarray(dwi.bval.get())))
        voxel_size = np.linalg.norm(np.asarray(dwi.volume.get_affine())[:3, :3], axis=0)
        mask = shells_mask(
            images,
            voxel_size,
            neighbourhood_mm=float(neighbourhood_mm),
            bridge_mm=float(bridge_mm),
        )
    _check_not_empty(mask, dwi, mask_method)
    return _volume(mask.astype(np.uint8), dwi, "mask", f"kwneuro-pydra {mask_method}")


def _check_not_empty(mask: NDArray[np.bool_], dwi: Dwi, method: str) -> None:
    """Refuse an empty or near-empty mask, naming the DWI and what to try."""
    if mask.sum() >= max(1.0, _MIN_MASK_FRACTION * mask.size):
        return
    other = next(name for name in MASK_METHODS if name != method)
    raise ValueError(
        f"brain_mask: the {method} brain mask of {source_of(dwi.volume)} is "
        f"{'empty' if not mask.any() else 'nearly empty'} ({int(mask.sum())} of {mask.size} "
        f"voxels, under {_MIN_MASK_FRACTION:.1%}): check that the DWI holds a head with "
        f"signal in its volumes (not only background or zeros); try mask_method={other!r} "
        "(--mask-method in the CLI), or fit without a mask (estimate_dti(dwi, None))"
    )


@cacheable
def estimate_dti(
    dwi: Dwi,
    mask: VolumeResource | None = None,
    *,
    fit_method: str = "WLS",
    bmax: float = 1500.0,
    frame: str = "bvec",
    shell_tolerance: float = SHELL_TOLERANCE,
) -> DtiResult:
    """Fit a diffusion tensor in every voxel of ``mask``, as dipy's ``TensorModel`` does.

    ``fit_method="WLS"`` (dipy's default) is one weighted least-squares pass of the
    log-signal with weights from an OLS first pass; ``"OLS"`` is dipy's ``"LS"``. Samples
    are raised to dipy's minimum signal (1e-4) before the logarithm, b-values are used as
    given, non-finite b-vectors of b=0 volumes count as 0, and eigenvalues are clipped
    below at dipy's floor (``1e-6 / max(b-matrix)``).

    The acquisition is checked first (`fitted_scheme`): b-values in s/mm², at least 6
    non-collinear directions among the volumes fitted. b-values are grouped into shells
    (neighbours at most ``shell_tolerance`` apart) and a shell is fitted as a whole when its
    nominal (median) b-value is at most ``bmax``. Shells left out, a single shell above
    ``bmax`` (fitted, but biased), the lack of a b=0 volume (fitted as dipy does, S0
    extrapolated) and b-vectors normalised are each said by a warning and kept in the
    result's `FitRecord` (``result.fit.notes``) for the report and the sidecars.

    Voxels are 0 in every map outside ``mask``, and NaN in the voxels of the mask that
    cannot be fitted: no sample above 0, or a NaN or infinite sample (a warning gives their
    count; ``result.fit.unfitted`` too). Negative samples are raised to the minimum signal
    like any other (a warning gives the count of voxels that have them).

    Frames: the eigenvectors and the tensor are in the b-vectors' frame by default (dipy's:
    FSL's convention, see `DtiResult`), in world coordinates (MRtrix's) with
    ``frame="world"``; the colour FA is in world axes either way.

    Args:
        dwi: The diffusion-weighted image.
        mask: Voxels to fit (nonzero); every voxel when None.
        fit_method: ``"WLS"`` or ``"OLS"``.
        bmax: Highest nominal shell b-value to fit, in s/mm².
        frame: ``"bvec"`` or ``"world"``: the coordinates of ``evecs`` and ``tensor``.
        shell_tolerance: Largest gap between neighbouring b-values of one shell (s/mm²;
            dipy's 20 by default).

    Returns:
        The maps (`DtiResult`), float32, with the DWI's affine and spatial units, and the
        record of the fit.

    Raises:
        ValueError: ``fit_method`` or ``frame`` is unknown; ``bmax`` is not above the b=0
            threshold; ``shell_tolerance`` is negative; the mask's shape differs from the
            DWI's; the acquisition cannot give a tensor (b-values in another unit, no b=0
            volume and a single shell, fewer than 6 non-collinear directions).
    """
    dwi, mask = from_kwneuro(dwi), None if mask is None else from_kwneuro(mask)  # kwneuro's too
    if fit_method not in FIT_METHODS:
        raise ValueError(
            f"estimate_dti: fit_method must be one of {', '.join(FIT_METHODS)}, got {fit_method!r}"
        )
    if frame not in FRAMES:
        raise ValueError(f"estimate_dti: frame must be one of {', '.join(FRAMES)}, got {frame!r}")
    if not shell_tolerance >= 0:
        raise ValueError(
            f"estimate_dti: shell_tolerance must be >= 0 s/mm², got {shell_tolerance!r}"
        )
    if not bmax > B0_THRESHOLD:
        raise ValueError(
            f"estimate_dti: bmax must be above the b=0 threshold ({B0_THRESHOLD:g} s/mm²), "
            f"got {bmax!r}"
        )
    scheme = fitted_scheme(dwi, bmax=bmax, step="estimate_dti", shell_tolerance=shell_tolerance)
    spatial = tuple(dwi.volume.get_shape()[:3])
    inside = np.ones(spatial, bool) if mask is None else np.asarray(mask.get_array()) != 0
    if inside.shape != spatial:
        raise ValueError(
            f"estimate_dti: mask shape {inside.shape} ({source_of(mask)}) differs from the "
            f"DWI's {spatial} ({source_of(dwi.volume)})"
        )
    design = design_matrix(scheme.bvals, scheme.bvecs)
    method = cast(FitMethod, fit_method)
    fit = fit_volume(
        dwi.volume.get_array(),
        inside,
        scheme.keep,
        design,
        method,
        rotation=world_rotation(dwi.volume.get_affine()),
        world=frame == "world",
    )
    where = source_of(dwi.volume)
    notes = list(scheme.notes)
    if fit.nonfinite:
        notes.append(
            f"estimate_dti: {fit.nonfinite} voxels of {where} have NaN or infinite samples; "
            "they are not fitted and all their maps are NaN (check the preprocessing that "
            "wrote the DWI, or pass a mask that leaves them out)"
        )
    if fit.empty and mask is not None:  # without a mask, an empty background is expected
        notes.append(
            f"estimate_dti: {fit.empty} voxels of {where} have no sample above 0; they are "
            "not fitted and all their maps are NaN"
        )
    if fit.negative:
        notes.append(
            f"estimate_dti: {fit.negative} voxels of {where} have negative samples; those "
            f"samples are raised to {MIN_POSITIVE_SIGNAL:g} before the fit, as dipy does"
        )
    for note in notes[len(scheme.notes) :]:
        warnings.warn(note, UserWarning, stacklevel=2)
    record = FitRecord(
        method=fit_method,
        frame=frame,
        bmax=float(bmax),
        shell_tolerance=float(shell_tolerance),
        b0_volumes=scheme.b0_volumes,
        shells=tuple((s.bval, s.volumes) for s in scheme.fitted),
        left_out=tuple((s.bval, s.volumes) for s in scheme.left_out),
        unfitted=fit.unfitted,
        notes=tuple(notes),
    )
    what = f"kwneuro-pydra DTI {fit_method} {frame} frame"
    maps = {name: _volume(a, dwi, name, what) for name, a in fit.maps.items()}
    return DtiResult(**maps, fit=record)


def dti_pipeline(
    dwi: Dwi,
    *,
    fit_method: str = "WLS",
    bmax: float = 1500.0,
    mask_method: str = "shells",
    median_radius: int = 4,
    numpass: int = 4,
) -> DtiResult:
    """The per-subject DTI workflow: a brain mask, then the tensor fit inside it.

    The median-otsu mask's defaults are dipy's, chosen for brains about 60 voxels or more
    across; a smaller image (a phantom, a low-resolution scan) needs a smaller median
    filter. The shells mask's parameters are in mm and need no such care.

    Args:
        dwi: The subject's diffusion-weighted image.
        fit_method: ``"WLS"`` or ``"OLS"`` (see `estimate_dti`).
        bmax: Highest shell to fit, in s/mm².
        mask_method: ``"shells"`` or ``"median-otsu"`` (see `brain_mask`).
        median_radius: median-otsu: radius of the median filter in voxels.
        numpass: median-otsu: passes of the median filter.

    Returns:
        The tensor maps.
    """
    mask = brain_mask(dwi, mask_method=mask_method, median_radius=median_radius, numpass=numpass)
    return estimate_dti(dwi, mask, fit_method=fit_method, bmax=bmax)

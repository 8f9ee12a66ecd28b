"""The BIDS app's per-series pipeline: DTI maps, brain mask, and the report's figures and numbers.

Built only from `cacheable` steps, so a rerun reuses every map and figure. The outputs are
named by `OUTPUTS`; `kwneuro_pydra.bids.DERIVATIVES` names the maps in the derivatives.
"""

from __future__ import annotations

from kwneuro_pydra.cache import cacheable
from kwneuro_pydra.report import (
    PNG,
    STATS,
    Png,
    SeriesStats,
    b0_mosaic,
    gradient_sphere,
    map_mosaic,
    summarise,
)
from kwneuro_pydra.resources import Dwi, VolumeResource

from ._result import DtiResult
from .dti import brain_mask, estimate_dti, mean_b0

__all__ = [
    "FIGURES",
    "OUTPUTS",
    "STEPS",
    "bids_dti",
    "color_fa_mosaic",
    "dti_statistics",
    "fa_mosaic",
    "md_mosaic",
]


@cacheable(STATS)
def dti_statistics(dwi: Dwi, mask: VolumeResource, dti: DtiResult) -> SeriesStats:
    """The report's numbers of a series (see `kwneuro_pydra.report.summarise`).

    Args:
        dwi: The DWI.
        mask: The brain mask.
        dti: The tensor maps.

    Returns:
        The `SeriesStats`.
    """
    return summarise(dwi, mask, dti.fa, dti.md, fit=dti.fit)


@cacheable(PNG)
def fa_mosaic(dti: DtiResult, mask: VolumeResource) -> Png:
    """FA (black 0 to white 1) in three planes.

    Args:
        dti: The tensor maps.
        mask: The brain mask.

    Returns:
        The PNG.
    """
    return map_mosaic(dti.fa, mask, label="FA (no unit)")


@cacheable(PNG)
def md_mosaic(dti: DtiResult, mask: VolumeResource) -> Png:
    """MD (viridis, 0 to 3e-3 mm²/s) in three planes.

    Args:
        dti: The tensor maps.
        mask: The brain mask.

    Returns:
        The PNG.
    """
    return map_mosaic(dti.md, mask, high=3e-3, colormap="viridis", label="MD (mm²/s)")


@cacheable(PNG)
def color_fa_mosaic(dti: DtiResult, mask: VolumeResource) -> Png:
    """Colour FA (red left-right, green anterior-posterior, blue inferior-superior).

    Args:
        dti: The tensor maps.
        mask: The brain mask.

    Returns:
        The PNG.
    """
    return map_mosaic(dti.color_fa, mask)


OUTPUTS = (
    "b0",
    "mask",
    "dti",
    "stats",
    "b0_mosaic",
    "fa_mosaic",
    "color_fa_mosaic",
    "md_mosaic",
    "gradients",
)
"""Names of `bids_dti`'s outputs, in order."""

FIGURES = {
    "b0_mosaic": ("b0mask", "Mean b0 with the brain mask outline (red); sagittal, coronal, axial"),
    "fa_mosaic": ("fa", "Fractional anisotropy (0 black, 1 white)"),
    "color_fa_mosaic": (
        "colorfa",
        "Colour FA: red left-right, green anterior-posterior, blue inferior-superior",
    ),
    "md_mosaic": ("md", "Mean diffusivity (viridis, 0 to 3·10⁻³ mm²/s)"),
    "gradients": ("gradients", "Gradient table: directions and antipodes at radius b / b-max"),
}
"""Figure outputs -> (``desc`` label of the figure file, caption), in the report's order."""

STEPS = (
    mean_b0,
    gradient_sphere,
    brain_mask,
    estimate_dti,
    dti_statistics,
    b0_mosaic,
    fa_mosaic,
    color_fa_mosaic,
    md_mosaic,
)
"""The steps `bids_dti` calls, in order."""


def bids_dti(
    dwi: Dwi,
    *,
    fit_method: str = "WLS",
    bmax: float = 1500.0,
    mask_method: str = "shells",
    median_radius: int = 4,
    numpass: int = 4,
) -> tuple[VolumeResource, VolumeResource, DtiResult, SeriesStats, Png, Png, Png, Png, Png]:
    """Fit DTI inside a brain mask and render the series' report figures.

    Args:
        dwi: The series' diffusion-weighted image.
        fit_method: ``"WLS"`` or ``"OLS"`` (see `estimate_dti`).
        bmax: Highest shell to fit, in s/mm².
        mask_method: ``"shells"`` or ``"median-otsu"`` (see `brain_mask`).
        median_radius: median-otsu: radius of the median filter in voxels.
        numpass: median-otsu: passes of the median filter.

    Returns:
        The outputs named by `OUTPUTS`: mean b0, mask, tensor maps, numbers, five figures.
    """
    b0 = mean_b0(dwi)
    gradients = gradient_sphere(dwi)
    mask = brain_mask(dwi, mask_method=mask_method, median_radius=median_radius, numpass=numpass)
    dti = estimate_dti(dwi, mask, fit_method=fit_method, bmax=bmax)
    stats = dti_statistics(dwi, mask, dti)
    return (
        b0,
        mask,
        dti,
        stats,
        b0_mosaic(b0, mask),
        fa_mosaic(dti, mask),
        color_fa_mosaic(dti, mask),
        md_mosaic(dti, mask),
        gradients,
    )

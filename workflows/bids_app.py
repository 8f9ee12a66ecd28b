"""The BIDS app's per-series pipeline: DTI maps, brain mask, and the report's figures and numbers.

Built only from `cacheable` steps, so a rerun reuses every map and figure. The outputs are
named by `OUTPUTS`; `kwneuro_pydra.bids.DERIVATIVES` maps them to BIDS-Derivatives names.
"""

from __future__ import annotations

from typing import Any

from kwneuro_pydra.report import (
    Png,
    SeriesStats,
    b0_mosaic,
    dti_statistics,
    fa_mosaic,
    gradient_sphere,
    md_mosaic,
)
from kwneuro_pydra.resources import Dwi, VolumeResource

from .dti import brain_mask, estimate_dti, mean_b0

__all__ = ["FIGURES", "OUTPUTS", "STEPS", "bids_dti"]

OUTPUTS = ("b0", "mask", "fa", "md", "stats", "b0_mosaic", "fa_mosaic", "md_mosaic", "gradients")
"""Names of `bids_dti`'s outputs, in order."""

FIGURES = {
    "b0_mosaic": ("b0mask", "Mean b0 with the brain mask outline (red); sagittal, coronal, axial"),
    "fa_mosaic": ("fa", "Fractional anisotropy (0 black, 1 white)"),
    "md_mosaic": ("md", "Mean diffusivity (viridis, 0 to 3·10⁻³ mm²/s)"),
    "gradients": ("gradients", "Gradient table: directions and antipodes at radius b / b-max"),
}
"""Figure outputs -> (``desc`` label of the figure file, caption), in the report's order."""

STEPS: tuple[Any, ...] = (
    mean_b0, gradient_sphere, brain_mask, estimate_dti, dti_statistics, b0_mosaic, fa_mosaic,
    md_mosaic,
)  # fmt: skip
"""The steps `bids_dti` calls, in order."""


def bids_dti(dwi: Dwi) -> tuple[
    VolumeResource, VolumeResource, VolumeResource, VolumeResource, SeriesStats,
    Png, Png, Png, Png,
]:  # fmt: skip
    """Fit DTI inside a brain mask and render the series' report figures.

    Args:
        dwi: The series' diffusion-weighted image.

    Returns:
        The outputs named by `OUTPUTS`: mean b0, mask, FA, MD, the numbers and four figures.
    """
    b0 = mean_b0(dwi)
    gradients = gradient_sphere(dwi)
    mask = brain_mask(dwi)
    fa, md = estimate_dti(dwi, mask=mask)
    stats = dti_statistics(dwi, mask, fa, md)
    return (
        b0, mask, fa, md, stats, b0_mosaic(b0, mask), fa_mosaic(fa, mask), md_mosaic(md, mask),
        gradients,
    )  # fmt: skip

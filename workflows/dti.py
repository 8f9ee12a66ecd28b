"""Diffusion tensor imaging (DTI) for one subject: mean b0, brain mask, FA and MD maps.

The tensor fit is the classic log-linear least squares of the Stejskal-Tanner equation
``S = S0 exp(-b g^T D g)``, vectorised over the voxels of the mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from kwneuro_pydra.cache import CacheSpec, cacheable
from kwneuro_pydra.resources import (
    B0_THRESHOLD,
    Dwi,
    InMemoryVolumeResource,
    NiftiVolumeResource,
    VolumeResource,
)

__all__ = ["brain_mask", "dti_pipeline", "estimate_dti", "mean_b0"]

DtiMaps = tuple[VolumeResource, VolumeResource]


def _b0_mean(dwi: Dwi) -> NDArray[np.float32]:
    data = dwi.volume.get_array()
    b0 = np.asarray(dwi.bval.get()) <= B0_THRESHOLD
    if not b0.any():
        raise ValueError("mean_b0: the DWI has no b=0 volume")
    return np.asarray(data[..., b0].mean(axis=-1), dtype=np.float32)


@cacheable
def mean_b0(dwi: Dwi) -> VolumeResource:
    """Average the b=0 volumes of a DWI.

    Args:
        dwi: The diffusion-weighted image.

    Returns:
        A 3-D float32 volume with the DWI's affine.

    Raises:
        ValueError: The DWI has no b=0 volume.
    """
    return InMemoryVolumeResource(_b0_mean(dwi), dwi.volume.get_affine())


@cacheable
def brain_mask(dwi: Dwi, threshold: float = 0.2) -> VolumeResource:
    """Mask the voxels whose mean b0 exceeds ``threshold`` times its 99th percentile.

    Args:
        dwi: The diffusion-weighted image.
        threshold: Fraction of the robust maximum of the mean b0 (0 to 1).

    Returns:
        A 3-D uint8 volume (1 inside the brain) with the DWI's affine.

    Raises:
        ValueError: ``threshold`` is not between 0 and 1.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"brain_mask: threshold must be between 0 and 1, got {threshold}")
    b0 = _b0_mean(dwi)
    mask = b0 > threshold * np.percentile(b0, 99)
    return InMemoryVolumeResource(mask.astype(np.uint8), dwi.volume.get_affine())


def _save_maps(maps: DtiMaps, directory: Path) -> None:
    for volume, name in zip(maps, ("fa", "md"), strict=True):
        NiftiVolumeResource.save(volume, directory / f"{name}.nii.gz")


def _load_maps(directory: Path) -> DtiMaps:
    fa, md = (NiftiVolumeResource(directory / f"{name}.nii.gz") for name in ("fa", "md"))
    return fa, md


@cacheable(CacheSpec(files=["fa.nii.gz", "md.nii.gz"], save=_save_maps, load=_load_maps))
def estimate_dti(dwi: Dwi, mask: VolumeResource | None = None) -> DtiMaps:
    """Fit a diffusion tensor in every voxel of ``mask``; return its FA and MD maps.

    Args:
        dwi: The diffusion-weighted image (at least 6 weighted directions and one b=0).
        mask: Voxels to fit (nonzero); every voxel when None.

    Returns:
        Fractional anisotropy (0 to 1) and mean diffusivity (mm^2/s) as float32 volumes.

    Raises:
        ValueError: Fewer than 7 volumes, or a mask whose shape differs from the DWI's.
    """
    data = dwi.volume.get_array()
    if data.shape[-1] < 7:
        raise ValueError(f"estimate_dti: needs at least 7 volumes, got {data.shape[-1]}")
    inside = np.ones(data.shape[:3], bool) if mask is None else mask.get_array() != 0
    if inside.shape != data.shape[:3]:
        raise ValueError(
            f"estimate_dti: mask shape {inside.shape} differs from the DWI's {data.shape[:3]}"
        )
    eigenvalues = _fit_eigenvalues(
        data[inside], np.asarray(dwi.bval.get(), np.float64), np.asarray(dwi.bvec.get())
    )
    fa, md = np.zeros((2, *inside.shape), np.float32)
    fa[inside], md[inside] = _fa_md(eigenvalues)
    affine = dwi.volume.get_affine()
    return InMemoryVolumeResource(fa, affine), InMemoryVolumeResource(md, affine)


def _fit_eigenvalues(
    signal: NDArray[np.floating], bvals: NDArray[np.float64], bvecs: NDArray[np.float64]
) -> NDArray[np.float64]:
    gx, gy, gz = np.asarray(bvecs, np.float64).T
    design = (
        np.stack([gx * gx, gy * gy, gz * gz, 2 * gx * gy, 2 * gx * gz, 2 * gy * gz], axis=1)
        * -bvals[:, None]
    )
    design = np.column_stack([design, np.ones_like(bvals)])
    log_signal = np.log(np.maximum(np.asarray(signal, np.float64), 1e-6))
    coefficients = log_signal @ np.linalg.pinv(design).T
    xx, yy, zz, xy, xz, yz = coefficients[:, :6].T
    tensors = np.stack([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]]).transpose(2, 0, 1)
    return np.clip(np.linalg.eigvalsh(tensors), 0.0, None)


def _fa_md(eigenvalues: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    md = eigenvalues.mean(axis=1)
    spread = np.sqrt(((eigenvalues - md[:, None]) ** 2).sum(axis=1))
    norm = np.sqrt((eigenvalues**2).sum(axis=1))
    fa = np.sqrt(1.5) * np.divide(spread, norm, out=np.zeros_like(norm), where=norm > 0)
    return fa, md


def dti_pipeline(dwi: Dwi) -> DtiMaps:
    """The per-subject DTI workflow: brain mask, then the tensor fit inside it.

    Args:
        dwi: The subject's diffusion-weighted image.

    Returns:
        FA and MD maps.
    """
    mask = brain_mask(dwi)
    return estimate_dti(dwi, mask=mask)

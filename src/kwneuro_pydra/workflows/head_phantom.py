"""A realistic head phantom for judging brain masks: MNI152 brain, CSF, skull and scalp.

Brain tissue comes from the MNI152 2009a grey- and white-matter probability maps that
nilearn ships inside its package (``nilearn/datasets/data``; nothing is downloaded), at
1 mm. Around them, built from a smooth envelope of the brain:

- CSF fills the space between the brain and the inner surface of the skull (2.5 mm beyond
  the envelope) and the ventricles (everything inside that surface that is not tissue);
- the skull is a 6 mm shell of almost no signal;
- the scalp is a 6 mm shell with its own b=0 signal and diffusion.

Every tissue is mixed by its fraction in each voxel (partial volume, by averaging the 1 mm
maps over the voxel), so the phantom can be written at 2 mm or at anisotropic
2 x 2 x 3 mm. White matter is a cylindrically symmetric tensor along the direction in which
the white-matter map changes least (the smallest eigenvector of its structure tensor).

The true brain mask is the intracranial volume: voxels at least half inside the skull's
inner surface (brain tissue, ventricles and the CSF around the brain), the same content as
MRtrix3's ``dwi2mask`` ("both brain tissue and CSF").

======  =============  ===================  ====================================
tissue  b=0 signal     diffusivity (1e-3)   notes
======  =============  ===================  ====================================
GM      1100           0.85 (isotropic)
WM      1000           1.6, 0.4, 0.4        along the white matter's structure
CSF     2200           3.0 (isotropic)      bright at b=0, dark at b=1000
skull   60             0.5 (isotropic)
scalp   650            1.2 (isotropic)
======  =============  ===================  ====================================

A smooth multiplicative bias (a receive-coil profile, +- ``bias``) is applied, then Rician
noise of standard deviation ``1000 / snr``.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage  # type: ignore[import-untyped]

from kwneuro_pydra.resources import (
    Dwi,
    FslBvalResource,
    FslBvecResource,
    InMemoryBvalResource,
    InMemoryBvecResource,
    InMemoryVolumeResource,
    NiftiVolumeResource,
    PathLike,
)

from .phantom import gradient_scheme

__all__ = ["HEAD_TISSUES", "HeadPhantom", "make_head_phantom", "write_head_phantom"]

HEAD_TISSUES = ("grey matter", "white matter", "CSF", "skull", "scalp")
"""The tissues of `HeadPhantom.fractions`, in order."""

_S0 = np.array([1100.0, 1000.0, 2200.0, 60.0, 650.0])
_DIFFUSIVITY = np.array([0.85e-3, np.nan, 3.0e-3, 0.5e-3, 1.2e-3])  # white matter: _WM_*
_WM_AXIAL, _WM_RADIAL = 1.6e-3, 0.4e-3
_REFERENCE_SIGNAL = 1000.0
"""The b=0 signal of white matter; the noise is this divided by the SNR."""
_CSF_MM, _SKULL_MM, _SCALP_MM = 2.5, 6.0, 6.0
"""Thickness of the CSF beyond the brain's envelope, of the skull and of the scalp."""
_MARGIN_MM = 4.0
"""Background kept around the scalp."""


@dataclass(frozen=True)
class HeadPhantom:
    """A head phantom held in memory.

    Attributes:
        signal: The noisy DWI, float32, (x, y, z, volumes), non-negative.
        bvals: b-values in s/mm².
        bvecs: Unit b-vectors ((0, 0, 0) for b=0), (volumes, 3).
        affine: Voxel to world (RAS, mm) transform.
        brain: The true brain mask (intracranial volume), boolean.
        fractions: Fraction of each tissue of `HEAD_TISSUES` per voxel, (x, y, z, 5).
    """

    signal: NDArray[np.float32]
    bvals: NDArray[np.float64]
    bvecs: NDArray[np.float64]
    affine: NDArray[np.float64]
    brain: NDArray[np.bool_]
    fractions: NDArray[np.float32]

    def dwi(self, dtype: str = "float32") -> Dwi:
        """Return the phantom as an in-memory `Dwi`.

        Args:
            dtype: ``"float32"``, or ``"int16"`` (rounded, as scanners write).

        Returns:
            The `Dwi`.

        Raises:
            ValueError: ``dtype`` is neither.
        """
        if dtype == "float32":
            signal: NDArray[np.generic] = self.signal
        elif dtype == "int16":
            signal = np.clip(np.rint(self.signal), 0, np.iinfo(np.int16).max).astype(np.int16)
        else:
            raise ValueError(f"HeadPhantom.dwi: dtype must be float32 or int16, got {dtype!r}")
        volume = InMemoryVolumeResource(signal, self.affine, {"xyzt_units": 10})
        return Dwi(volume, InMemoryBvalResource(self.bvals), InMemoryBvecResource(self.bvecs))


def _mni_maps() -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """nilearn's MNI152 2009a grey- and white-matter probabilities at 1 mm (0 to 1)."""
    spec = importlib.util.find_spec("nilearn")  # its files only: no import, no warnings
    if spec is None or spec.origin is None:
        raise ImportError(
            "the head phantom needs nilearn (its MNI152 tissue maps): pip install nilearn"
        )
    folder = Path(spec.origin).parent / "datasets" / "data"
    maps: list[NDArray[np.float32]] = []
    for tissue in ("gm", "wm"):
        path = folder / f"mni_icbm152_{tissue}_tal_nlin_sym_09a_converted.nii.gz"
        maps.append((np.asarray(NiftiVolumeResource(path).get_array()) / 255).astype(np.float32))
    return maps[0], maps[1]


def _block_mean(array: NDArray[np.float32], block: tuple[int, int, int]) -> NDArray[np.float32]:
    """Average over non-overlapping blocks (the array is trimmed to whole blocks)."""
    shape = tuple(n // b for n, b in zip(array.shape, block, strict=True))
    trimmed = array[: shape[0] * block[0], : shape[1] * block[1], : shape[2] * block[2]]
    split = trimmed.reshape(shape[0], block[0], shape[1], block[1], shape[2], block[2])
    mean: NDArray[np.float32] = split.mean(axis=(1, 3, 5), dtype=np.float32)
    return mean


@functools.lru_cache(maxsize=4)
def _anatomy(block: tuple[int, int, int]) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Tissue fractions (x, y, z, 5) and the intracranial mask at voxels of ``block`` mm."""
    gm, wm = _mni_maps()
    total = gm + wm
    scale = np.where(total > 1, 1 / np.maximum(total, 1e-6), 1).astype(np.float32)
    gm, wm = gm * scale, wm * scale
    # a smooth envelope of the brain at 2 mm, and the distance from it (mm) back at 1 mm
    coarse = ndimage.gaussian_filter(_block_mean(gm + wm, (2, 2, 2)), 1.5)
    envelope = ndimage.binary_fill_holes(coarse > 0.3)
    distance = ndimage.distance_transform_edt(~envelope, sampling=2.0).astype(np.float32)
    distance = ndimage.zoom(distance, 2, order=1)
    shape = tuple(min(a, b) for a, b in zip(distance.shape, gm.shape, strict=True))
    distance = distance[: shape[0], : shape[1], : shape[2]]
    gm, wm = gm[: shape[0], : shape[1], : shape[2]], wm[: shape[0], : shape[1], : shape[2]]
    inside = (distance < _CSF_MM) | (gm + wm > 0.5)
    skull = ~inside & (distance < _CSF_MM + _SKULL_MM)
    scalp = ~inside & ~skull & (distance < _CSF_MM + _SKULL_MM + _SCALP_MM)
    gm, wm = gm * inside, wm * inside
    csf = inside - gm - wm
    fine = [gm, wm, csf, skull.astype(np.float32), scalp.astype(np.float32)]
    fractions = np.stack([_block_mean(f, block) for f in fine], axis=-1)
    intracranial = fractions[..., :3].sum(axis=-1) >= 0.5
    head = np.argwhere(fractions.sum(axis=-1) > 0)
    margin = np.ceil(_MARGIN_MM / np.array(block)).astype(int)
    low = np.maximum(head.min(axis=0) - margin, 0)
    high = head.max(axis=0) + margin + 1
    crop = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    return fractions[crop], ndimage.binary_fill_holes(intracranial[crop])


def _fibre_directions(wm: NDArray[np.float32], voxel: NDArray[np.float64]) -> NDArray[np.float32]:
    """Unit vectors along which the white-matter map changes least (x, y, z, 3)."""
    gradient = [
        ndimage.gaussian_filter(wm, 1.0, order=tuple(int(i == axis) for i in range(3)))
        / voxel[axis]
        for axis in range(3)
    ]
    structure = np.empty((*wm.shape, 3, 3), np.float32)
    for i in range(3):
        for j in range(i, 3):
            smooth = ndimage.gaussian_filter(gradient[i] * gradient[j], 2.0)
            structure[..., i, j] = structure[..., j, i] = smooth
    inside = wm > 0
    directions = np.zeros((*wm.shape, 3), np.float32)
    directions[..., 0] = 1
    directions[inside] = np.linalg.eigh(structure[inside])[1][..., 0]
    return directions


def make_head_phantom(
    *,
    voxel_size: tuple[int, int, int] = (2, 2, 2),
    snr: float = 20.0,
    seed: int = 0,
    b0_volumes: int = 5,
    directions: int = 60,
    shells: tuple[float, ...] = (1000.0,),
    bias: float = 0.2,
    bvals: NDArray[np.float64] | None = None,
    bvecs: NDArray[np.float64] | None = None,
) -> HeadPhantom:
    """Simulate a head in memory (a few seconds at 2 mm with 65 volumes).

    Args:
        voxel_size: Voxel size in whole mm per axis (2 x 2 x 2, or 2 x 2 x 3 for thick
            slices).
        snr: b=0 signal of white matter over the noise's standard deviation (Rician noise);
            ``inf`` for none.
        seed: Random seed of the noise and of the bias field's direction.
        b0_volumes: Number of b=0 volumes.
        directions: Directions per shell.
        shells: b-values of the shells in s/mm².
        bias: Amplitude of the smooth intensity bias (0 for none; 0.2 is +-20 %).
        bvals: A b-table of your own (with ``bvecs``) instead of ``b0_volumes``,
            ``directions`` and ``shells``, e.g. dipy's DSI-like ``small_101D``.
        bvecs: Its unit b-vectors, (volumes, 3).

    Returns:
        The phantom.

    Raises:
        ValueError: A voxel size is not a whole number of mm from 1 to 4, or only one of
            ``bvals`` and ``bvecs`` is given.
    """
    if len(voxel_size) != 3 or any(int(v) != v or not 1 <= v <= 4 for v in voxel_size):
        raise ValueError(
            f"make_head_phantom: voxel_size must be 3 whole mm from 1 to 4, got {voxel_size!r}"
        )
    if (bvals is None) != (bvecs is None):
        raise ValueError("make_head_phantom: give both bvals and bvecs, or neither")
    if bvals is None or bvecs is None:
        bvals, bvecs = gradient_scheme(b0_volumes=b0_volumes, directions=directions, shells=shells)
    bvals = np.asarray(bvals, dtype=np.float64)
    bvecs = np.asarray(bvecs, dtype=np.float64)
    norms = np.linalg.norm(bvecs, axis=1, keepdims=True)
    bvecs = np.divide(bvecs, norms, out=np.zeros_like(bvecs), where=norms > 0)
    block = (int(voxel_size[0]), int(voxel_size[1]), int(voxel_size[2]))
    fractions, brain = _anatomy(block)
    voxel = np.array(block, dtype=np.float64)
    fibres = _fibre_directions(fractions[..., 1], voxel)
    rng = np.random.default_rng(seed)
    shape = brain.shape
    grid = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    towards = rng.standard_normal(3)
    towards /= np.linalg.norm(towards)
    field = np.exp(bias * sum(t * g for t, g in zip(towards, grid, strict=True)), dtype=np.float32)
    weights = fractions * _S0.astype(np.float32)
    weights *= field[..., None]
    signal = np.empty((*shape, len(bvals)), np.float32)
    sigma = np.float32(_REFERENCE_SIGNAL / snr)
    for index, (b, g) in enumerate(zip(bvals, bvecs, strict=True)):
        attenuation = np.exp(-b * _DIFFUSIVITY).astype(np.float32)
        attenuation[1] = 0  # white matter's anisotropic term follows
        clean = weights @ attenuation
        along = (fibres @ g.astype(np.float32)) ** 2
        wm = np.exp(-b * (_WM_RADIAL + (_WM_AXIAL - _WM_RADIAL) * along), dtype=np.float32)
        clean += weights[..., 1] * wm
        if np.isfinite(snr):  # Rician: the magnitude of complex Gaussian noise
            real = clean + sigma * rng.standard_normal(shape, dtype=np.float32)
            imaginary = sigma * rng.standard_normal(shape, dtype=np.float32)
            clean = np.sqrt(real * real + imaginary * imaginary)
        signal[..., index] = clean
    affine = np.diag([*voxel, 1.0])
    affine[:3, 3] = -voxel * (np.array(shape) - 1) / 2  # the head's centre near the origin
    return HeadPhantom(signal, bvals, bvecs, affine, brain, fractions)


def write_head_phantom(
    dwi_path: PathLike,
    bval_path: PathLike,
    bvec_path: PathLike,
    *,
    dtype: str = "float32",
    **options: object,
) -> HeadPhantom:
    """Simulate a head (`make_head_phantom`) and write it as NIfTI + FSL b-table files.

    Args:
        dwi_path: The DWI file (``.nii.gz`` or ``.nii``); parent directories must exist.
        bval_path: The b-value file.
        bvec_path: The b-vector file.
        dtype: ``"float32"`` or ``"int16"``, the DWI's data type on disk.
        **options: Keyword arguments of `make_head_phantom`.

    Returns:
        The phantom (its truth in `HeadPhantom.brain`).
    """
    phantom = make_head_phantom(**options)  # type: ignore[arg-type]
    dwi = phantom.dwi(dtype)
    NiftiVolumeResource.save(dwi.volume, Path(dwi_path))
    FslBvalResource.save(dwi.bval, Path(bval_path))
    FslBvecResource.save(dwi.bvec, Path(bvec_path))
    return phantom

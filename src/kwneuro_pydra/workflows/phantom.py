"""DWI phantoms with known tensors: a synthetic subject and its ground truth.

The phantom is a brain-like ellipsoid in empty background (Rician noise only) with six tissue
types, each with a known diffusion tensor:

======  ==================  ===================  =======================================
label   tissue              eigenvalues (1e-3)   orientation
======  ==================  ===================  =======================================
1       cortex (grey)       0.9, 0.8, 0.75       axes (x, y, z)
2       deep white matter   1.1, 0.55, 0.45      along y
3       arched bundle       1.7, 0.3, 0.3        along a half circle in the x-z plane
4       U-shaped bundle     1.5, 0.45, 0.45      along a half circle in the x-y plane
5       straight bundles    1.6, 0.35, 0.35      along z (two tubes)
6       ventricles (CSF)    3.0, 3.0, 3.0        isotropic
======  ==================  ===================  =======================================

Bundles do not cross. The eigenvalues of each tissue are scaled by a per-subject factor
(about 5 % spread, drawn from ``seed``), so different seeds give different subjects. The
signal is ``S0 exp(-b g^T D g)`` with Rician noise of standard deviation ``1000 / snr``
(the b=0 signal of white matter is 1000).

Frames: the geometry, the true directions and `Phantom.bvecs` are in voxel axes, which are
world axes (RAS) for the diagonal affine of `Phantom.dwi` and `write_phantom`. Those write
the b-vectors in FSL's convention for that affine (`fsl_bvecs`: the first component negated,
since its determinant is positive), so that FSL, MRtrix and ``estimate_dti(frame="world")``
read the true directions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

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

from ._tensor import fractional_anisotropy

__all__ = [
    "TISSUES",
    "Phantom",
    "PhantomTruth",
    "fsl_bvecs",
    "gradient_scheme",
    "make_phantom",
    "write_phantom",
]

TISSUES = (
    "background",
    "cortex",
    "deep white matter",
    "arched bundle",
    "U-shaped bundle",
    "straight bundles",
    "ventricles",
)
"""Tissue names by label (0 is background)."""

_EIGENVALUES = (
    np.array(
        [
            [0, 0, 0],
            [0.9, 0.8, 0.75],
            [1.1, 0.55, 0.45],
            [1.7, 0.3, 0.3],
            [1.5, 0.45, 0.45],
            [1.6, 0.35, 0.35],
            [3.0, 3.0, 3.0],
        ]
    )
    * 1e-3
)
_S0 = np.array([0.0, 1200.0, 1000.0, 1000.0, 1000.0, 1000.0, 2000.0])
_REFERENCE_SIGNAL = 1000.0
"""The b=0 signal of white matter; the noise is this divided by the SNR."""


@dataclass(frozen=True)
class PhantomTruth:
    """The ground truth of a phantom.

    Attributes:
        labels: Tissue label per voxel (uint8, see `TISSUES`; 0 is background).
        fa: Fractional anisotropy of the true tensors (float32, 0 in background).
        md: Mean diffusivity of the true tensors in mm²/s (float32, 0 in background).
        direction: Principal eigenvector of the true tensors (float32, (x, y, z, 3)), in
            voxel axes (world axes, RAS, for the phantom's diagonal affine).
    """

    labels: NDArray[np.uint8]
    fa: NDArray[np.float32]
    md: NDArray[np.float32]
    direction: NDArray[np.float32]


@dataclass(frozen=True)
class Phantom:
    """A phantom held in memory.

    Attributes:
        signal: The noisy DWI, float32, (x, y, z, volumes).
        bvals: b-values in s/mm².
        bvecs: Unit b-vectors ((0, 0, 0) for b=0), (volumes, 3), in voxel axes (the
            signal's gradient directions; `fsl_bvecs` gives those of a b-vector file).
        truth: The ground truth.
    """

    signal: NDArray[np.float32]
    bvals: NDArray[np.float64]
    bvecs: NDArray[np.float64]
    truth: PhantomTruth

    def dwi(self, voxel_size: float = 2.0) -> Dwi:
        """Return the phantom as an in-memory `Dwi` with isotropic voxels stored RAS.

        Args:
            voxel_size: Voxel size in mm.

        Returns:
            The `Dwi`, its b-vectors in FSL's convention for its affine (`fsl_bvecs`).
        """
        affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
        volume = InMemoryVolumeResource(self.signal, affine, {"xyzt_units": 10})
        bvecs = InMemoryBvecResource(fsl_bvecs(self.bvecs, affine))
        return Dwi(volume, InMemoryBvalResource(self.bvals), bvecs)


def fsl_bvecs(bvecs: NDArray[np.float64], affine: NDArray[np.float64]) -> NDArray[np.float64]:
    """The b-vectors an FSL file holds for gradients given in an image's voxel axes.

    FSL's convention: b-vectors are in voxel axes, the first one mirrored when the affine's
    determinant is positive (the inverse of
    `kwneuro_pydra.workflows._tensor.world_rotation`'s flip).

    Args:
        bvecs: Gradient directions in voxel axes, (volumes, 3).
        affine: The image's voxel-to-world affine.

    Returns:
        The b-vectors to write, (volumes, 3).
    """
    flipped = np.array(bvecs, np.float64)
    if np.linalg.det(np.asarray(affine)[:3, :3]) > 0:
        flipped[:, 0] = -flipped[:, 0]
    flipped[flipped == 0] = 0.0  # no -0 in the files
    return flipped


def gradient_scheme(
    *,
    b0_volumes: int = 2,
    directions: int = 30,
    shells: tuple[float, ...] = (1000.0,),
    jitter: float = 0.0,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """b-values and b-vectors: b=0 volumes, then each shell with evenly spread directions.

    Directions lie on a Fibonacci spiral over the half sphere (rotated from shell to shell).

    Args:
        b0_volumes: Number of b=0 volumes.
        directions: Directions per shell.
        shells: Nominal b-values of the shells in s/mm².
        jitter: b-values of a shell spread evenly (in a scrambled order) over nominal
            ``+- jitter``, as scanners write them (1470-1530 for 1500 with 30).

    Returns:
        b-values (N,) and b-vectors (N, 3).
    """
    k = np.arange(directions) + 0.5
    z = 1 - k / directions
    bvals = [np.zeros(b0_volumes)]
    bvecs = [np.zeros((b0_volumes, 3))]
    for index, shell in enumerate(shells):
        phi = k * np.pi * (3 - np.sqrt(5)) + index
        r = np.sqrt(1 - z * z)
        spread = ((k * (np.sqrt(5) - 1) / 2) % 1) * 2 - 1  # in [-1, 1), scrambled
        bvals.append(float(shell) + jitter * spread / np.abs(spread).max(initial=1.0))
        bvecs.append(np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1))
    return np.concatenate(bvals), np.concatenate(bvecs)


def _tissues(shape: tuple[int, int, int]) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    """Labels and principal directions of the phantom's geometry."""
    u, v, w = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    labels = np.zeros(shape, np.uint8)
    direction = np.zeros((*shape, 3))
    direction[..., 0] = 1.0

    def ellipsoid(centre: tuple[float, ...], radii: tuple[float, ...]) -> NDArray[np.bool_]:
        return ((u - centre[0]) / radii[0]) ** 2 + ((v - centre[1]) / radii[1]) ** 2 + (
            (w - centre[2]) / radii[2]
        ) ** 2 < 1

    labels[ellipsoid((0, 0, 0), (0.9, 0.85, 0.8))] = 1
    deep = ellipsoid((0, 0, 0), (0.75, 0.7, 0.65))
    labels[deep] = 2
    direction[deep] = (0.0, 1.0, 0.0)
    # arched bundle: half circle in x-z (radius 0.5 around z=-0.2), tangent direction
    rho = np.hypot(u, w + 0.2)
    arch = deep & (np.abs(rho - 0.5) < 0.09) & (np.abs(v) < 0.2) & (w > -0.2)
    labels[arch] = 3
    direction[arch] = np.stack([-(w + 0.2), np.zeros_like(u), u], axis=-1)[arch]
    # U-shaped bundle: half circle in x-y (radius 0.4 around y=-0.1) at z=-0.47
    rho = np.hypot(u, v + 0.1)
    u_shape = deep & (np.abs(rho - 0.4) < 0.08) & (np.abs(w + 0.47) < 0.08) & (v > -0.1)
    labels[u_shape] = 4
    direction[u_shape] = np.stack([-(v + 0.1), u, np.zeros_like(u)], axis=-1)[u_shape]
    straight = deep & (np.hypot(np.abs(u) - 0.5, v - 0.35) < 0.09) & (np.abs(w) < 0.45)
    labels[straight] = 5
    direction[straight] = (0.0, 0.0, 1.0)
    labels[ellipsoid((0.18, -0.1, 0.0), (0.1, 0.25, 0.1))] = 6
    labels[ellipsoid((-0.18, -0.1, 0.0), (0.1, 0.25, 0.1))] = 6
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    return labels, direction


def _frames(direction: NDArray[np.float64]) -> NDArray[np.float64]:
    """Orthonormal frames (columns) whose first axis is ``direction``; the second is
    orthogonal to z when it can be (x otherwise).
    """
    helper = np.where(np.abs(direction[..., 2:3]) > 0.9, [1.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    second = np.cross(helper, direction)
    second /= np.linalg.norm(second, axis=-1, keepdims=True)
    return np.stack([direction, second, np.cross(direction, second)], axis=-1)


def make_phantom(
    shape: tuple[int, int, int] = (40, 40, 24),
    *,
    snr: float = 30.0,
    seed: int = 0,
    b0_volumes: int = 2,
    directions: int = 30,
    shells: tuple[float, ...] = (1000.0,),
    jitter: float = 0.0,
) -> Phantom:
    """Simulate a phantom subject in memory.

    Args:
        shape: Spatial shape.
        snr: b=0 signal of white matter over the noise's standard deviation (Rician noise);
            ``inf`` for none.
        seed: Random seed of the noise and of the per-subject eigenvalue scaling.
        b0_volumes: Number of b=0 volumes.
        directions: Directions per shell.
        shells: Nominal b-values of the shells in s/mm².
        jitter: Spread of each shell's b-values (see `gradient_scheme`).

    Returns:
        The phantom.
    """
    rng = np.random.default_rng(seed)
    bvals, bvecs = gradient_scheme(
        b0_volumes=b0_volumes, directions=directions, shells=shells, jitter=jitter
    )
    labels, direction = _tissues(shape)
    eigenvalues = _EIGENVALUES * (1 + 0.05 * rng.standard_normal(len(_EIGENVALUES)))[:, None]
    evals = eigenvalues[labels]
    frames = _frames(direction)
    tensors = np.einsum("...ik,...k,...jk->...ij", frames, evals, frames).reshape(*shape, 9)
    dyads = (bvecs[:, :, None] * bvecs[:, None, :]).reshape(-1, 9).T  # g g^T per volume
    signal = np.empty((*shape, len(bvals)), np.float32)
    sigma = np.float32(_REFERENCE_SIGNAL / snr)
    for z in range(shape[2]):  # one slice at a time keeps the temporaries small
        clean = _S0[labels[:, :, z]][..., None] * np.exp(-bvals * (tensors[:, :, z] @ dyads))
        clean = clean.astype(np.float32)
        if np.isfinite(snr):  # Rician: the magnitude of complex Gaussian noise
            real = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
            imaginary = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
            clean = np.sqrt(real * real + imaginary * imaginary)
        signal[:, :, z] = clean
    truth = PhantomTruth(
        labels=labels,
        fa=fractional_anisotropy(evals).astype(np.float32),
        md=evals.mean(axis=-1).astype(np.float32),
        direction=np.where(labels[..., None] > 0, direction, 0).astype(np.float32),
    )
    return Phantom(signal, bvals, bvecs, truth)


def write_phantom(
    dwi_path: PathLike,
    bval_path: PathLike,
    bvec_path: PathLike,
    *,
    shape: tuple[int, int, int] = (40, 40, 24),
    snr: float = 30.0,
    seed: int = 0,
    b0_volumes: int = 2,
    directions: int = 30,
    shells: tuple[float, ...] = (1000.0,),
    voxel_size: float = 2.0,
) -> PhantomTruth:
    """Simulate a phantom subject (`make_phantom`) and write it as NIfTI + FSL b-table files.

    Args:
        dwi_path: The DWI file (``.nii.gz`` or ``.nii``); parent directories must exist.
        bval_path: The b-value file.
        bvec_path: The b-vector file.
        shape: Spatial shape.
        snr: b=0 signal of white matter over the noise's standard deviation.
        seed: Random seed (noise and per-subject eigenvalues).
        b0_volumes: Number of b=0 volumes.
        directions: Directions per shell.
        shells: b-values of the shells in s/mm².
        voxel_size: Isotropic voxel size in mm.

    Returns:
        The ground truth (tissue labels, FA, MD, principal directions).
    """
    phantom = make_phantom(
        shape, snr=snr, seed=seed, b0_volumes=b0_volumes, directions=directions, shells=shells
    )
    dwi = phantom.dwi(voxel_size)
    NiftiVolumeResource.save(dwi.volume, Path(dwi_path))
    FslBvalResource.save(dwi.bval, Path(bval_path))
    FslBvecResource.save(dwi.bvec, Path(bvec_path))
    return phantom.truth

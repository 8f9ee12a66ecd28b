"""The diffusion tensor fit, vectorised over voxels: dipy's WLS and OLS, faster.

Everything here follows ``dipy.reconst.dti`` (dipy 1.12) and is checked against it in
``tests/test_dti_dipy.py``:

- the design matrix is dipy's ``design_matrix`` (b-values as given, the minus sign, the
  ``2 g_i g_j b`` off-diagonal terms, a last column of -1 whose coefficient is ``-log S0``);
- samples are clipped below at ``MIN_POSITIVE_SIGNAL`` before the logarithm, which is taken
  in float32 for float32 samples (dipy's ``np.log`` of the clipped data) and in float64
  otherwise;
- OLS is ``pinv(X) @ log(S)`` (dipy's ``ols_fit_tensor``);
- WLS is one weighted pass with weights from the signal that the OLS pass predicts
  (dipy's ``wls_fit_tensor``: minimise ``sum(S_ols^2 (X b - log S)^2)``);
- eigenvalues are sorted in descending order and clipped below at ``1e-6 / max(B)``
  (dipy's ``min_diffusivity`` for these fits); eigenvectors are columns;
- the tensor returned is rebuilt from the clipped eigenvalues (dipy's ``quadratic_form``).

Frames: the fit is in the frame of the b-vectors (dipy's). ``rotation`` (`world_rotation`
of the affine) takes the principal eigenvector to world axes for the colour FA, which is
always in world axes; with ``world=True`` the eigenvectors and the tensor are rotated too.
Rotating after the fit, not the b-vectors before it, keeps dipy's eigenvalue floor (which
depends on the b-matrix's entries) and therefore every other map unchanged.

Where dipy inverts one 65 x 7 matrix per voxel (an SVD each) for WLS, this module solves the
7 x 7 weighted normal equations, formed for a block of voxels with two matrix products,
equilibrated (scaled to unit diagonal) and solved by a Cholesky factorisation vectorised
across voxels (`kwneuro_pydra.workflows._linalg`); that gives the same minimiser. A voxel
whose system is singular gets dipy's own ``pinv`` solution.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from ._linalg import eigh3, solve_spd

__all__ = [
    "MAP_SHAPES",
    "MIN_POSITIVE_SIGNAL",
    "VOXELS_PER_BLOCK",
    "FitMethod",
    "VolumeFit",
    "design_matrix",
    "fit_signal",
    "fit_volume",
    "fractional_anisotropy",
    "min_diffusivity",
    "world_rotation",
]

MIN_POSITIVE_SIGNAL = 1e-4
"""Samples below this are raised to it before the logarithm (``dipy.reconst.dti``)."""

_DIFFUSIVITY_TOLERANCE = 1e-6
"""dipy's ``tol``: eigenvalues are clipped below at this divided by the largest b-matrix entry."""

FitMethod = Literal["WLS", "OLS"]

MAP_SHAPES: dict[str, tuple[int, ...]] = {
    "fa": (),
    "md": (),
    "ad": (),
    "rd": (),
    "evals": (3,),
    "evecs": (3, 3),
    "tensor": (6,),
    "s0": (),
    "color_fa": (3,),
}
"""The maps of a fit by name, with the shape each has per voxel."""

VOXELS_PER_BLOCK = 20_000
"""Voxels fitted together: large enough for fast matrix products, small enough that the
temporaries (about 50 float64 values per voxel and volume) stay far below the DWI's size."""

Float64 = NDArray[np.float64]


def design_matrix(bvals: Float64, bvecs: Float64) -> Float64:
    """dipy's DTI design matrix: ``-(Bxx, 2Bxy, Byy, 2Bxz, 2Byz, Bzz, 1)`` per volume.

    Args:
        bvals: b-values, shape (g,), used as given.
        bvecs: b-vectors, shape (g, 3); non-finite entries count as 0 (b=0 rows).

    Returns:
        Array of shape (g, 7).
    """
    g = np.where(np.isfinite(bvecs), bvecs, 0.0)
    x, y, z = g.T
    b = np.stack([x * x, 2 * x * y, y * y, 2 * x * z, 2 * y * z, z * z], axis=1)
    return -np.column_stack([b * bvals[:, None], np.ones_like(bvals)])


def world_rotation(affine: NDArray[Any]) -> Float64:
    """The matrix that takes vectors of the b-vector frame (FSL's) to world coordinates.

    FSL's b-vectors are in the voxel axes, with the first axis mirrored when the affine's
    determinant is positive (FSL's radiological storage). The world vector is ``R @ F @ v``:
    ``R`` the orthogonal polar factor of the affine's 3 x 3 part (its rotation and axis
    flips, voxel sizes and shears removed), ``F`` ``diag(-1, 1, 1)`` for a positive
    determinant and the identity otherwise. This is how MRtrix reads FSL b-vectors.

    Args:
        affine: A 4 x 4 (or 3 x 3) voxel-to-world affine.

    Returns:
        The 3 x 3 matrix (orthogonal, determinant -1).
    """
    linear = np.asarray(affine, np.float64)[:3, :3]
    u, _, vt = np.linalg.svd(linear)
    flip = np.diag([-1.0, 1.0, 1.0]) if np.linalg.det(linear) > 0 else np.eye(3)
    rotation: Float64 = u @ vt @ flip
    return rotation


def min_diffusivity(design: Float64) -> float:
    """dipy's eigenvalue floor for a design matrix: ``1e-6 / -design.min()``."""
    return _DIFFUSIVITY_TOLERANCE / float(-design.min())


def fractional_anisotropy(evals: Float64) -> Float64:
    """FA of eigenvalues (last axis of 3), as dipy computes it; 0 where all are 0.

    ``sqrt(1/2 * ((l1-l2)^2 + (l2-l3)^2 + (l3-l1)^2) / (l1^2 + l2^2 + l3^2))``, which is
    ``sqrt(3/2) * |l - mean(l)| / |l|``.

    Args:
        evals: Eigenvalues, shape (..., 3).

    Returns:
        FA, shape (...,), between 0 and 1.
    """
    l1, l2, l3 = np.moveaxis(evals, -1, 0)
    all_zero = (evals == 0).all(axis=-1)
    spread = (l1 - l2) ** 2 + (l2 - l3) ** 2 + (l3 - l1) ** 2
    fa: Float64 = np.sqrt(0.5 * spread / ((evals * evals).sum(axis=-1) + all_zero))
    return fa


_LOWER = (np.array([0, 1, 1, 2, 2, 2]), np.array([0, 0, 1, 0, 1, 2]))
"""Row and column of Dxx, Dxy, Dyy, Dxz, Dyz, Dzz in a 3 x 3 tensor."""


def fit_signal(
    signal: NDArray[Any],
    design: Float64,
    method: FitMethod,
    *,
    rotation: Float64 | None = None,
    world: bool = False,
) -> dict[str, Float64]:
    """Fit one tensor per row of ``signal`` (samples already finite).

    Args:
        signal: Samples, shape (n, g), any real dtype; clipped below at `MIN_POSITIVE_SIGNAL`.
        design: `design_matrix` of the g volumes.
        method: ``"WLS"`` or ``"OLS"``.
        rotation: `world_rotation` of the image (identity when None): the colour FA is in
            the axes it leads to.
        world: Rotate the eigenvectors and the tensor by ``rotation`` too.

    Returns:
        The maps of the n voxels by name (the keys of `MAP_SHAPES`), voxels first:
        ``fa``, ``md``, ``ad``, ``rd``, ``s0`` (n,); ``evals`` (n, 3), descending, clipped at
        dipy's floor; ``evecs`` (n, 3, 3), ``evecs[:, :, k]`` belongs to ``evals[:, k]``;
        ``tensor`` (n, 6), Dxx, Dxy, Dyy, Dxz, Dyz, Dzz rebuilt from the clipped eigenvalues;
        ``color_fa`` (n, 3), ``|rotation @ principal eigenvector| * clip(FA, 0, 1)``.
    """
    # Voxels along the last axis from here on: every step is a matrix product or a
    # whole-array operation on contiguous rows. The logarithm is taken in the samples' own
    # precision when they are float32, as dipy does; the fit is float64.
    precision = np.float32 if signal.dtype == np.float32 else np.float64
    clipped = np.maximum(signal.T, MIN_POSITIVE_SIGNAL, dtype=precision, order="C")
    log_s = np.log(clipped, out=clipped).astype(np.float64, copy=False)
    beta = np.linalg.pinv(design) @ log_s
    if method == "WLS":
        beta = _weighted(log_s, design, beta)
    return _maps(beta, min_diffusivity(design), np.eye(3) if rotation is None else rotation, world)


def _weighted(log_s: Float64, design: Float64, beta_ols: Float64) -> Float64:
    """One WLS pass with weights ``S_ols`` (scaled per voxel; the minimiser is not).

    Solves the normal equations ``X^T W^2 X b = X^T W^2 log S``, equilibrated to unit
    diagonal. A voxel whose system is not positive definite (weights that underflow) gets
    dipy's own solution, ``pinv(W X) W log S``: the minimum-norm one.
    """
    log_w = design @ beta_ols
    log_w -= log_w.max(axis=0)
    weights = np.exp(log_w)
    squared = weights * weights
    k = design.shape[1]
    products = (design[:, :, None] * design[:, None, :]).reshape(len(design), k * k)
    gram = (products.T @ squared).reshape(k, k, -1)
    squared *= log_s
    rhs = design.T @ squared
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero diagonal fails below
        scale = 1 / np.sqrt(np.einsum("iin->in", gram))
        gram *= scale[:, None, :] * scale[None, :, :]
    solution, solved = solve_spd(gram, rhs * scale)
    beta: Float64 = solution * scale
    if not solved.all():
        w = weights[:, ~solved].T[:, :, None]
        rest = np.linalg.pinv(design * w) @ (w * log_s[:, ~solved].T[:, :, None])
        beta[:, ~solved] = rest[:, :, 0].T
    return beta


def _maps(beta: Float64, floor: float, rotation: Float64, world: bool) -> dict[str, Float64]:
    """The maps of fitted coefficients (voxels last): dipy's ``eig_from_lo_tri`` and metrics."""
    xx, xy, yy, xz, yz, zz = beta[:6]
    evals, evecs = eigh3(np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]]))
    evals = np.clip(evals, floor, None)
    fa = fractional_anisotropy(evals)
    rotated = np.einsum("ij,njk->nik", rotation, evecs)
    if world:
        evecs = rotated
    tensor = ((evecs * evals[:, None, :]) @ evecs.transpose(0, 2, 1))[:, _LOWER[0], _LOWER[1]]
    return {
        "fa": fa,
        "md": evals.mean(axis=1),
        "ad": evals[:, 0],
        "rd": evals[:, 1:].mean(axis=1),
        "evals": evals,
        "evecs": evecs,
        "tensor": tensor,
        "s0": np.exp(-beta[6]),
        "color_fa": np.abs(rotated[:, :, 0]) * np.clip(fa, 0, 1)[:, None],
    }


def _voxel_blocks(
    inside: NDArray[np.bool_], voxels_per_block: int
) -> Iterator[tuple[slice, NDArray[np.bool_]]]:
    """Blocks of whole slices along the last spatial axis, about ``voxels_per_block`` each.

    Yields:
        The slice of the last spatial axis and the mask within it (blocks with no voxel of
        ``inside`` are skipped).
    """
    per_slice = max(1, int(np.prod(inside.shape[:-1])))
    step = max(1, voxels_per_block // per_slice)
    for start in range(0, inside.shape[-1], step):
        block = slice(start, start + step)
        within = inside[..., block]
        if within.any():
            yield block, within


@dataclass
class VolumeFit:
    """The maps of a whole volume (float32) and what was found in its samples.

    Attributes:
        maps: By name (`MAP_SHAPES`), each of shape ``spatial + MAP_SHAPES[name]``; 0 outside
            the mask, NaN in the voxels of the mask not fitted.
        nonfinite: Voxels not fitted because a sample is NaN or infinite.
        negative: Fitted voxels with a negative sample (clipped like the others).
        empty: Voxels not fitted because no sample is above 0.
    """

    maps: dict[str, NDArray[np.float32]]
    nonfinite: int = 0
    negative: int = 0
    empty: int = 0

    @property
    def unfitted(self) -> int:
        """Voxels of the mask not fitted (NaN in every map)."""
        return self.nonfinite + self.empty


def fit_volume(
    data: NDArray[Any],
    inside: NDArray[np.bool_],
    keep: NDArray[np.bool_],
    design: Float64,
    method: FitMethod,
    *,
    voxels_per_block: int = VOXELS_PER_BLOCK,
    rotation: Float64 | None = None,
    world: bool = False,
) -> VolumeFit:
    """Fit the voxels of ``inside`` block by block, using the volumes of ``keep``.

    Voxels with a NaN or infinite sample, and voxels without any sample above 0, are not
    fitted: all their maps are NaN. Only one block of samples is copied at a time.

    Args:
        data: The 4-D DWI array (any memory order, any real dtype; not modified).
        inside: The voxels to fit, shape ``data.shape[:3]``.
        keep: The volumes to fit, shape ``data.shape[3:]``.
        design: `design_matrix` of the kept volumes.
        method: ``"WLS"`` or ``"OLS"``.
        voxels_per_block: About how many voxels to fit together.
        rotation: `world_rotation` of the image, for the colour FA (see `fit_signal`).
        world: Give the eigenvectors and the tensor in world coordinates.

    Returns:
        The maps and the counts of unusual voxels.
    """
    spatial = data.shape[:3]
    result = VolumeFit({n: np.zeros(spatial + s, np.float32) for n, s in MAP_SHAPES.items()})
    # One BLAS thread: the products are thin, and threads that wait for busy cores (other
    # subjects, other jobs) made them ten times slower on a loaded machine.
    with threadpool_limits(limits=1, user_api="blas"):
        for block, within in _voxel_blocks(inside, voxels_per_block):
            _fit_block(data, block, within, keep, design, method, result, rotation, world)
    return result


def _fit_block(
    data: NDArray[Any],
    block: slice,
    within: NDArray[np.bool_],
    keep: NDArray[np.bool_],
    design: Float64,
    method: FitMethod,
    result: VolumeFit,
    rotation: Float64 | None,
    world: bool,
) -> None:
    """Fit the voxels ``within`` the slices ``block`` into ``result``, counting odd ones
    (and setting the maps of the unusable ones to NaN).
    """
    signal = data[:, :, block][within]
    if not keep.all():
        signal = signal[:, keep]
    with np.errstate(invalid="ignore"):
        low, high = signal.min(axis=1), signal.max(axis=1)  # NaN wins both
    finite = np.isfinite(low) & np.isfinite(high)
    usable = finite & (high > 0)
    result.nonfinite += int((~finite).sum())
    result.empty += int((finite & ~usable).sum())
    result.negative += int((usable & (low < 0)).sum())
    spatial = result.maps["fa"].shape

    def flat(chosen: NDArray[np.bool_]) -> NDArray[np.intp]:
        """Flat indices of the voxels ``chosen`` among those ``within`` (fast to scatter)."""
        target = within.copy()
        target[within] = chosen
        i, j, k = np.nonzero(target)
        return np.ravel_multi_index((i, j, k + (block.start or 0)), spatial)

    if not usable.all():
        unusable = flat(~usable)
        for name, shape in MAP_SHAPES.items():
            result.maps[name].reshape(-1, *shape)[unusable] = np.nan
    if not usable.any():
        return
    fitted = flat(usable)
    maps = fit_signal(signal[usable], design, method, rotation=rotation, world=world)
    for name, values in maps.items():
        result.maps[name].reshape(-1, *MAP_SHAPES[name])[fitted] = values

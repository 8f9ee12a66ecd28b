"""The acquisition scheme of a DWI, checked for a tensor fit: which volumes to fit, and why not.

Real data arrive with b-values in the wrong units, no b=0 volume, too few directions, or
shells far above the range where the tensor model holds. Each case raises (or warns) here,
naming the b-value or b-vector file and what to do about it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from kwneuro_pydra.resources import B0_THRESHOLD, Dwi, source_of

__all__ = ["MAX_BVALUE", "SHELL_TOLERANCE", "Scheme", "fitted_scheme", "shells"]

SHELL_TOLERANCE = 20.0
"""b-values within this of a shell's lowest value belong to the shell, in s/mm² (dipy's)."""

MAX_BVALUE = 100_000.0
"""Largest plausible b-value in s/mm²; larger ones are taken for another unit (s/m²)."""

_COLLINEARITY = 1e-3
"""Singular values of the direction matrix below this fraction of the largest do not count."""


@dataclass(frozen=True)
class Scheme:
    """The volumes a tensor fit uses.

    Attributes:
        keep: Which volumes of the DWI are fitted, shape (N,).
        bvals: Their b-values (s/mm², as given).
        bvecs: Their b-vectors (non-finite entries of b=0 rows are 0).
    """

    keep: NDArray[np.bool_]
    bvals: NDArray[np.float64]
    bvecs: NDArray[np.float64]


def shells(bvals: NDArray[np.float64]) -> list[NDArray[np.intp]]:
    """Group the volumes of diffusion-weighted b-values into shells, lowest first.

    A shell starts at the lowest b-value not yet grouped and takes every b-value up to
    ``2 * SHELL_TOLERANCE`` above it (no chaining: a continuous range of b-values, as in a
    DSI scheme, gives shells of that width).

    Args:
        bvals: All b-values; those at or below `B0_THRESHOLD` are skipped.

    Returns:
        The volume indices of each shell.
    """
    order = [int(i) for i in np.argsort(bvals, kind="stable") if bvals[i] > B0_THRESHOLD]
    groups: list[NDArray[np.intp]] = []
    while order:
        start = bvals[order[0]]
        size = next((k for k, i in enumerate(order) if bvals[i] > start + 2 * SHELL_TOLERANCE),
                    len(order))  # fmt: skip
        groups.append(np.array(order[:size], dtype=np.intp))
        order = order[size:]
    return groups


def _describe(bvals: NDArray[np.float64], groups: list[NDArray[np.intp]]) -> str:
    """The shells' nominal b-values for a message (a range when there are many)."""
    centres = [float(np.median(bvals[g])) for g in groups]
    if len(centres) <= 6:
        return "b=" + ", ".join(f"{c:g}" for c in centres)
    return f"{len(centres)} shells from b={centres[0]:g} to b={centres[-1]:g}"


def fitted_scheme(dwi: Dwi, *, bmax: float, step: str) -> Scheme:
    """Check a DWI's b-values and b-vectors for a tensor fit and select the volumes to fit.

    Volumes at or below `B0_THRESHOLD` are b=0 images. Diffusion-weighted volumes are
    grouped into `shells`; the shells whose median b-value is at most ``bmax`` are fitted,
    with a `UserWarning` naming the shells left out. When no shell is at most ``bmax`` (a
    single high shell, as in dipy's ``small_25`` at b=2000), the lowest shell is fitted.

    Args:
        dwi: The DWI.
        bmax: Highest shell to fit, in s/mm².
        step: The step's name, for messages.

    Returns:
        The volumes to fit.

    Raises:
        ValueError: The b-values look like another unit than s/mm², no volume is a b=0
            image, or the fitted directions do not span a tensor (fewer than 6
            non-collinear). Each message names the file and what to do.
    """
    bvals = np.asarray(dwi.bval.get(), dtype=np.float64)
    bvecs = np.asarray(dwi.bvec.get(), dtype=np.float64)
    where = source_of(dwi.bval)
    _check_units(bvals, where, step)
    if not (bvals <= B0_THRESHOLD).any():
        raise ValueError(
            f"{step}: no b=0 volume in {where} (smallest b-value {bvals.min():g} s/mm², "
            f"b=0 images are those at or below {B0_THRESHOLD:g}): a tensor fit needs one to "
            "estimate S0; add the b=0 volumes of the acquisition"
        )
    groups = shells(bvals)
    fitted = [g for g in groups if np.median(bvals[g]) <= bmax] or groups[:1]
    left_out = [g for g in groups if not any(g is f for f in fitted)]
    keep = bvals <= B0_THRESHOLD
    for group in fitted:
        keep[group] = True
    if left_out:
        warnings.warn(
            f"{step}: fitting the tensor to {_describe(bvals, fitted)} s/mm² and the b=0 "
            f"images; leaving out {sum(len(g) for g in left_out)} volumes of "
            f"{_describe(bvals, left_out)} s/mm² ({where}), where the tensor model no longer "
            f"holds; raise bmax (now {bmax:g}) to fit them too",
            UserWarning,
            stacklevel=3,
        )
    scheme = Scheme(keep, bvals[keep], np.where(np.isfinite(bvecs[keep]), bvecs[keep], 0.0))
    _check_directions(scheme, source_of(dwi.bvec), step)
    return scheme


def _check_units(bvals: NDArray[np.float64], where: str, step: str) -> None:
    largest = float(bvals.max())
    if largest <= B0_THRESHOLD:
        hint = (
            "they look like ms/µm² (b=1 means 1000 s/mm²): multiply them by 1000"
            if largest > 0
            else "no volume is diffusion weighted"
        )
        raise ValueError(
            f"{step}: the largest b-value in {where} is {largest:g}, not above the b=0 "
            f"threshold of {B0_THRESHOLD:g} s/mm²; {hint}"
        )
    if largest > MAX_BVALUE:
        raise ValueError(
            f"{step}: the largest b-value in {where} is {largest:g}; b-values are expected in "
            f"s/mm² (at most {MAX_BVALUE:g}): if they are in s/m², divide them by 1e6"
        )


def _check_directions(scheme: Scheme, where: str, step: str) -> None:
    weighted = scheme.bvals > B0_THRESHOLD
    x, y, z = scheme.bvecs[weighted].T
    dyads = np.stack([x * x, y * y, z * z, x * y, x * z, y * z], axis=1)
    singular = np.linalg.svd(dyads, compute_uv=False) if len(dyads) else np.zeros(0)
    rank = int((singular > _COLLINEARITY * singular.max(initial=0.0)).sum())
    if rank < 6:
        raise ValueError(
            f"{step}: a tensor fit needs at least 6 non-collinear gradient directions; the "
            f"{int(weighted.sum())} diffusion-weighted volumes fitted span only {rank} "
            f"({where}); check the b-vector file, or use an acquisition with more directions"
        )

"""The acquisition scheme of a DWI, checked for a tensor fit: which volumes to fit, and why not.

Real data arrive with b-values in the wrong units, shells written with scanner jitter
(1470-1530 for a nominal 1500), b-vectors rounded to two decimals, no b=0 volume, too few
directions, or shells far above the range where the tensor model holds. Each case raises
or warns here, naming the b-value or b-vector file and what to do about it; every warning is
also kept in `Scheme.notes`, so that the report and the sidecars can say it again.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from kwneuro_pydra.resources import B0_THRESHOLD, BVEC_NORM_TOLERANCE, Dwi, source_of

__all__ = [
    "BVEC_ROUNDING",
    "MAX_BVALUE",
    "SHELL_TOLERANCE",
    "Scheme",
    "Shell",
    "fitted_scheme",
    "shells",
]

SHELL_TOLERANCE = 20.0
"""Largest gap between neighbouring b-values of one shell, in s/mm² (dipy's ``tol``)."""

BVEC_ROUNDING = 1e-3
"""A b-vector norm further than this from 1 marks a rounded file, whose vectors are then all
normalised with a warning (6-decimal files are far below it, 2-decimal files above)."""

MAX_BVALUE = 100_000.0
"""Largest plausible b-value in s/mm²; larger ones are taken for another unit (s/m²)."""

_COLLINEARITY = 1e-3
"""Singular values of the direction matrix below this fraction of the largest do not count."""


@dataclass(frozen=True)
class Shell:
    """One shell of diffusion-weighted volumes.

    Attributes:
        bval: Its nominal b-value: the median of its b-values (s/mm²).
        volumes: How many volumes it has.
        low: Its lowest b-value.
        high: Its highest b-value.
    """

    bval: float
    volumes: int
    low: float
    high: float

    def describe(self) -> str:
        """Return ``b=1500 (1470-1530, 30 volumes)`` or ``b=1000 (30 volumes)``."""
        spread = f"{self.low:g}-{self.high:g}, " if self.high > self.low else ""
        return f"b={self.bval:g} ({spread}{self.volumes} volumes)"


@dataclass(frozen=True)
class Scheme:
    """The volumes a tensor fit uses, and what was said about the others.

    Attributes:
        keep: Which volumes of the DWI are fitted, shape (N,).
        bvals: Their b-values (s/mm², as given).
        bvecs: Their b-vectors, all normalised when a norm is further than `BVEC_ROUNDING`
            from 1 (non-finite entries of b=0 rows are 0).
        fitted: The shells fitted, lowest first.
        left_out: The shells left out (nominal b above ``bmax``), lowest first.
        b0_volumes: The b=0 volumes fitted (b-value at most `B0_THRESHOLD`).
        notes: The warnings given, one sentence each.
    """

    keep: NDArray[np.bool_]
    bvals: NDArray[np.float64]
    bvecs: NDArray[np.float64]
    fitted: tuple[Shell, ...] = ()
    left_out: tuple[Shell, ...] = ()
    b0_volumes: int = 0
    notes: tuple[str, ...] = ()


def shells(
    bvals: NDArray[np.float64], tolerance: float = SHELL_TOLERANCE
) -> list[NDArray[np.intp]]:
    """Group the volumes of diffusion-weighted b-values into shells, lowest first.

    Sorted b-values that differ from their neighbour by at most ``tolerance`` belong to one
    shell (single linkage, as MRtrix clusters shells), so a shell written with jitter
    (1470-1530) stays whole however wide it is, and shells further apart than ``tolerance``
    stay apart. The default tolerance is dipy's (``unique_bvals_tolerance``'s ``tol``),
    whose clusters are also split by gaps above it but are at most ``2 * tol`` wide.

    Args:
        bvals: All b-values; those at or below `B0_THRESHOLD` are skipped.
        tolerance: Largest gap within a shell, in s/mm².

    Returns:
        The volume indices of each shell.
    """
    order = np.array([i for i in np.argsort(bvals, kind="stable") if bvals[i] > B0_THRESHOLD])
    if not order.size:
        return []
    cuts = np.flatnonzero(np.diff(bvals[order]) > tolerance) + 1
    return [group.astype(np.intp) for group in np.split(order, cuts)]


def _shell(bvals: NDArray[np.float64], group: NDArray[np.intp]) -> Shell:
    values = bvals[group]
    return Shell(float(np.median(values)), len(group), float(values.min()), float(values.max()))


def _describe(found: list[Shell]) -> str:
    """The shells for a message (a range when there are many)."""
    if len(found) <= 6:
        return ", ".join(s.describe() for s in found)
    return f"{len(found)} shells from b={found[0].bval:g} to b={found[-1].bval:g}"


def fitted_scheme(
    dwi: Dwi, *, bmax: float, step: str, shell_tolerance: float = SHELL_TOLERANCE
) -> Scheme:
    """Check a DWI's b-values and b-vectors for a tensor fit and select the volumes to fit.

    Volumes at or below `B0_THRESHOLD` are b=0 images; the others are grouped into `shells`.
    A shell is fitted or left out as a whole: fitted when its nominal (median) b-value is at
    most ``bmax`` (within ``shell_tolerance``: a shell written 1470-1530, median 1500.4, is
    at ``bmax=1500``). Every case below is said by a `UserWarning` and kept in `Scheme.notes`:

    - shells left out, by nominal b-value, volumes and range;
    - no shell at most ``bmax`` (a single high shell, as dipy's ``small_25`` at b=2000): the
      lowest shell is fitted, and the warning says that the tensor is biased there (the
      signal of tissue is not mono-exponential at high b: MD lower, FA higher);
    - no b=0 volume (lowest b-value above `B0_THRESHOLD`, say 60): every shell up to
      ``bmax`` is fitted and S0 is extrapolated, as dipy does (its ``TensorModel`` fits any
      table; the b=0 threshold only names the b=0 images);
    - b-vectors of diffusion-weighted volumes further than `BVEC_ROUNDING` from unit length
      (`Dwi` accepts up to ``BVEC_NORM_TOLERANCE``, dipy's ``atol`` of 1e-2): the file was
      rounded, and all its b-vectors are normalised. Tables whose norms are all closer to 1
      are used as given, as dipy does (dipy never normalises).

    Args:
        dwi: The DWI.
        bmax: Highest nominal shell b-value to fit, in s/mm².
        step: The step's name, for messages.
        shell_tolerance: Largest gap between neighbouring b-values of one shell (s/mm²).

    Returns:
        The volumes to fit, with the shells fitted and left out and the warnings given.

    Raises:
        ValueError: The b-values look like another unit than s/mm²; no b=0 volume and a
            single b-value fitted (S0 and the diffusivities cannot be told apart); the
            fitted directions do not span a tensor (fewer than 6 non-collinear). Each
            message names the file and what to do.
    """
    bvals = np.asarray(dwi.bval.get(), dtype=np.float64)
    bvecs = np.asarray(dwi.bvec.get(), dtype=np.float64)
    where = source_of(dwi.bval)
    _check_units(bvals, where, step)
    groups = shells(bvals, shell_tolerance)
    found = [_shell(bvals, g) for g in groups]
    fitted = [i for i, s in enumerate(found) if s.bval <= bmax + shell_tolerance]
    notes = []
    if not fitted:
        fitted = [0]
        notes.append(
            f"{step}: no shell of {where} is at most bmax={bmax:g} s/mm²; fitting the lowest, "
            f"{found[0].describe()}: the tensor model is biased at high b-values (the signal "
            "is not mono-exponential: MD is underestimated, FA overestimated); compare with "
            "data at b=700-1500 before drawing conclusions"
        )
    b0 = bvals <= B0_THRESHOLD
    keep = b0.copy()
    for i in fitted:
        keep[groups[i]] = True
    left_out = [s for i, s in enumerate(found) if i not in fitted]
    if left_out:
        notes.append(
            f"{step}: fitting the tensor to {_describe([found[i] for i in fitted])} and "
            f"{int(b0.sum())} b=0 volumes; leaving out {sum(s.volumes for s in left_out)} "
            f"volumes of {_describe(left_out)} ({where}), whose nominal b-value is above "
            f"bmax={bmax:g} s/mm², where the tensor model is biased; raise bmax to fit them"
        )
    if not b0.any():
        if len(fitted) < 2:
            raise ValueError(
                f"{step}: no b=0 volume in {where} (smallest b-value {bvals.min():g} s/mm², "
                f"b=0 images are those at or below {B0_THRESHOLD:g}) and a single shell "
                "fitted: S0 and the diffusivities cannot be told apart; add the b=0 volumes "
                "of the acquisition, or raise bmax to fit a second shell"
            )
        notes.append(
            f"{step}: no b=0 volume in {where} (smallest b-value {bvals.min():g} s/mm², "
            f"b=0 images are those at or below {B0_THRESHOLD:g}); the tensor is fitted to "
            "the shells and S0 is extrapolated to b=0, as dipy does"
        )
    chosen = np.where(np.isfinite(bvecs[keep]), bvecs[keep], 0.0)
    weighted = bvals[keep] > B0_THRESHOLD
    norms = np.linalg.norm(chosen[weighted], axis=1)
    far = np.abs(norms - 1.0) > BVEC_ROUNDING
    if far.any():
        notes.append(
            f"{step}: {int(far.sum())} b-vectors of {source_of(dwi.bvec)} are not of unit "
            f"length (norms {norms.min():.4f} to {norms.max():.4f}; accepted within "
            f"{BVEC_NORM_TOLERANCE:g}, as dipy does); they are normalised before the fit"
        )
    if far.any():  # a rounded file: every vector is rounded, normalise them all
        chosen[weighted] /= norms[:, None]
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    scheme = Scheme(
        keep,
        bvals[keep],
        chosen,
        fitted=tuple(found[i] for i in fitted),
        left_out=tuple(left_out),
        b0_volumes=int(b0.sum()),
        notes=tuple(notes),
    )
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

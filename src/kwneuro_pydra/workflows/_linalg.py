"""Small dense linear algebra vectorised across voxels (the voxel index is the last axis).

numpy's batched `numpy.linalg.solve` and `numpy.linalg.eigh` call LAPACK once per 7 x 7 or
3 x 3 matrix; for a few hundred thousand voxels that per-call cost dominates the tensor fit.
Here the same algorithms run as whole-array operations instead: a Cholesky solve for the
symmetric positive definite normal equations, and cyclic Jacobi rotations for the symmetric
3 x 3 eigenproblem (accurate to rounding, also for repeated eigenvalues).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["eigh3", "solve_spd"]

Float64 = NDArray[np.float64]

_JACOBI_SWEEPS = 12
"""Upper bound on Jacobi sweeps; 3 x 3 matrices converge (quadratically) in 3 to 5."""


def solve_spd(a: Float64, b: Float64) -> tuple[Float64, NDArray[np.bool_]]:
    """Solve ``a[..., n] x = b[..., n]`` for symmetric positive definite ``a`` by Cholesky.

    Args:
        a: Matrices, shape (k, k, n); only the lower triangle is read.
        b: Right-hand sides, shape (k, n).

    Returns:
        The solutions (k, n), and which of the n systems were positive definite (the
        solutions of the others are meaningless).
    """
    k, n = b.shape
    low = np.zeros((k, k, n))
    ok = np.ones(n, bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in range(k):
            pivot = a[j, j] - np.einsum("kn,kn->n", low[j, :j], low[j, :j])
            ok &= pivot > 0
            low[j, j] = np.sqrt(np.where(ok, pivot, 1.0))
            for i in range(j + 1, k):
                dot = np.einsum("kn,kn->n", low[i, :j], low[j, :j])
                low[i, j] = (a[i, j] - dot) / low[j, j]
        y = np.empty_like(b)
        for i in range(k):
            y[i] = (b[i] - np.einsum("kn,kn->n", low[i, :i], y[:i])) / low[i, i]
        x = np.empty_like(b)
        for i in reversed(range(k)):
            x[i] = (y[i] - np.einsum("kn,kn->n", low[i + 1 :, i], x[i + 1 :])) / low[i, i]
    return x, ok & np.isfinite(x).all(axis=0)


def eigh3(tensor: Float64) -> tuple[Float64, Float64]:
    """Eigenvalues (descending) and eigenvectors of symmetric 3 x 3 matrices.

    Args:
        tensor: Matrices, shape (3, 3, n) (only the lower triangle is read).

    Returns:
        Eigenvalues, shape (n, 3), in descending order, and eigenvectors, shape (n, 3, 3),
        as columns: ``evecs[:, :, k]`` belongs to ``evals[:, k]``.
    """
    n = tensor.shape[-1]
    a = _symmetric({(i, j): tensor[j, i].copy() for i in range(3) for j in range(i, 3)})
    v = [[np.full(n, float(i == j)) for j in range(3)] for i in range(3)]
    scale = sum((a[i][j] ** 2 for i in range(3) for j in range(3)), np.zeros(n))
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        _jacobi(a, v, scale, _JACOBI_SWEEPS)
    evals = np.stack([a[0][0], a[1][1], a[2][2]], axis=1)
    evecs = np.stack([np.stack(row, axis=1) for row in v], axis=1)
    order = np.argsort(-evals, axis=1, kind="stable")
    return (
        np.take_along_axis(evals, order, axis=1),
        np.take_along_axis(evecs, order[:, None, :], axis=2),
    )


def _symmetric(upper: dict[tuple[int, int], Float64]) -> list[list[Float64]]:
    """A 3 x 3 matrix of arrays from its upper triangle; ``a[i][j]`` *is* ``a[j][i]``, so a
    rotation that updates one updates both.
    """
    return [[upper[min(i, j), max(i, j)] for j in range(3)] for i in range(3)]


def _jacobi(a: list[list[Float64]], v: list[list[Float64]], scale: Float64, sweeps: int) -> None:
    """Cyclic Jacobi sweeps until the off-diagonal part is negligible, in place.

    Most voxels converge in 3 sweeps; once fewer than half remain, the rest continue on a
    compacted copy, so the last sweeps cost little.
    """
    for done in range(sweeps):
        pending = a[0][1] ** 2 + a[0][2] ** 2 + a[1][2] ** 2 > 1e-32 * scale
        if not pending.any():
            return
        if done and pending.mean() < 0.5:
            index = np.flatnonzero(pending)
            sub_a = _symmetric({(i, j): a[i][j][index] for i in range(3) for j in range(i, 3)})
            sub_v = [[x[index] for x in row] for row in v]
            _jacobi(sub_a, sub_v, scale[index], sweeps - done)
            for i in range(3):
                for j in range(3):
                    v[i][j][index] = sub_v[i][j]
                    if i <= j:
                        a[i][j][index] = sub_a[i][j]
            return
        for p, q in ((0, 1), (0, 2), (1, 2)):
            _rotate(a, v, p, q)


def _rotate(a: list[list[Float64]], v: list[list[Float64]], p: int, q: int) -> None:
    """One Jacobi rotation that zeroes ``a[p][q]`` (Golub and Van Loan, ``sym.schur2``)."""
    apq = a[p][q]
    theta = (a[q][q] - a[p][p]) / (2 * apq)
    # theta overflows to inf where apq is negligible: t is then 0, no rotation.
    t = np.where(theta >= 0, 1.0, -1.0) / (np.abs(theta) + np.sqrt(theta * theta + 1))
    t = np.where(apq != 0, t, 0.0)
    c = 1 / np.sqrt(t * t + 1)
    s = t * c
    a[p][p] -= t * apq
    a[q][q] += t * apq
    apq[...] = 0
    r = 3 - p - q
    arp, arq = a[r][p], a[r][q]
    arp[...], arq[...] = c * arp - s * arq, s * arp + c * arq
    for row in v:
        vp, vq = row[p], row[q]
        vp[...], vq[...] = c * vp - s * vq, s * vp + c * vq

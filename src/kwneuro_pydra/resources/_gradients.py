"""B-values and b-vectors: abstract bases, in-memory and FSL text file resources.

Both kinds share one implementation (`kwneuro_pydra.resources._tables`); this module holds
what is particular to each: its validation, its file suffix and its layout in FSL text.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kwneuro_pydra.resources._files import PathLike, ResourceFileError
from kwneuro_pydra.resources._tables import (
    FslTable,
    GradientTable,
    InMemoryTable,
    Table,
    TableFormat,
    real_array,
)


def _validated_bvals(array: Any) -> Table:
    values = real_array(array, "b-values")
    if values.ndim != 1:
        msg = f"b-value array must have shape (N,), got {values.shape}"
        raise ValueError(msg)
    if not np.isfinite(values).all():
        msg = "b-values must be finite (found nan or inf)"
        raise ValueError(msg)
    if (values < 0).any():
        msg = f"b-values must not be negative (found {values.min():g})"
        raise ValueError(msg)
    return values


def _bvals_from_rows(rows: list[list[float]], path: Path) -> Table:
    """B-values from a file of one row or one column (any layout: all numbers in order)."""
    return np.array([value for row in rows for value in row], dtype=np.float64)


def _validated_bvecs(array: Any) -> Table:
    vectors = real_array(array, "b-vectors")
    if vectors.ndim != 2 or vectors.shape[1] != 3:
        msg = f"b-vector array must have shape (N, 3), got {vectors.shape}"
        raise ValueError(msg)
    return vectors


def _bvecs_from_rows(rows: list[list[float]], path: Path) -> Table:
    """B-vectors from three rows (x, y, z; FSL) or N rows of three (dipy)."""
    widths = {len(row) for row in rows}
    if len(widths) != 1:
        msg = f"malformed b-vector file: {path} (rows of different lengths: {sorted(widths)})"
        raise ResourceFileError(msg)
    table = np.array(rows, dtype=np.float64)
    if table.shape[0] == 3:
        table = table.T
    elif table.shape[1] != 3:
        msg = (
            f"malformed b-vector file: {path} (a {table.shape[0]} x {table.shape[1]} "
            "table; expected 3 rows of x, y, z, or N rows of 3)"
        )
        raise ResourceFileError(msg)
    return np.ascontiguousarray(table)


_BVALS = TableFormat(
    what="b-value",
    suffix=".bval",
    validate=_validated_bvals,
    from_rows=_bvals_from_rows,
    to_rows=np.atleast_2d,  # one row
)

_BVECS = TableFormat(
    what="b-vector",
    suffix=".bvec",
    validate=_validated_bvecs,
    from_rows=_bvecs_from_rows,
    to_rows=np.transpose,  # three rows: x, y, z
)


class BvalResource(GradientTable["InMemoryBvalResource", "FslBvalResource"]):
    """The b-values of a 4-D DWI, one per volume.

    Implements the cache protocol (``<step_name>.bval``, FSL text).
    """


@dataclass(frozen=True, eq=False)
class InMemoryBvalResource(InMemoryTable, BvalResource):
    """B-values held in memory.

    Args:
        array: The b-values, shape (N,), finite and non-negative.

    Raises:
        ValueError: the array is not 1-D, not numeric, not finite, or has negative values.
    """


@dataclass(frozen=True, init=False)
class FslBvalResource(FslTable, BvalResource):
    """B-values in an FSL text file (numbers separated by white space; one row or one column).

    Args:
        path: The file; made absolute (``~`` expanded, links resolved).

    Raises:
        FileNotFoundError: the file does not exist.
        ResourceFileError: the file is empty or holds something other than numbers.
        ValueError: the values are not finite or are negative.

    Fingerprint: the file's content.
    """

    @staticmethod
    def save(bvals: BvalResource, path: PathLike) -> "FslBvalResource":
        """Write ``bvals`` to ``path`` as one row of FSL text; a `FslBvalResource` over it."""
        return FslBvalResource._write(bvals, path)


class BvecResource(GradientTable["InMemoryBvecResource", "FslBvecResource"]):
    """The b-vectors of a 4-D DWI, one unit vector (x, y, z) per volume.

    Implements the cache protocol (``<step_name>.bvec``, FSL text).
    """


@dataclass(frozen=True, eq=False)
class InMemoryBvecResource(InMemoryTable, BvecResource):
    """B-vectors held in memory.

    Unit length is checked by `Dwi`, which knows the b-values: rows of b=0 volumes may be
    zero or even nan (as in some scanner exports and in dipy's ``small_64D`` data).

    Args:
        array: The b-vectors, shape (N, 3).

    Raises:
        ValueError: the array is not of shape (N, 3) or not numeric.
    """


@dataclass(frozen=True, init=False)
class FslBvecResource(FslTable, BvecResource):
    """B-vectors in an FSL text file: three rows (x, y and z of every volume).

    A file of N rows of three numbers (N != 3) is also accepted, as dipy does. A 3x3 file is
    read the FSL way (rows are x, y, z).

    Args:
        path: The file; made absolute (``~`` expanded, links resolved).

    Raises:
        FileNotFoundError: the file does not exist.
        ResourceFileError: the file is empty, holds something other than numbers, or is not
            a 3 x N (or N x 3) table.

    Fingerprint: the file's content.
    """

    @staticmethod
    def save(bvecs: BvecResource, path: PathLike) -> "FslBvecResource":
        """Write ``bvecs`` to ``path`` as three rows (x, y, z); a `FslBvecResource` over it."""
        return FslBvecResource._write(bvecs, path)


BvalResource._bind(_BVALS, InMemoryBvalResource, FslBvalResource)
BvecResource._bind(_BVECS, InMemoryBvecResource, FslBvecResource)

"""Hypothesis strategies for the values kwneuro-pydra fingerprints, in one place."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.complex_number_dtypes(),
)

arrays = dtypes.flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, max_side=6))
)

nifti_dtypes = st.one_of(
    hnp.integer_dtypes(endianness="="),
    hnp.unsigned_integer_dtypes(endianness="="),
    hnp.floating_dtypes(endianness="=", sizes=(32, 64)),
    hnp.complex_number_dtypes(endianness="=", sizes=(64, 128)),
)
"""The dtypes a NIfTI-1 file stores as they are (native byte order)."""

nifti_arrays = st.tuples(
    nifti_dtypes, hnp.array_shapes(min_dims=3, max_dims=4, max_side=5), st.sampled_from("CF")
).flatmap(
    lambda spec: hnp.arrays(spec[0], spec[1]).map(
        lambda a: np.asfortranarray(a) if spec[2] == "F" else np.ascontiguousarray(a)
    )
)
"""Volumes (3-D or 4-D, C or Fortran order) of those dtypes, any values (NaN included)."""

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)

values: st.SearchStrategy[Any] = st.recursive(
    scalars | arrays,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=5), children, max_size=4),
        st.frozensets(st.integers() | st.text(max_size=5), max_size=4),
    ),
    max_leaves=8,
)


def copy_value(value: Any) -> Any:
    """Return an equal value built from fresh objects (arrays copied, possibly re-laid out)."""
    if isinstance(value, np.ndarray):
        return value.copy(order="K")
    if isinstance(value, list):
        return [copy_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(copy_value(v) for v in value)
    if isinstance(value, dict):
        return {k: copy_value(v) for k, v in reversed(list(value.items()))}
    return value


def _masked(array: np.ndarray, mask: np.ndarray, fill: Any, hard: bool) -> np.ma.MaskedArray:
    return np.ma.array(array, mask=mask, fill_value=fill, hard_mask=hard)


masked_arrays: st.SearchStrategy[np.ma.MaskedArray] = arrays.flatmap(
    lambda array: st.builds(
        _masked,
        st.just(array),
        hnp.arrays(np.bool_, array.shape),
        hnp.from_dtype(array.dtype),
        st.booleans(),
    )
)
"""Masked arrays with any mask, fill value and mask hardness."""

memoryviews: st.SearchStrategy[memoryview] = arrays.flatmap(
    lambda array: st.sampled_from(
        [array, np.asfortranarray(array)] + ([array[::2], array[::-1]] if array.ndim else [])
    )
).map(memoryview)
"""Memoryviews of every format numpy exports, C, Fortran and strided."""

SAME_ITEMSIZE: dict[int, list[np.dtype[Any]]] = {
    size: [np.dtype(code) for code in codes]
    for size, codes in {
        1: "?bB",
        2: ["<i2", "<u2", "<f2", ">i2"],
        4: ["<i4", "<u4", "<f4", ">f4"],
        8: ["<i8", "<u8", "<f8", "<c8", ">i8"],
        16: ["<c16", ">c16"],
    }.items()
}
"""Dtypes by item size: reinterpreting one item size as another dtype keeps the bytes."""


# --- malformed cache sidecars ------------------------------------------------------------


def _parses_as_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError):
        return False
    return True


_json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=4))
_not_a_str = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.lists(_json_leaves, max_size=2),
    st.dictionaries(st.text(max_size=3), _json_leaves, max_size=2),
)
_not_a_dict = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=4),
    st.lists(_json_leaves, max_size=2),
)
_not_a_number = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=4),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.lists(st.integers(), max_size=2),
)
_not_a_size = st.one_of(
    _not_a_number, st.just("big"), st.integers(max_value=-1), st.floats(allow_nan=False)
)
_not_a_time = st.one_of(
    _not_a_str.filter(lambda v: not isinstance(v, str)),
    st.just("yesterday"),
    st.text(max_size=12).filter(lambda t: not _parses_as_time(t)),
)
_not_a_scalar = st.one_of(
    st.lists(_json_leaves, max_size=2),
    st.just(math.nan),
    st.dictionaries(st.sampled_from(["float", "int", "x"]), _json_leaves, max_size=2),
    st.just({"float": "1.5"}),
)
_not_a_file_record = st.one_of(
    _not_a_dict,
    st.just({"size": 128}),  # no digest
    st.builds(lambda size: {"size": size, "digest": "xxh3_128:00"}, _not_a_size),
    st.builds(lambda digest: {"size": 128, "digest": digest}, _not_a_str),
)

SIDECAR_FIELDS = ("format", "scalars", "hashes", "code", "files", "created", "duration", "library")

sidecar_corruptions: st.SearchStrategy[tuple[str, str, Any]] = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(SIDECAR_FIELDS), st.none()),
    st.tuples(st.just("set"), st.just("format"), _json_leaves.filter(lambda v: v != 1)),
    st.tuples(
        st.just("set"),
        st.just("scalars"),
        _not_a_dict | st.dictionaries(st.text(max_size=3), _not_a_scalar, min_size=1, max_size=2),
    ),
    st.tuples(
        st.just("set"),
        st.just("hashes"),
        _not_a_dict | st.dictionaries(st.text(max_size=3), _not_a_str, min_size=1, max_size=2),
    ),
    st.tuples(st.just("set"), st.just("code"), _not_a_str),
    st.tuples(st.just("set"), st.just("files"), _not_a_dict),
    st.tuples(st.just("file"), st.just("files"), _not_a_file_record),
    st.tuples(st.just("set"), st.just("created"), _not_a_time),
    st.tuples(st.just("set"), st.just("duration"), _not_a_number),
    st.tuples(st.just("set"), st.just("library"), _not_a_str),
    st.tuples(st.just("whole"), st.just(""), _not_a_dict),
)
"""Ways to break a sidecar: (operation, field, value) for `corrupt_sidecar`."""


def corrupt_sidecar(raw: dict[str, Any], corruption: tuple[str, str, Any]) -> Any:
    """Return a copy of a valid sidecar broken as ``corruption`` says.

    ``("drop", field, _)`` removes a field, ``("set", field, value)`` replaces it,
    ``("file", "files", record)`` replaces the record of every output file, and
    ``("whole", "", value)`` replaces the whole JSON document.
    """
    operation, field, value = corruption
    broken = dict(raw)
    if operation == "drop":
        del broken[field]
    elif operation == "set":
        broken[field] = value
    elif operation == "file":
        broken["files"] = {name: value for name in raw["files"]}
    else:
        return value
    return broken


@st.composite
def symmetric_3x3(draw: st.DrawFn) -> np.ndarray:
    """Symmetric 3 x 3 matrices with eigenvalues of either sign, often repeated (as in
    isotropic and cylindrically symmetric diffusion tensors), in a random orientation."""
    magnitudes = st.sampled_from([0.0, 1e-9, 3e-4, 1e-3, 1.7e-3, 3e-3, -2e-4, 1.0])
    first = draw(magnitudes)
    evals = [first, draw(st.just(first) | magnitudes), draw(st.just(first) | magnitudes)]
    quaternion = np.array(draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4)))
    w, x, y, z = quaternion / (np.linalg.norm(quaternion) or 1.0)
    rotation = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    return np.asarray(rotation @ np.diag(evals) @ rotation.T)

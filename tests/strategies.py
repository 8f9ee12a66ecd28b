"""Hypothesis strategies for the values kwneuro-pydra fingerprints, in one place."""

from __future__ import annotations

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

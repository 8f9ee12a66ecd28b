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

nifti_dtypes = st.one_of(
    hnp.integer_dtypes(endianness="="),
    hnp.unsigned_integer_dtypes(endianness="="),
    hnp.floating_dtypes(endianness="=", sizes=(32, 64)),
    hnp.complex_number_dtypes(endianness="=", sizes=(64, 128)),
)
"""The dtypes a NIfTI-1 file stores as they are (native byte order)."""

nifti_arrays = st.tuples(
    nifti_dtypes, hnp.array_shapes(min_dims=3, max_dims=4, max_side=5), st.sampled_from("CF")
).flatmap(lambda spec: hnp.arrays(spec[0], spec[1]).map(lambda a: np.asarray(a, order=spec[2])))
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

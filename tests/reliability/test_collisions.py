"""Values that used to collide (wrong hits) or to raise instead of fingerprinting (issue 11, 6).

Masked arrays differing only in their fill value (or mask hardness) shared a fingerprint, and
memoryviews were hashed by their bytes alone, so an int32 ``[-1]`` was a uint32
``[4294967295]`` and a float32 its int32 bit pattern. A non-contiguous memoryview raised
`BufferError` out of `fingerprint`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kwneuro_pydra import Cache, cacheable, fingerprint
from tests._pydra_steps import json_spec
from tests.strategies import SAME_ITEMSIZE, masked_arrays, memoryviews


def _flip_a_bit(raw: bytes, data: st.DataObject) -> bytes:
    changed = bytearray(raw)
    changed[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    return bytes(changed)


def _other_dtype(dtype: np.dtype[Any], data: st.DataObject) -> np.dtype[Any]:
    others = [d for d in SAME_ITEMSIZE[dtype.itemsize] if d != dtype]
    return data.draw(st.sampled_from(others))


# --- masked arrays -------------------------------------------------------------------------


def test_masked_arrays_differing_only_in_fill_value_do_not_collide() -> None:
    a = np.ma.array([1.0, 2.0, 3.0], mask=[False, True, False], fill_value=5.0)
    b = np.ma.array([1.0, 2.0, 3.0], mask=[False, True, False], fill_value=6.0)
    assert a.filled().tolist() != b.filled().tolist()
    assert fingerprint(a) != fingerprint(b)


def test_masked_arrays_differing_only_in_mask_or_hardness_do_not_collide() -> None:
    base = np.ma.array([1, 2, 3], mask=[False, True, False])
    assert fingerprint(base) != fingerprint(np.ma.array([1, 2, 3], mask=[True, True, False]))
    assert fingerprint(base) != fingerprint(
        np.ma.array([1, 2, 3], mask=[False, True, False], hard_mask=True)
    )
    assert fingerprint(np.ma.array([1, 2, 3])) == fingerprint(
        np.ma.array([1, 2, 3], mask=[False] * 3)
    )  # no mask and an all-false mask mean the same


@given(masked_arrays)
def test_equal_masked_arrays_fingerprint_alike(value: np.ma.MaskedArray) -> None:
    copy = np.ma.array(
        value.data.copy(order="K"),
        mask=np.ma.getmaskarray(value).copy(),
        fill_value=value.fill_value,
        hard_mask=value.hardmask,
    )
    assert fingerprint(copy) == fingerprint(value) is not None


@given(masked_arrays, st.data())
def test_any_change_of_a_masked_array_changes_its_fingerprint(
    value: np.ma.MaskedArray, data: st.DataObject
) -> None:
    before = fingerprint(value)
    mask = np.ma.getmaskarray(value)
    variants = [
        np.ma.array(
            value.data, mask=mask, fill_value=value.fill_value, hard_mask=not value.hardmask
        )
    ]
    if value.size:
        raw = value.data.tobytes()
        data_changed = np.frombuffer(_flip_a_bit(raw, data), value.dtype).reshape(value.shape)
        index = data.draw(st.integers(0, value.size - 1))
        flipped = mask.copy().reshape(-1)
        flipped[index] = not flipped[index]
        variants += [
            np.ma.array(data_changed, mask=mask, fill_value=value.fill_value),
            np.ma.array(
                value.data, mask=flipped.reshape(value.shape), fill_value=value.fill_value
            ),
            np.ma.array(value.data.reshape(-1), mask=mask.reshape(-1), fill_value=value.fill_value)
            if value.ndim != 1
            else np.ma.array(value.data[:, None], mask=mask[:, None]),
            value.view(_other_dtype(value.dtype, data)),
        ]
    fill = np.asarray(value.fill_value).tobytes()
    other_fill = np.frombuffer(_flip_a_bit(fill, data), value.dtype)[0]
    refilled = np.ma.array(value.data, mask=mask, fill_value=other_fill, hard_mask=value.hardmask)
    if np.asarray(refilled.fill_value).tobytes() != fill:  # (a bool keeps only "true")
        variants.append(refilled)
    for variant in variants:
        assert fingerprint(variant) != before


# --- memoryviews ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (np.array([-1], np.int32), np.array([4294967295], np.uint32)),
        (np.array([1.5], np.float32), np.array([1.5], np.float32).view(np.int32)),
        (np.arange(6, dtype=np.int16), np.arange(6, dtype=np.int16).reshape(2, 3)),
        (np.arange(4, dtype=np.int16), np.arange(4, dtype=np.int16).view(np.int32)),
    ],
)
def test_memoryviews_of_the_same_bytes_in_other_formats_do_not_collide(
    a: np.ndarray, b: np.ndarray
) -> None:
    assert a.tobytes() == b.tobytes()
    assert fingerprint(a.data) != fingerprint(b.data)


def test_a_non_contiguous_memoryview_is_fingerprinted_by_its_items() -> None:
    strided = np.arange(10, dtype=np.int64).data[::2]
    assert not strided.c_contiguous
    assert fingerprint(strided) == fingerprint(np.arange(0, 10, 2, dtype=np.int64).data)
    assert fingerprint(strided) != fingerprint(np.arange(1, 10, 2, dtype=np.int64).data)


def test_a_step_taking_a_strided_memoryview_is_cached(tmp_path: Path) -> None:
    calls: list[int] = []

    @cacheable(json_spec("total"))
    def total(values: memoryview) -> int:
        calls.append(1)
        return int(sum(values.tolist()))

    numbers = np.arange(10, dtype=np.int64)
    with Cache(tmp_path):  # no BufferError, no warning (warnings are errors here)
        assert total(numbers.data[::2]) == 20
        assert total(numbers.data[::2]) == 20
        assert total(numbers.data[1::2]) == 25
    assert len(calls) == 2


@given(memoryviews)
def test_equal_memoryviews_fingerprint_alike(view: memoryview) -> None:
    array = np.asarray(view)
    for layout in (array.copy(order="C"), array.copy(order="F")):
        assert fingerprint(layout.data) == fingerprint(view) is not None


@given(memoryviews, st.data())
def test_any_change_of_a_memoryview_changes_its_fingerprint(
    view: memoryview, data: st.DataObject
) -> None:
    before = fingerprint(view)
    array = np.asarray(view).copy(order="C")
    variants = [array.reshape(-1) if array.ndim != 1 else array[:, None]]
    if array.size:
        changed = np.frombuffer(_flip_a_bit(array.tobytes(), data), array.dtype)
        variants += [changed.reshape(array.shape), array.view(_other_dtype(array.dtype, data))]
    for variant in variants:
        assert fingerprint(variant.data) != before

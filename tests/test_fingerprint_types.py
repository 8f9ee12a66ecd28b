"""Fingerprints keep values of different types apart, and take numpy's unusual values."""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from kwneuro_pydra import Cache, cacheable, fingerprint
from tests._pydra_steps import json_spec


@cacheable(json_spec("rv_square"))
def rv_square(a: np.ndarray) -> Sequence[int]:
    return tuple(np.asarray(a * a).ravel().tolist())


def test_ndarray_subclass_is_not_confused_with_ndarray(tmp_path: Path) -> None:
    values = [[1, 2], [3, 4]]
    with Cache(tmp_path):
        assert rv_square(np.array(values)) == (1, 4, 9, 16)
        with pytest.warns(PendingDeprecationWarning):
            matrix = np.matrix(values)
        with pytest.warns(PendingDeprecationWarning):  # the matrix product warns too
            product = rv_square(matrix)
        assert product == (7, 10, 15, 22)


class _Color(enum.StrEnum):
    RED = "red"


class _Meters(float):
    pass


def test_builtin_subclasses_keep_their_type_in_the_fingerprint() -> None:
    pairs = [
        (_Color.RED, "red"),
        (_Meters(1.0), 1.0),
        (collections.Counter({"a": 1}), {"a": 1}),
        (collections.defaultdict(int, {"a": 1}), {"a": 1}),
    ]
    assert all(fingerprint(a) != fingerprint(b) for a, b in pairs)


def _struct(offsets: list[int]) -> np.ndarray:
    return np.zeros(
        2, np.dtype({"names": ["a", "b"], "formats": ["<i4", "<i4"], "offsets": offsets})
    )


@pytest.mark.parametrize(
    ("make", "sibling"),
    [
        (lambda: np.datetime64(1, "s"), lambda: np.datetime64(1, "ms")),
        (
            lambda: np.ma.array([1, 2, 3], mask=[False, True, False]),
            lambda: np.ma.array([1, 2, 3], mask=[False, False, False]),
        ),
        (lambda: _struct([4, 0]), lambda: _struct([0, 4])),
    ],
    ids=["datetime64-scalar", "masked-array", "out-of-order-struct"],
)
def test_numpy_values_are_fingerprinted_and_told_from_a_sibling(
    make: Callable[[], object], sibling: Callable[[], object]
) -> None:
    """``fingerprint`` answers None for what it cannot take: these it must take, by value."""
    assert fingerprint(make()) is not None
    assert fingerprint(make()) == fingerprint(make())
    assert fingerprint(make()) != fingerprint(sibling())

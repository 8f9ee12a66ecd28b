"""Tests of `kwneuro_pydra.fingerprint` and the file-digest memo."""

from __future__ import annotations

import dataclasses
import enum
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kwneuro_pydra import Cache, _filedigest, fingerprint
from tests._audit import watching
from tests.strategies import arrays, copy_value, values

HEX = set("0123456789abcdef")


def is_fingerprint(text: str | None) -> bool:
    return text is not None and len(text) == 64 and set(text) <= HEX


@given(values)
def test_equal_values_give_equal_fingerprints(value: Any) -> None:
    digest = fingerprint(value)
    assert is_fingerprint(digest)
    assert fingerprint(copy_value(value)) == digest


@given(arrays, st.data())
def test_any_content_change_changes_an_array_fingerprint(array: np.ndarray, data: Any) -> None:
    if array.nbytes == 0:
        return
    raw = bytearray(array.tobytes())
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= 1 << data.draw(st.integers(0, 7))
    changed = np.frombuffer(bytes(raw), dtype=array.dtype).reshape(array.shape)
    assert fingerprint(changed) != fingerprint(array)


@given(arrays)
def test_shape_and_dtype_enter_array_fingerprints(array: np.ndarray) -> None:
    flat = array.reshape(-1)
    if array.ndim != 1:
        assert fingerprint(flat) != fingerprint(array)
    as_bytes = array.view(np.uint8) if array.ndim and array.dtype != np.uint8 else None
    if as_bytes is not None and array.flags.c_contiguous:
        assert fingerprint(as_bytes) != fingerprint(array)


def test_reshape_and_dtype_views_collide_nowhere() -> None:
    base = np.arange(6, dtype=np.int64)
    variants = [
        base,
        base.reshape(2, 3),
        base.reshape(3, 2),
        base.view(np.float64),
        base.view(np.uint64),
        base.astype(np.int32),
        np.asfortranarray(base.reshape(2, 3)),
    ]
    assert len({fingerprint(v) for v in variants}) == len(variants)


def test_memory_order_is_in_the_digest_but_not_the_layout_of_equal_memory() -> None:
    c = np.arange(12, dtype=np.float32).reshape(3, 4)
    f = np.asfortranarray(c)
    same_memory_other_meaning = np.frombuffer(f.tobytes(order="F"), np.float32).reshape(3, 4)
    assert fingerprint(f) != fingerprint(same_memory_other_meaning)
    assert fingerprint(f) == fingerprint(np.asfortranarray(c.copy()))
    assert fingerprint(c[:, ::2]) == fingerprint(np.ascontiguousarray(c[:, ::2]))


def test_fortran_arrays_are_hashed_without_a_copy() -> None:
    array = np.asfortranarray(np.ones((256, 256, 64), dtype=np.float32))  # 16 MiB
    tracemalloc.start()
    try:
        fingerprint(array)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < array.nbytes // 100


@pytest.mark.parametrize(
    "values",
    [
        [1, 1.0, True, "1", b"1", np.int64(1), np.float64(1.0), [1], (1,), {1}, frozenset({1})],
        [0.0, -0.0, 0, False, None, "", b"", [], (), {}],
        [float("nan"), float("inf"), float("-inf"), "nan", "inf"],
        [Path("a.txt"), "a.txt", b"a.txt"],
    ],
)
def test_type_is_part_of_the_fingerprint(
    values: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    digests = [fingerprint(v) for v in values]
    assert all(is_fingerprint(d) for d in digests)
    assert len(set(digests)) == len(values)


def test_floats_are_exact() -> None:
    assert fingerprint(0.1 + 0.2) != fingerprint(0.3)
    assert fingerprint(float("nan")) == fingerprint(float("nan"))


def test_dict_and_set_order_do_not_matter() -> None:
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({3, 1, 2}) == fingerprint({2, 3, 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2}) != fingerprint({"b": 1})


@dataclasses.dataclass
class Params:
    sigma: float
    labels: list[int]


@dataclasses.dataclass
class OtherParams:
    sigma: float
    labels: list[int]


@attrs.define
class AttrsParams:
    sigma: float
    weights: np.ndarray


class Point(NamedTuple):
    x: int
    y: int


class Colour(enum.Enum):
    RED = 1
    BLUE = 2


def test_dataclass_and_attrs_instances_by_class_and_every_field() -> None:
    assert fingerprint(Params(1.0, [1, 2])) == fingerprint(Params(1.0, [1, 2]))
    assert fingerprint(Params(1.0, [1, 2])) != fingerprint(Params(1.0, [1, 3]))
    assert fingerprint(Params(1.0, [1, 2])) != fingerprint(OtherParams(1.0, [1, 2]))
    a = AttrsParams(2.0, np.zeros(3))
    assert fingerprint(a) == fingerprint(AttrsParams(2.0, np.zeros(3)))
    assert fingerprint(a) != fingerprint(AttrsParams(2.0, np.ones(3)))
    assert fingerprint(Point(1, 2)) != fingerprint((1, 2))
    assert fingerprint(Colour.RED) != fingerprint(Colour.BLUE) != fingerprint(1)


def test_registered_types_and_fingerprint_methods() -> None:
    class Roi:
        def __init__(self, label: int) -> None:
            self.label = label

    class Sphere:
        def __init__(self, radius: float) -> None:
            self.radius = radius

        def __fingerprint__(self) -> object:
            return self.radius

    assert fingerprint(Roi(1)) is None

    @fingerprint.register(Roi)
    def _roi(roi: Roi) -> object:
        return roi.label

    assert fingerprint(Roi(1)) == fingerprint(Roi(1)) != fingerprint(Roi(2))
    assert fingerprint(Roi(1)) != fingerprint(1)
    assert fingerprint(Sphere(1.5)) == fingerprint(Sphere(1.5)) != fingerprint(Sphere(2.5))
    assert fingerprint(Sphere(1.5)) != fingerprint(1.5)


def test_values_without_a_fingerprint_give_none() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    assert fingerprint(object()) is None
    assert fingerprint(lambda: 1) is None
    assert fingerprint(np.array([object()])) is None
    assert fingerprint([1, object()]) is None
    assert fingerprint(cyclic) is None


def test_fingerprints_agree_across_processes_and_hash_seeds() -> None:
    script = (
        "import numpy as np; from kwneuro_pydra import fingerprint; "
        "print(fingerprint({'a': np.arange(6).reshape(2, 3), 'b': {'x', 'y', 'z'}, 'c': 1.5}))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    here = fingerprint({"a": np.arange(6).reshape(2, 3), "b": {"x", "y", "z"}, "c": 1.5})
    assert outputs == {here}


# --- files -------------------------------------------------------------------------------


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every full read of a file by the digest memo."""
    calls: list[Path] = []
    real = _filedigest._hash_file

    def counting(path: Path) -> Any:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(_filedigest, "_hash_file", counting)
    return calls


def test_files_by_content_wherever_they_live(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.nii").write_bytes(b"voxels")
    (tmp_path / "b" / "y.nii").write_bytes(b"voxels")
    (tmp_path / "b" / "z.nii").write_bytes(b"voxelz")
    assert fingerprint(tmp_path / "a" / "x.nii") == fingerprint(tmp_path / "b" / "y.nii")
    assert fingerprint(tmp_path / "a" / "x.nii") != fingerprint(tmp_path / "b" / "z.nii")
    assert fingerprint(tmp_path / "a") != fingerprint(tmp_path / "b")
    assert fingerprint(tmp_path / "missing") == fingerprint(tmp_path / "missing")
    assert fingerprint(tmp_path / "missing") != fingerprint(tmp_path / "missing2")


def test_warm_file_digests_come_from_the_memo(
    tmp_path: Path, short_racy_window: float, hash_calls: list[Path]
) -> None:
    path = tmp_path / "dwi.nii"
    path.write_bytes(os.urandom(1 << 20))
    time.sleep(short_racy_window)
    first = fingerprint(path)
    assert fingerprint(path) == first
    assert hash_calls == [path]


def test_in_place_edit_with_restored_mtime_changes_the_fingerprint(
    tmp_path: Path, short_racy_window: float
) -> None:
    path = tmp_path / "dwi.nii"
    path.write_bytes(b"a" * 4096)
    time.sleep(short_racy_window)
    before = fingerprint(path)
    stat = path.stat()
    time.sleep(short_racy_window)
    with path.open("r+b") as handle:
        handle.write(b"b")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    time.sleep(short_racy_window)
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert fingerprint(path) != before


def test_a_hard_link_keeps_the_memoised_digest_but_a_write_does_not(
    tmp_path: Path, short_racy_window: float, hash_calls: list[Path]
) -> None:
    path = tmp_path / "fa.nii"
    path.write_bytes(b"a" * 4096)
    time.sleep(short_racy_window)
    first = fingerprint(path)
    before = path.stat()
    os.link(path, tmp_path / "linked.nii")  # a new ctime, the same bytes
    _filedigest.carry_over(path, before)
    assert fingerprint(path) == first and hash_calls == [path]
    before = path.stat()
    with path.open("r+b") as handle:  # a write between the status and the carry
        handle.write(b"b")
    _filedigest.carry_over(path, before)
    assert fingerprint(path) != first and hash_calls == [path, path]


def test_a_file_written_within_the_racy_window_is_hashed_at_every_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However long the test takes, the file stays racy: an hour-wide window."""
    monkeypatch.setattr(_filedigest, "RACY_WINDOW_NS", 3600 * 10**9)
    path = tmp_path / "fresh.nii"
    path.write_bytes(b"a" * 4096)
    opened: list[object] = []

    def count(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and args[0] in (path, str(path)):
            opened.append(args[0])

    with watching(count):
        assert fingerprint(path) == fingerprint(path)
    assert len(opened) == 2


def test_racy_files_are_not_memoised(tmp_path: Path, hash_calls: list[Path]) -> None:
    path = tmp_path / "fresh.nii"
    path.write_bytes(b"a" * 4096)
    first = fingerprint(path)
    stat = path.stat()
    with path.open("r+b") as handle:
        handle.write(b"b")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint(path) != first
    assert len(hash_calls) == 2


def test_memo_persists_under_the_cache_for_new_processes(
    tmp_path: Path, short_racy_window: float
) -> None:
    path = tmp_path / "t1.nii"
    path.write_bytes(os.urandom(1 << 20))
    time.sleep(short_racy_window)
    with Cache(tmp_path / "cache"):
        expected = fingerprint(path)
    script = f"""
import pathlib
from kwneuro_pydra import Cache, fingerprint, _filedigest
def refuse(path):
    raise AssertionError("file was re-read")
_filedigest._hash_file = refuse
with Cache({str(tmp_path / "cache")!r}):
    print(fingerprint(pathlib.Path({str(path)!r})))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
    assert list((tmp_path / "cache" / ".kwneuro" / "digests").rglob("*"))


def test_nothing_is_memoised_outside_the_cache_directory(
    tmp_path: Path, short_racy_window: float
) -> None:
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "t1.nii"
    path.write_bytes(b"x" * (2 << 20))
    time.sleep(short_racy_window)
    with Cache(tmp_path / "cache"):
        fingerprint(path)
    fingerprint(path)
    assert list((tmp_path / "cache" / ".kwneuro" / "digests").rglob("*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data"]
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["t1.nii"]


def test_small_files_are_not_memoised_on_disk(tmp_path: Path, short_racy_window: float) -> None:
    path = tmp_path / "small.bval"
    path.write_bytes(b"0 1000 1000")
    time.sleep(short_racy_window)
    with Cache(tmp_path / "cache"):
        fingerprint(path)
    assert not (tmp_path / "cache" / ".kwneuro" / "digests").exists()


@given(values, values)
def test_different_values_give_different_fingerprints(a: Any, b: Any) -> None:
    if fingerprint(a) == fingerprint(b):
        assert type(a) is type(b)
        assert _structurally_equal(a, b)


def _structurally_equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return bool(
            a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes(order="A") == b.tobytes(order="A")
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(_structurally_equal, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_structurally_equal(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a.hex() == b.hex() or (a != a and b != b)
    return bool(a == b)


@given(st.floats(allow_nan=False), st.lists(st.integers(), max_size=3), st.data())
def test_any_field_change_changes_a_dataclass_fingerprint(
    sigma: float, labels: list[int], data: Any
) -> None:
    base = Params(sigma, labels)
    other_sigma = data.draw(st.floats(allow_nan=False).filter(lambda s: s.hex() != sigma.hex()))
    assert fingerprint(Params(other_sigma, labels)) != fingerprint(base)
    assert fingerprint(Params(sigma, [*labels, 0])) != fingerprint(base)
    assert fingerprint(OtherParams(sigma, labels)) != fingerprint(base)

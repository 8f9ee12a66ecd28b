"""NIfTI I/O: standard gzip both ways with nibabel, the stdlib fallback, no wasted passes.

Round trips compare bytes: the voxels we read with the ones nibabel reads (dtype, shape and
every bit), and the decompressed content of our files with the files nibabel writes.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from kwneuro_pydra import Cache, _filedigest, cacheable
from kwneuro_pydra._filedigest import file_digest
from kwneuro_pydra.resources import (
    InMemoryVolumeResource,
    NiftiVolumeResource,
    ResourceFileError,
    VolumeResource,
    _gzip,
    _niftiio,
)
from tests._volumes import nibabel_image, path_of
from tests.strategies import nifti_arrays

SUFFIXES = [".nii.gz", ".nii"]
DTYPES = [np.uint8, np.int16, np.int32, np.float32, np.float64]


def _array(dtype: Any, shape: tuple[int, ...] = (5, 4, 3, 2)) -> np.ndarray:
    values = np.arange(np.prod(shape)).reshape(shape) % 97 - (0 if dtype == np.uint8 else 40)
    return np.asfortranarray(values.astype(dtype))


def _nibabel_image(dtype: Any, *, scaled: bool = False, big_endian: bool = False) -> Any:
    """An image as nibabel builds it: a scaled one stores floats as int16 with a slope."""
    header = nib.Nifti1Header(endianness=">" if big_endian else "<")  # type: ignore[no-untyped-call]
    data = _array(np.float64 if scaled else dtype)
    if scaled:
        data = data * 0.37 + 5.5
        header.set_data_dtype(np.int16)  # type: ignore[no-untyped-call]
    else:
        header.set_data_dtype(dtype)  # type: ignore[no-untyped-call]
    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    return nib.Nifti1Image(data, affine, header)  # type: ignore[no-untyped-call]


def _bits(array: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    return array.dtype.str, array.shape, np.ascontiguousarray(array).tobytes()


def _nibabel_voxels(path: Path) -> np.ndarray:
    return np.asanyarray(nibabel_image(path).dataobj)


def _content(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


@pytest.fixture(autouse=True)
def _fresh_memos(monkeypatch: pytest.MonkeyPatch) -> None:
    _niftiio._memo.clear()
    monkeypatch.setattr(_filedigest, "_memory", {})


@pytest.fixture
def settled_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files count as settled at once (no waiting out the racy window)."""
    monkeypatch.setattr(_filedigest, "RACY_WINDOW_NS", 0)


@pytest.fixture
def digest_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files the digest memo reads to hash them."""
    reads: list[str] = []
    real = _filedigest._hash_file

    def counting(path: str | Path, *args: Any) -> Any:
        reads.append(Path(path).name)
        return real(path, *args)

    monkeypatch.setattr(_filedigest, "_hash_file", counting)
    return reads


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the decompressions of whole files."""
    calls: Counter[str] = Counter()
    real = _gzip.gunzip

    def counting(data: bytes, size: int) -> bytes:
        calls["gunzip"] += 1
        return real(data, size)

    monkeypatch.setattr(_gzip, "gunzip", counting)
    return calls


# --- standard files both ways -----------------------------------------------------------------


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nibabel_reads_ours_bit_identical(tmp_path: Path, suffix: str, dtype: Any) -> None:
    array = _array(dtype)
    ours = NiftiVolumeResource.save(
        InMemoryVolumeResource(array, np.diag([2.0, 2.5, 3.0, 1.0])), tmp_path / f"o{suffix}"
    )
    assert _bits(_nibabel_voxels(ours.path)) == _bits(array)
    assert _bits(ours.get_array()) == _bits(array)
    # Byte for byte what nibabel itself writes for the same image, once decompressed.
    theirs = tmp_path / f"n{suffix}"
    nibabel_image(ours.path).to_filename(theirs)
    assert _content(ours.path) == _content(theirs)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(array=nifti_arrays)
def test_any_volume_round_trips_bit_identical_with_nibabel(
    tmp_path: Path, array: np.ndarray
) -> None:
    for suffix in SUFFIXES:
        ours = NiftiVolumeResource.save(InMemoryVolumeResource(array), tmp_path / f"h{suffix}")
        expected = _bits(np.asfortranarray(array))
        assert _bits(_nibabel_voxels(ours.path)) == expected
        assert _bits(NiftiVolumeResource(ours.path).get_array()) == expected
        theirs = tmp_path / f"n{suffix}"
        nibabel_image(ours.path).to_filename(theirs)
        assert _content(ours.path) == _content(theirs)


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize(
    ("dtype", "scaled", "big_endian"),
    [
        *((d, False, False) for d in DTYPES),
        (np.int16, True, False),
        (np.float32, False, True),
        (np.int16, True, True),
    ],
)
def test_we_read_nibabel_files_bit_identical(
    tmp_path: Path, suffix: str, dtype: Any, scaled: bool, big_endian: bool
) -> None:
    path = tmp_path / f"n{suffix}"
    _nibabel_image(dtype, scaled=scaled, big_endian=big_endian).to_filename(path)
    expected = _nibabel_voxels(path)
    assert (expected.dtype.kind == "f") == (scaled or np.dtype(dtype).kind == "f")
    resource = NiftiVolumeResource(path)
    assert _bits(resource.get_array()) == _bits(expected)
    np.testing.assert_array_equal(resource.get_affine(), nibabel_image(path).affine)


def test_scaled_image_saved_by_us_keeps_nibabels_values(tmp_path: Path) -> None:
    source = tmp_path / "scaled.nii.gz"
    _nibabel_image(np.int16, scaled=True).to_filename(source)
    recoded = NiftiVolumeResource.save(NiftiVolumeResource(source), tmp_path / "re.nii")
    assert _bits(recoded.get_array()) == _bits(_nibabel_voxels(source))
    assert _bits(_nibabel_voxels(recoded.path)) == _bits(_nibabel_voxels(source))


def test_compressed_files_are_deterministic_plain_gzip(tmp_path: Path) -> None:
    volume = InMemoryVolumeResource(_array(np.float32))
    first = NiftiVolumeResource.save(volume, tmp_path / "a.nii.gz").path.read_bytes()
    second = NiftiVolumeResource.save(volume, tmp_path / "b.nii.gz").path.read_bytes()
    assert first == second
    assert first[:4] == b"\x1f\x8b\x08\x00"  # gzip, deflate, no flags (no file name)
    assert first[4:8] == bytes(4)  # modification time 0
    assert gzip.decompress(first) == _content(
        NiftiVolumeResource.save(volume, tmp_path / "c.nii").path
    )


def test_several_gzip_members_read_as_their_concatenation(tmp_path: Path) -> None:
    plain = NiftiVolumeResource.save(InMemoryVolumeResource(_array(np.int16)), tmp_path / "p.nii")
    content = plain.path.read_bytes()
    split = tmp_path / "multi.nii.gz"
    split.write_bytes(gzip.compress(content[:500]) + gzip.compress(content[500:]))
    assert _bits(NiftiVolumeResource(split).get_array()) == _bits(_nibabel_voxels(split))


def test_a_truncated_second_member_is_a_clear_error(tmp_path: Path) -> None:
    content = _content(
        NiftiVolumeResource.save(InMemoryVolumeResource(_array(np.int16)), tmp_path / "p.nii").path
    )
    second = gzip.compress(content[500:])
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(gzip.compress(content[:500]) + second[: len(second) // 2])
    with pytest.raises(ResourceFileError, match=r"broken\.nii\.gz"):
        NiftiVolumeResource(broken).get_array()


def test_voxels_missing_from_a_complete_stream_is_a_clear_error(tmp_path: Path) -> None:
    content = _content(
        NiftiVolumeResource.save(InMemoryVolumeResource(_array(np.int16)), tmp_path / "p.nii").path
    )
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(content[:-10]))  # a valid stream, 10 voxel bytes short
    with pytest.raises(ResourceFileError, match=r"short\.nii\.gz.*needs 592 bytes"):
        NiftiVolumeResource(short).get_array()


# --- without ISA-L ---------------------------------------------------------------------------

_FALLBACK = textwrap.dedent(
    """
    import sys
    sys.modules["isal"] = None  # importing isal now fails, as where it is not installed
    from pathlib import Path
    import numpy as np, nibabel as nib
    from kwneuro_pydra.resources import InMemoryVolumeResource, NiftiVolumeResource, _gzip
    assert _gzip.BACKEND == "zlib", _gzip.BACKEND
    out = Path(sys.argv[1])
    array = np.asfortranarray(np.arange(120, dtype=np.float32).reshape(5, 4, 3, 2))
    ours = NiftiVolumeResource.save(InMemoryVolumeResource(array), out / "fallback.nii.gz")
    assert np.asanyarray(nib.load(ours.path).dataobj).tobytes("F") == array.tobytes("F")
    read = NiftiVolumeResource(out / "isal.nii.gz").get_array()
    assert read.tobytes("F") == array.tobytes("F") and not read.flags.writeable
    print("fallback ok")
    """
)


def test_standard_library_fallback_without_isal(tmp_path: Path) -> None:
    pytest.importorskip("isal")
    array = np.asfortranarray(np.arange(120, dtype=np.float32).reshape(5, 4, 3, 2))
    written = NiftiVolumeResource.save(InMemoryVolumeResource(array), tmp_path / "isal.nii.gz")
    assert _gzip.BACKEND == "isal"
    done = subprocess.run(
        [sys.executable, "-c", _FALLBACK, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "fallback ok" in done.stdout
    fallback = tmp_path / "fallback.nii.gz"
    assert _content(fallback) == _content(written.path)  # same NIfTI bytes, other gzip
    assert _bits(NiftiVolumeResource(fallback).get_array()) == _bits(array)


# --- no wasted passes ------------------------------------------------------------------------


@pytest.mark.usefixtures("settled_now")
def test_a_file_is_decompressed_once_per_process(tmp_path: Path, decodes: Counter[str]) -> None:
    path = NiftiVolumeResource.save(
        InMemoryVolumeResource(_array(np.float32)), tmp_path / "v.nii.gz"
    ).path
    first = NiftiVolumeResource(path).get_array()
    again = NiftiVolumeResource(path)  # another resource over the same file
    assert again.get_array() is first
    assert again.load().array is first
    assert decodes["gunzip"] == 1
    # A changed file is decoded again: its stat key changed.
    NiftiVolumeResource.save(InMemoryVolumeResource(_array(np.float32) + 1), path)
    changed = NiftiVolumeResource(path).get_array()
    assert decodes["gunzip"] == 2
    np.testing.assert_array_equal(changed, first + 1)


def test_a_file_changed_within_the_racy_window_is_not_memoised(
    tmp_path: Path, decodes: Counter[str]
) -> None:
    path = NiftiVolumeResource.save(
        InMemoryVolumeResource(_array(np.int16)), tmp_path / "v.nii.gz"
    ).path
    NiftiVolumeResource(path).get_array()
    NiftiVolumeResource(path).get_array()
    assert decodes["gunzip"] == 2


@pytest.mark.usefixtures("settled_now")
def test_memo_is_bounded_in_bytes_least_recently_used_first(
    tmp_path: Path, decodes: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    array = np.zeros((64, 64, 32), np.float32)  # 512 KiB decoded
    paths = [
        NiftiVolumeResource.save(InMemoryVolumeResource(array + i), tmp_path / f"{i}.nii.gz").path
        for i in range(3)
    ]
    monkeypatch.setenv(_niftiio.MEMO_ENV, "1.2")  # room for two
    for path in paths:
        NiftiVolumeResource(path).get_array()
    assert decodes["gunzip"] == 3
    NiftiVolumeResource(paths[2]).get_array()
    NiftiVolumeResource(paths[1]).get_array()
    assert decodes["gunzip"] == 3  # the two most recent are kept
    NiftiVolumeResource(paths[0]).get_array()
    assert decodes["gunzip"] == 4  # the oldest was evicted
    monkeypatch.setenv(_niftiio.MEMO_ENV, "0.25")  # smaller than one volume: never kept
    big = tmp_path / "big.nii.gz"
    NiftiVolumeResource.save(InMemoryVolumeResource(array - 1), big)
    NiftiVolumeResource(big).get_array()
    NiftiVolumeResource(big).get_array()
    assert decodes["gunzip"] == 6


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("scaled", [False, True])
def test_arrays_handed_out_are_read_only(tmp_path: Path, suffix: str, scaled: bool) -> None:
    path = tmp_path / f"v{suffix}"
    _nibabel_image(np.float32, scaled=scaled).to_filename(path)
    resource = NiftiVolumeResource(path)
    for array in (resource.get_array(), resource.load().array):
        assert not array.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            array[0, 0, 0, 0] = 7
    assert _bits(resource.get_array()) == _bits(_nibabel_voxels(path))


def test_unscaled_voxels_are_a_view_of_the_decompressed_bytes(tmp_path: Path) -> None:
    array = _array(np.float32)
    path = NiftiVolumeResource.save(InMemoryVolumeResource(array), tmp_path / "v.nii.gz").path
    read = NiftiVolumeResource(path).get_array()
    assert isinstance(read.base, bytes)  # no copy of the voxels after decompressing
    assert read.dtype == array.dtype
    assert read.flags.f_contiguous


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_digest_of_a_written_file_comes_from_the_written_bytes(
    tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch, digest_reads: list[str]
) -> None:
    saved = NiftiVolumeResource.save(
        InMemoryVolumeResource(_array(np.int16)), tmp_path / f"v{suffix}"
    )
    recorded = file_digest(saved.path)
    assert digest_reads == []  # the memo held it: the file was not read back
    monkeypatch.setattr(_filedigest, "_memory", {})
    assert file_digest(saved.path) == recorded  # and it is the digest of the file's content
    assert digest_reads == [saved.path.name]


def test_cache_publish_reads_no_volume_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digest_reads: list[str]
) -> None:
    @cacheable
    def make_volume(value: int) -> VolumeResource:
        return InMemoryVolumeResource(np.full((6, 5, 4), value, np.int16))

    with Cache(tmp_path / "cache"):
        result = make_volume(3)
        assert path_of(make_volume(3)) == path_of(result)  # a hit: the recorded digest matches
    assert not [name for name in digest_reads if name.endswith(".nii.gz")]
    monkeypatch.setattr(_filedigest, "_memory", {})
    entry = path_of(result).parent
    sidecar = next(entry.glob("*.json"))
    assert f"xxh3_128:{file_digest(path_of(result))}" in sidecar.read_text()
    assert os.path.getsize(path_of(result)) > 0

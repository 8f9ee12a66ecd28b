"""Tests of kwneuro_pydra.resources: NIfTI volumes, FSL b-tables, Dwi, and their caching."""

from __future__ import annotations

import gzip
import pickle
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from nibabel.nifti1 import Nifti1Header

from kwneuro_pydra import Cache, cacheable, fingerprint
from kwneuro_pydra.resources import (
    BVEC_NORM_TOLERANCE,
    BvalResource,
    BvecResource,
    Dwi,
    FslBvalResource,
    FslBvecResource,
    InMemoryBvalResource,
    InMemoryBvecResource,
    InMemoryVolumeResource,
    NiftiVolumeResource,
    ResourceFileError,
    VolumeResource,
    _gzip,
)
from tests._volumes import nibabel_image, path_of

DIPY_FILES = Path(pytest.importorskip("dipy").__file__).parent / "data" / "files"
SUFFIXES = [".nii.gz", ".nii"]

# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def _affine() -> np.ndarray[Any, Any]:
    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    affine[:3, 3] = [-10.0, 20.5, 7.25]
    return affine


def _metadata(**extra: Any) -> dict[str, Any]:
    header = Nifti1Header()  # type: ignore[no-untyped-call]
    header["qform_code"] = 1
    header["sform_code"] = 4
    header.set_xyzt_units("mm", "sec")  # type: ignore[no-untyped-call]
    header.set_intent("estimate", (), "FA")  # type: ignore[no-untyped-call]
    header["descrip"] = b"a test volume"
    header["pixdim"] = [1.0, 2.0, 2.5, 3.0, 2.5, 1.0, 1.0, 1.0]  # zooms of _affine(), TR 2.5
    metadata = dict(header)
    metadata.update(extra)
    return metadata


def _volume(
    dtype: Any = np.int16, shape: tuple[int, ...] = (4, 5, 6, 3), seed: int = 0
) -> InMemoryVolumeResource:
    rng = np.random.default_rng(seed)
    array = (rng.random(shape) * 100).astype(dtype)
    return InMemoryVolumeResource(array, _affine(), _metadata())


def _unit_bvecs(n: int, seed: int = 0) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 3))
    unit: np.ndarray[Any, Any] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit


def _dwi(n: int = 7, seed: int = 0) -> Dwi:
    bvals = np.array([0.0] + [1000.0] * (n - 1))
    bvecs = _unit_bvecs(n, seed)
    bvecs[0] = 0.0
    return Dwi(
        _volume(np.float32, (3, 4, 5, n), seed),
        InMemoryBvalResource(bvals),
        InMemoryBvecResource(bvecs),
    )


def _assert_same_volume(got: VolumeResource, want: VolumeResource) -> None:
    got_array, want_array = got.get_array(), want.get_array()
    assert got_array.dtype == want_array.dtype
    assert got_array.shape == want_array.shape
    np.testing.assert_array_equal(got_array, want_array)
    np.testing.assert_array_equal(got.get_affine(), want.get_affine())
    got_meta, want_meta = got.get_metadata(), want.get_metadata()
    for key in ("qform_code", "sform_code", "xyzt_units", "intent_code", "intent_name"):
        assert got_meta[key] == want_meta[key], key
    ndim = want_array.ndim
    np.testing.assert_array_equal(
        got_meta["pixdim"][1 : ndim + 1], want_meta["pixdim"][1 : ndim + 1]
    )


def _dipy_dwi(name: str) -> Dwi:
    volume = next(DIPY_FILES.glob(f"{name}.nii*"))
    return Dwi(
        NiftiVolumeResource(volume),
        FslBvalResource(DIPY_FILES / f"{name}.bval"),
        FslBvecResource(DIPY_FILES / f"{name}.bvec"),
    )


# ------------------------------------------------------------------------------------------
# NIfTI volumes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int16, np.uint16, np.int64, np.float32, np.float64]
)
def test_nifti_save_load_round_trip(tmp_path: Path, suffix: str, dtype: Any) -> None:
    volume = _volume(dtype)
    saved = NiftiVolumeResource.save(volume, tmp_path / f"v{suffix}")
    assert saved.path == (tmp_path / f"v{suffix}").resolve()
    assert not saved.is_loaded
    _assert_same_volume(saved, volume)
    _assert_same_volume(saved.load(), volume)
    meta = saved.get_metadata()
    assert meta["descrip"] == b"a test volume"
    assert saved.get_shape() == volume.get_shape()
    # what nibabel itself reads back
    image = nibabel_image(saved.path)
    assert image.get_data_dtype() == np.dtype(dtype)
    assert image.header.get_intent() == ("estimate", (), "FA")
    assert image.header.get_xyzt_units() == ("mm", "sec")
    assert int(image.header["qform_code"]) == 1
    assert int(image.header["sform_code"]) == 4


def test_uncompressed_nifti_loads_as_memory_map(tmp_path: Path) -> None:
    saved = NiftiVolumeResource.save(_volume(np.float32), tmp_path / "v.nii")
    array = saved.get_array()
    assert isinstance(array, np.memmap)
    with pytest.raises(ValueError, match="read-only"):
        array[0, 0, 0, 0] = -1.0  # shared and mapped: never written through
    assert saved.get_array()[0, 0, 0, 0] != -1.0


def test_boolean_volume_is_stored_as_uint8(tmp_path: Path) -> None:
    mask = InMemoryVolumeResource(np.arange(24).reshape(2, 3, 4) % 2 == 0)
    saved = NiftiVolumeResource.save(mask, tmp_path / "mask.nii.gz")
    assert saved.get_array().dtype == np.uint8
    np.testing.assert_array_equal(saved.get_array().astype(bool), mask.array)


def test_scaled_nifti_loads_scaled_values(tmp_path: Path) -> None:
    image: Any = nib.Nifti1Image(np.arange(8, dtype=np.int16).reshape(2, 2, 2), np.eye(4))  # type: ignore[no-untyped-call]
    image.header.set_slope_inter(2.0, 1.0)
    nib.save(image, tmp_path / "scaled.nii.gz")
    array = NiftiVolumeResource(tmp_path / "scaled.nii.gz").get_array()
    np.testing.assert_array_equal(array, np.arange(8).reshape(2, 2, 2) * 2.0 + 1.0)


def test_affine_and_codes_are_kept_exactly(tmp_path: Path) -> None:
    sheared = np.array([[2.0, 0.5, 0, 1], [0, 3, 0, 2], [0, 0, 4, 3], [0, 0, 0, 1]])
    qform_only = {"qform_code": 1, "sform_code": 0}
    volume = InMemoryVolumeResource(np.zeros((2, 2, 2), np.float32), sheared, qform_only)
    saved = NiftiVolumeResource.save(volume, tmp_path / "shear.nii.gz")
    np.testing.assert_allclose(saved.get_affine(), sheared, atol=1e-6)

    no_codes = InMemoryVolumeResource(np.zeros((2, 2, 2), np.float32), _affine())
    saved = NiftiVolumeResource.save(no_codes, tmp_path / "nocodes.nii.gz")
    np.testing.assert_array_equal(saved.get_affine(), _affine())
    assert int(saved.get_metadata()["sform_code"]) == 2  # "aligned", so the affine is used


def test_custom_metadata_keys_are_not_written(tmp_path: Path) -> None:
    volume = InMemoryVolumeResource(np.zeros((2, 2, 2)), metadata={"subject": "s01"})
    saved = NiftiVolumeResource.save(volume, tmp_path / "v.nii.gz")
    assert "subject" not in saved.get_metadata()


def test_bad_metadata_value_names_the_field(tmp_path: Path) -> None:
    volume = InMemoryVolumeResource(np.zeros((2, 2, 2)), metadata={"qform_code": "not a code"})
    with pytest.raises(ValueError, match="qform_code"):
        NiftiVolumeResource.save(volume, tmp_path / "v.nii.gz")


def test_save_refuses_other_suffixes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.nii\.gz or \.nii"):
        NiftiVolumeResource.save(_volume(), tmp_path / "v.img")


def test_save_of_a_file_backed_volume_copies_bytes(tmp_path: Path) -> None:
    first = NiftiVolumeResource.save(_volume(), tmp_path / "a.nii.gz")
    copy = NiftiVolumeResource.save(first, tmp_path / "b.nii.gz")
    assert copy.path.read_bytes() == first.path.read_bytes()
    recoded = NiftiVolumeResource.save(first, tmp_path / "c.nii")
    _assert_same_volume(recoded, first)
    assert NiftiVolumeResource.save(first, first.path) == first


def test_nifti_resource_is_lazy_and_reads_header_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = NiftiVolumeResource.save(_volume(), tmp_path / "v.nii.gz").path
    calls: Counter[str] = Counter()
    real_load = nib.load
    real_gunzip = _gzip.gunzip

    def counting_load(*args: Any, **kwargs: Any) -> Any:
        calls["header"] += 1
        return real_load(*args, **kwargs)

    def counting_gunzip(data: bytes, size: int) -> bytes:
        calls["decode"] += 1
        return real_gunzip(data, size)

    monkeypatch.setattr(nib, "load", counting_load)
    monkeypatch.setattr(_gzip, "gunzip", counting_gunzip)

    resource = NiftiVolumeResource(path)
    assert calls == Counter()
    resource.get_affine()
    resource.get_metadata()
    resource.get_shape()
    assert calls == Counter(header=1)
    loaded = resource.load()
    assert calls == Counter(header=1, decode=1)
    loaded.get_array()
    loaded.get_affine()
    loaded.get_metadata()
    assert calls == Counter(header=1, decode=1)
    fingerprint(resource)  # by file content: nothing decoded
    assert calls == Counter(header=1, decode=1)


def test_header_is_reread_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "v.nii.gz"
    NiftiVolumeResource.save(_volume(), path)
    resource = NiftiVolumeResource(path)
    np.testing.assert_array_equal(resource.get_affine(), _affine())
    shifted = _affine()
    shifted[0, 3] += 1.0
    NiftiVolumeResource.save(InMemoryVolumeResource(_volume().array, shifted, _metadata()), path)
    np.testing.assert_array_equal(resource.get_affine(), shifted)


def test_nifti_resource_pickles_without_its_header(tmp_path: Path) -> None:
    resource = NiftiVolumeResource.save(_volume(), tmp_path / "v.nii.gz")
    resource.get_affine()  # fills the header memo
    data = pickle.dumps(resource)
    assert len(data) < 500
    clone = pickle.loads(data)
    assert clone == resource
    _assert_same_volume(clone, resource)


def test_path_is_normalised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert NiftiVolumeResource("v.nii.gz").path == tmp_path.resolve() / "v.nii.gz"
    assert NiftiVolumeResource(path="v.nii.gz") == NiftiVolumeResource(tmp_path / "v.nii.gz")


# ------------------------------------------------------------------------------------------
# NIfTI bad input
# ------------------------------------------------------------------------------------------


def test_missing_nifti_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nothing.nii.gz"
    resource = NiftiVolumeResource(path)  # lazy: no error yet
    for call in (resource.get_array, resource.get_affine, resource.get_metadata, resource.load):
        with pytest.raises(FileNotFoundError, match=r"nothing.nii.gz") as info:
            call()
        assert info.value.filename == str(path)
    with pytest.raises(FileNotFoundError, match=r"nothing.nii.gz"):
        fingerprint(resource)


def _assert_clean(error: BaseException) -> None:
    """The error is ours, names no low-level module, and hides the low-level traceback."""
    assert error.__cause__ is None
    assert error.__suppress_context__


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("text.nii", b"hello world " * 100),
        ("text.nii.gz", b"hello world"),  # not even gzip
        ("gzipped-text.nii.gz", gzip.compress(b"hello world " * 100)),
        ("empty.nii.gz", b""),
    ],
)
def test_not_nifti_is_a_clear_error(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ResourceFileError, match=f"not a readable NIfTI file: .*{name}") as info:
        NiftiVolumeResource(path).get_affine()
    _assert_clean(info.value)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_truncated_nifti_is_a_clear_error(tmp_path: Path, suffix: str) -> None:
    good = NiftiVolumeResource.save(_volume(np.float32, (8, 8, 8, 4)), tmp_path / f"g{suffix}")
    data = good.path.read_bytes()
    truncated = tmp_path / f"t{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    resource = NiftiVolumeResource(truncated)
    # the header is intact, so header-only calls work (nothing decodes voxels)
    np.testing.assert_array_equal(resource.get_affine(), _affine())
    assert resource.get_shape() == (8, 8, 8, 4)
    with pytest.raises(
        ResourceFileError, match=f"truncated or corrupted NIfTI file: .*t{suffix}"
    ) as info:
        resource.get_array()
    _assert_clean(info.value)
    with pytest.raises(ResourceFileError):
        resource.load()

    header_only = tmp_path / f"h{suffix}"
    raw = gzip.decompress(data) if suffix == ".nii.gz" else data
    cut = raw[:100]
    header_only.write_bytes(gzip.compress(cut) if suffix == ".nii.gz" else cut)
    with pytest.raises(ResourceFileError, match=str(header_only.name)):
        NiftiVolumeResource(header_only).get_affine()


def test_corrupted_compressed_data_is_a_clear_error(tmp_path: Path) -> None:
    good = NiftiVolumeResource.save(_volume(np.float32, (8, 8, 8, 4)), tmp_path / "g.nii.gz")
    data = bytearray(good.path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ResourceFileError, match=r"bad.nii.gz") as info:
        NiftiVolumeResource(bad).get_array()
    _assert_clean(info.value)


@pytest.mark.parametrize(
    "affine",
    [np.eye(3), np.eye(4)[:3], np.full((4, 4), np.nan), np.diag([1, 1, np.inf, 1]), "eye", None],
)
def test_affine_must_be_finite_4x4(affine: Any) -> None:
    with pytest.raises(ValueError, match="affine must be a finite 4x4"):
        InMemoryVolumeResource(np.zeros((2, 2, 2)), affine)


def test_affine_is_stored_as_float64() -> None:
    volume = InMemoryVolumeResource(np.zeros((2, 2, 2)), np.eye(4, dtype=np.float32))
    assert volume.affine.dtype == np.float64
    assert fingerprint(volume) == fingerprint(InMemoryVolumeResource(np.zeros((2, 2, 2))))


def test_object_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="object"):
        InMemoryVolumeResource(np.empty((2, 2, 2), dtype=object))


# ------------------------------------------------------------------------------------------
# Fingerprints
# ------------------------------------------------------------------------------------------


def test_in_memory_fingerprint_follows_content() -> None:
    base = _volume()
    same = InMemoryVolumeResource(base.array.copy(), base.affine.copy(), dict(base.metadata))
    assert fingerprint(base) == fingerprint(same)

    changed_voxel = base.array.copy()
    changed_voxel[0, 0, 0, 0] += 1
    moved = base.affine.copy()
    moved[0, 3] += 0.5
    variants = [
        InMemoryVolumeResource(changed_voxel, base.affine, base.metadata),
        InMemoryVolumeResource(base.array.astype(np.int32), base.affine, base.metadata),
        InMemoryVolumeResource(base.array.reshape(4, 5, 3, 6), base.affine, base.metadata),
        InMemoryVolumeResource(base.array, moved, base.metadata),
        InMemoryVolumeResource(base.array, base.affine, {**base.metadata, "qform_code": 2}),
        InMemoryVolumeResource(base.array, base.affine, {**base.metadata, "sform_code": 1}),
        InMemoryVolumeResource(base.array, base.affine, {**base.metadata, "xyzt_units": 0}),
        InMemoryVolumeResource(base.array, base.affine, {**base.metadata, "intent_code": 0}),
        InMemoryVolumeResource(base.array, base.affine, {**base.metadata, "intent_name": b"MD"}),
        InMemoryVolumeResource(
            base.array, base.affine, {**base.metadata, "pixdim": [1, 2, 2.5, 3, 3.0, 1, 1, 1]}
        ),
    ]
    digests = {fingerprint(v) for v in variants}
    assert fingerprint(base) not in digests
    assert len(digests) == len(variants)


def test_in_memory_fingerprint_ignores_descriptive_fields_and_value_types() -> None:
    base = _volume()
    described = {**base.metadata, "descrip": b"another text", "subject": "s01"}
    assert fingerprint(InMemoryVolumeResource(base.array, base.affine, described)) == fingerprint(
        base
    )
    plain = InMemoryVolumeResource(np.zeros((2, 2, 2)), metadata={"qform_code": 1})
    numpy_typed = InMemoryVolumeResource(np.zeros((2, 2, 2)), metadata={"qform_code": np.int16(1)})
    assert fingerprint(plain) == fingerprint(numpy_typed)
    empty = InMemoryVolumeResource(np.zeros((2, 2, 2)))
    defaults = InMemoryVolumeResource(np.zeros((2, 2, 2)), metadata=dict(Nifti1Header()))  # type: ignore[no-untyped-call]
    assert fingerprint(empty) == fingerprint(defaults)


def test_fortran_ordered_arrays_fingerprint_without_copy() -> None:
    array = np.asfortranarray(np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    volume = InMemoryVolumeResource(array)
    assert volume.array is array
    assert fingerprint(volume) == fingerprint(InMemoryVolumeResource(array.copy(order="F")))


def test_file_fingerprint_is_content_not_location(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = NiftiVolumeResource.save(_volume(), tmp_path / "a" / "v.nii.gz")
    twin = tmp_path / "b" / "other-name.nii.gz"
    shutil.copyfile(first.path, twin)
    assert fingerprint(NiftiVolumeResource(twin)) == fingerprint(first)

    different = _volume(seed=1)
    NiftiVolumeResource.save(different, twin)
    assert fingerprint(NiftiVolumeResource(twin)) != fingerprint(first)
    # a file-backed and an in-memory volume are different kinds of value
    assert fingerprint(first) != fingerprint(_volume())


def test_bval_bvec_fingerprints(tmp_path: Path) -> None:
    bvals = InMemoryBvalResource(np.array([0.0, 1000.0, 1000.0]))
    assert fingerprint(bvals) == fingerprint(InMemoryBvalResource(np.array([0.0, 1000, 1000])))
    assert fingerprint(bvals) != fingerprint(InMemoryBvalResource(np.array([0.0, 1000, 2000.0])))
    a = FslBvalResource.save(bvals, tmp_path / "a.bval")
    b = FslBvalResource.save(bvals, tmp_path / "b.bval")
    assert fingerprint(a) == fingerprint(b)
    vectors = InMemoryBvecResource(_unit_bvecs(3))
    c = FslBvecResource.save(vectors, tmp_path / "c.bvec")
    assert fingerprint(c) is not None
    assert fingerprint(c) != fingerprint(a)
    with pytest.raises(FileNotFoundError, match=r"missing.bvec"):
        fingerprint(FslBvecResource(tmp_path / "missing.bvec"))


def test_dwi_fingerprint_combines_its_parts() -> None:
    dwi = _dwi()
    assert fingerprint(dwi) == fingerprint(_dwi())
    other = Dwi(dwi.volume, InMemoryBvalResource(dwi.bval.get() * 2), dwi.bvec)
    assert fingerprint(other) != fingerprint(dwi)


# ------------------------------------------------------------------------------------------
# b-values and b-vectors
# ------------------------------------------------------------------------------------------


def test_fsl_text_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    bvals = InMemoryBvalResource(np.concatenate([[0.0], rng.uniform(0, 3000, 20)]))
    bvecs = InMemoryBvecResource(_unit_bvecs(21))
    saved_bvals = FslBvalResource.save(bvals, tmp_path / "x.bval")
    saved_bvecs = FslBvecResource.save(bvecs, tmp_path / "x.bvec")
    np.testing.assert_array_equal(saved_bvals.get(), bvals.get())
    np.testing.assert_array_equal(saved_bvecs.get(), bvecs.get())
    assert len(saved_bvecs.path.read_text().splitlines()) == 3  # FSL layout: x, y, z rows
    assert len(saved_bvals.path.read_text().splitlines()) == 1
    assert isinstance(saved_bvals.load(), InMemoryBvalResource)
    assert isinstance(saved_bvecs.load(), InMemoryBvecResource)


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        st.integers(1, 30),
        elements=st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
    )
)
def test_bval_text_round_trip_property(values: np.ndarray[Any, Any]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        saved = FslBvalResource.save(InMemoryBvalResource(values), Path(directory) / "b.bval")
        np.testing.assert_array_equal(saved.get(), values)


def test_bvec_file_layouts(tmp_path: Path) -> None:
    vectors = _unit_bvecs(5)
    rows = tmp_path / "rows.bvec"  # N x 3, as dipy's small_64D.bvec
    rows.write_text("\n".join(" ".join(repr(float(v)) for v in row) for row in vectors))
    columns = tmp_path / "columns.bvec"  # 3 x N, FSL
    columns.write_text(
        "\n".join(" ".join(repr(float(v)) for v in row) for row in vectors.T) + "\n\n"
    )
    np.testing.assert_array_equal(FslBvecResource(rows).get(), vectors)
    np.testing.assert_array_equal(FslBvecResource(columns).get(), vectors)
    one_column = tmp_path / "column.bval"
    one_column.write_text("0\n1000\n1000\n")
    np.testing.assert_array_equal(FslBvalResource(one_column).get(), [0, 1000, 1000])


@pytest.mark.parametrize("shape", [(5,), (5, 2), (3, 5), (2, 3, 3)])
def test_bvec_array_must_be_n_by_3(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        InMemoryBvecResource(np.zeros(shape))


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.zeros((2, 3)), r"shape \(N,\)"),
        (np.array([0.0, -5.0]), "negative"),
        (np.array([0.0, np.nan]), "finite"),
        (np.array(["a", "b"]), "real numbers"),
    ],
)
def test_bval_array_validation(values: np.ndarray[Any, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InMemoryBvalResource(values)


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        ("", ResourceFileError, "empty b-vector file"),
        ("1 0 0\n0 1\n", ResourceFileError, "rows of different lengths"),
        ("1 0 0 1\n0 1 0 0\n", ResourceFileError, "a 2 x 4 table"),
        ("1 0 x\n", ResourceFileError, "line 1"),
    ],
)
def test_bad_bvec_files(tmp_path: Path, content: str, error: type[Exception], match: str) -> None:
    path = tmp_path / "bad.bvec"
    path.write_text(content)
    with pytest.raises(error, match=match) as info:
        FslBvecResource(path).get()
    assert str(path) in str(info.value)


def test_bad_bval_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.bval"
    path.write_text("0 1000 abc\n")
    with pytest.raises(ResourceFileError, match=r"malformed b-value file: .*bad.bval, line 1"):
        FslBvalResource(path).get()
    path.write_text("0 -1000\n")
    with pytest.raises(ValueError, match=r"bad.bval: b-values must not be negative"):
        FslBvalResource(path).get()
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ResourceFileError, match="not a text b-value file"):
        FslBvalResource(path).get()
    with pytest.raises(FileNotFoundError, match=r"nope.bval"):
        FslBvalResource(tmp_path / "nope.bval").get()
    with pytest.raises(FileNotFoundError, match=r"nope.bvec"):
        FslBvecResource(tmp_path / "nope.bvec").get()


# ------------------------------------------------------------------------------------------
# Dwi
# ------------------------------------------------------------------------------------------


def test_dwi_counts_must_agree() -> None:
    dwi = _dwi(7)
    with pytest.raises(ValueError, match=r"7 diffusion volumes.*6 b-values.*7 b-vectors"):
        Dwi(dwi.volume, InMemoryBvalResource(dwi.bval.get()[:6]), dwi.bvec)
    with pytest.raises(ValueError, match=r"7 diffusion volumes.*7 b-values.*8 b-vectors"):
        Dwi(dwi.volume, dwi.bval, InMemoryBvecResource(_unit_bvecs(8)))


def test_dwi_counts_error_names_files(tmp_path: Path) -> None:
    dwi = _dwi(7).save(tmp_path, "d")
    short = FslBvalResource.save(InMemoryBvalResource(np.zeros(5)), tmp_path / "short.bval")
    with pytest.raises(ValueError, match=r"d\.nii\.gz.*5 b-values .*short\.bval.*d\.bvec"):
        Dwi(dwi.volume, short, dwi.bvec)


def test_dwi_volume_must_be_4d() -> None:
    dwi = _dwi()
    with pytest.raises(ValueError, match="must be 4-D"):
        Dwi(InMemoryVolumeResource(np.zeros((3, 4, 5))), dwi.bval, dwi.bvec)


def test_dwi_bvecs_must_be_unit_where_b_is_not_zero() -> None:
    dwi = _dwi(7)
    vectors = dwi.bvec.get().copy()
    vectors[3] *= 1.1
    with pytest.raises(ValueError, match=r"unit vectors: 1 are not, first at volume 3 \(b=1000"):
        Dwi(dwi.volume, dwi.bval, InMemoryBvecResource(vectors))
    vectors = dwi.bvec.get().copy()
    vectors[2] = np.nan
    with pytest.raises(ValueError, match="first at volume 2"):
        Dwi(dwi.volume, dwi.bval, InMemoryBvecResource(vectors))
    # b=0 rows may be zero or nan; small rounding is accepted
    vectors = dwi.bvec.get().copy()
    vectors[0] = np.nan
    vectors[1] *= 1 + BVEC_NORM_TOLERANCE / 2
    Dwi(dwi.volume, dwi.bval, InMemoryBvecResource(vectors))


def test_dwi_save_load_and_gtab(tmp_path: Path) -> None:
    dwi = _dwi()
    saved = dwi.save(tmp_path / "out", "sub-01_dwi")
    assert isinstance(saved.volume, NiftiVolumeResource)
    assert saved.volume.path.name == "sub-01_dwi.nii.gz"
    assert path_of(dwi.save(tmp_path / "raw", "d", compress=False).volume).name == "d.nii"
    loaded = saved.load()
    _assert_same_volume(loaded.volume, dwi.volume)
    np.testing.assert_array_equal(loaded.bval.get(), dwi.bval.get())
    np.testing.assert_array_equal(loaded.bvec.get(), dwi.bvec.get())
    gtab = saved.get_gtab()
    assert gtab.bvals.shape == (7,)
    np.testing.assert_array_equal(saved.b0_mask(), [True] + [False] * 6)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="save directory"):
        dwi.save(tmp_path / "file", "d")


@pytest.mark.parametrize("name", ["small_101D", "small_64D", "small_25"])
def test_dipy_sample_data_loads_as_dwi(name: str) -> None:
    dwi = _dipy_dwi(name)
    reference = nibabel_image(path_of(dwi.volume))
    assert dwi.volume.get_shape() == reference.shape
    array = dwi.volume.get_array()
    assert array.dtype == reference.get_data_dtype()  # stored dtype, no float64 upcast
    np.testing.assert_array_equal(array, np.asanyarray(reference.dataobj))
    assert len(dwi.bval.get()) == len(dwi.bvec.get()) == reference.shape[3]


# ------------------------------------------------------------------------------------------
# Cache protocol
# ------------------------------------------------------------------------------------------


def test_cache_file_names_follow_nifti_compression(tmp_path: Path) -> None:
    assert VolumeResource._cache_files("s") == ["s.nii.gz"]
    assert Dwi._cache_files("s") == ["s.nii.gz", "s.bval", "s.bvec"]
    assert BvalResource._cache_files("s") == ["s.bval"]
    assert BvecResource._cache_files("s") == ["s.bvec"]
    with Cache(tmp_path / "gz"):
        assert InMemoryVolumeResource._cache_files("s") == ["s.nii.gz"]
    with Cache(tmp_path / "raw", nifti_compression=False):
        assert NiftiVolumeResource._cache_files("s") == ["s.nii"]
        assert Dwi._cache_files("s") == ["s.nii", "s.bval", "s.bvec"]


@pytest.mark.parametrize("compression", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_volume_round_trip_through_cache(tmp_path: Path, compression: bool, dtype: Any) -> None:
    runs: Counter[str] = Counter()
    source = _volume(dtype)

    @cacheable
    def make_volume(seed: int) -> VolumeResource:
        runs["make"] += 1
        return source

    with Cache(tmp_path, nifti_compression=compression) as cache:
        first = make_volume(0)
        second = make_volume(0)
        assert cache.status([make_volume]) == {make_volume.__qualname__: True}
    assert runs["make"] == 1
    for result in (first, second):
        assert isinstance(result, NiftiVolumeResource)
        assert result.path.name == ("make_volume.nii.gz" if compression else "make_volume.nii")
        assert result.path.is_relative_to(tmp_path.resolve())
        _assert_same_volume(result, source)
        assert result.get_metadata()["descrip"] == b"a test volume"
    assert first == second


@pytest.mark.parametrize("compression", [True, False])
def test_bval_and_bvec_steps_cache(tmp_path: Path, compression: bool) -> None:
    @cacheable
    def bvals(n: int) -> BvalResource:
        return InMemoryBvalResource(np.linspace(0, 3000, n))

    @cacheable
    def bvecs(n: int) -> BvecResource:
        return InMemoryBvecResource(_unit_bvecs(n))

    with Cache(tmp_path, nifti_compression=compression):
        got_bvals, got_bvecs = bvals(4), bvecs(4)
    assert isinstance(got_bvals, FslBvalResource)
    assert isinstance(got_bvecs, FslBvecResource)
    np.testing.assert_array_equal(got_bvals.get(), np.linspace(0, 3000, 4))
    np.testing.assert_array_equal(got_bvecs.get(), _unit_bvecs(4))


@pytest.mark.parametrize("compression", [True, False])
@pytest.mark.parametrize("name", ["small_101D", "small_64D"])
def test_dipy_dwi_through_cache(tmp_path: Path, name: str, compression: bool) -> None:
    runs: Counter[str] = Counter()
    source = _dipy_dwi(name)

    @cacheable
    def denoise(dwi: Dwi, strength: float) -> Dwi:
        runs["denoise"] += 1
        loaded = dwi.load()
        array = loaded.volume.get_array()
        smoothed = (array * (1 - strength) + array.mean() * strength).astype(array.dtype)
        volume = InMemoryVolumeResource(
            smoothed, loaded.volume.get_affine(), loaded.volume.get_metadata()
        )
        return Dwi(volume, loaded.bval, loaded.bvec)

    with Cache(tmp_path, nifti_compression=compression):
        result = denoise(source, 0.0)
        again = denoise(source, 0.0)
    assert runs["denoise"] == 1
    for dwi in (result, again):
        assert isinstance(dwi.volume, NiftiVolumeResource)
        assert isinstance(dwi.bval, FslBvalResource)
        assert isinstance(dwi.bvec, FslBvecResource)
        _assert_same_volume(dwi.volume, source.volume)
        np.testing.assert_array_equal(dwi.bval.get(), source.bval.get())
        np.testing.assert_array_equal(dwi.bvec.get(), source.bvec.get())  # nan rows included
    assert fingerprint(result) == fingerprint(again)


def test_chained_steps_follow_content(tmp_path: Path) -> None:
    runs: Counter[str] = Counter()

    @cacheable
    def clip(dwi: Dwi, upper: float) -> Dwi:
        runs["clip"] += 1
        loaded = dwi.load()
        array = np.minimum(loaded.volume.get_array(), upper).astype(np.float32)
        volume = InMemoryVolumeResource(
            array, loaded.volume.get_affine(), loaded.volume.get_metadata()
        )
        return Dwi(volume, loaded.bval, loaded.bvec)

    @cacheable
    def mean_b0(dwi: Dwi) -> VolumeResource:
        runs["mean_b0"] += 1
        array = dwi.volume.get_array()[..., dwi.b0_mask()].mean(axis=-1)
        return InMemoryVolumeResource(array, dwi.volume.get_affine(), dwi.volume.get_metadata())

    source = _dipy_dwi("small_101D")
    top = float(source.volume.get_array().max())

    def pipeline(upper: float) -> VolumeResource:
        return mean_b0(clip(source, upper))

    with Cache(tmp_path):
        first = pipeline(100.0)
        assert runs == Counter(clip=1, mean_b0=1)
        assert pipeline(100.0) == first  # unchanged: both hit
        assert runs == Counter(clip=1, mean_b0=1)
        changed = pipeline(50.0)  # first step's argument changed: both recompute
        assert runs == Counter(clip=2, mean_b0=2)
        assert not np.array_equal(changed.get_array(), first.get_array())
        assert pipeline(100.0) == first  # the earlier entries are still there
        assert runs == Counter(clip=2, mean_b0=2)
        # two arguments that give identical output: the second step hits on content
        pipeline(top + 1)
        assert runs == Counter(clip=3, mean_b0=3)
        pipeline(top + 2)
        assert runs == Counter(clip=4, mean_b0=3)


def test_editing_a_cached_input_file_invalidates_the_next_step(tmp_path: Path) -> None:
    runs: Counter[str] = Counter()

    @cacheable
    def total(volume: VolumeResource) -> BvalResource:
        runs["total"] += 1
        return InMemoryBvalResource(np.array([float(volume.get_array().sum())]))

    path = tmp_path / "input.nii.gz"
    NiftiVolumeResource.save(_volume(seed=0), path)
    with Cache(tmp_path / "cache"):
        first = total(NiftiVolumeResource(path)).get()
        NiftiVolumeResource.save(_volume(seed=1), path)  # same path, new content
        second = total(NiftiVolumeResource(path)).get()
    assert runs["total"] == 2
    assert first[0] != second[0]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_truncated_cache_entry_is_a_miss_with_warning(tmp_path: Path, suffix: str) -> None:
    runs: Counter[str] = Counter()
    source = _volume(np.float32, (8, 8, 8, 4))

    @cacheable
    def make(seed: int) -> VolumeResource:
        runs["make"] += 1
        return source

    with Cache(tmp_path, nifti_compression=suffix == ".nii.gz"):
        published = make(0)
        assert isinstance(published, NiftiVolumeResource)
        data = published.path.read_bytes()
        published.path.write_bytes(data[: len(data) // 2])  # truncated after publishing
        with pytest.warns(UserWarning, match="damaged"):
            repaired = make(0)
    assert runs["make"] == 2
    _assert_same_volume(repaired, source)

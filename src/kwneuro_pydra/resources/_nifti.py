"""NIfTI-1 plumbing: file suffixes, affine checks, headers from metadata, image building.

Also the header fields that change what an image means (they enter the fingerprint of an
in-memory volume) and the exceptions a damaged or foreign file raises while decoding.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.nifti1 import Nifti1Header, Nifti1Image
from nibabel.spatialimages import HeaderDataError
from numpy.typing import NDArray

from kwneuro_pydra.resources._gzip import ERRORS as GZIP_ERRORS

NIFTI_SUFFIXES = (".nii.gz", ".nii")
"""The NIfTI-1 file suffixes, compressed first."""

# Header fields that change what an image means (beyond its array and affine). They enter the
# fingerprint of an in-memory volume; descriptions, calibration hints and the like do not.
MEANINGFUL_FIELDS = (
    "qform_code",
    "sform_code",
    "xyzt_units",
    "intent_code",
    "intent_p1",
    "intent_p2",
    "intent_p3",
    "intent_name",
    "dim_info",
    "slice_code",
    "slice_start",
    "slice_end",
    "slice_duration",
    "toffset",
)

# What nibabel, gzip, zlib, ISA-L and the struct module raise on a damaged or foreign file.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    ImageFileError,
    HeaderDataError,
    OSError,
    ValueError,
    struct.error,
    *GZIP_ERRORS,
)


def nifti_suffix_of(path: Path) -> str:
    """The NIfTI suffix of ``path`` (``.nii.gz`` or ``.nii``); `ValueError` for any other."""
    name = path.name.lower()
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    msg = f"a NIfTI file name must end in .nii.gz or .nii: {path}"
    raise ValueError(msg)


def cache_nifti_suffix() -> str:
    """The NIfTI suffix for cache entries: ``.nii`` only when the active cache asks for it."""
    from kwneuro_pydra.cache import current_cache  # deferred: the cache never imports us

    cache = current_cache()
    if cache is not None and not getattr(cache, "nifti_compression", True):
        return ".nii"
    return ".nii.gz"


def cache_nifti_path(cache_dir: Path, step_name: str) -> Path:
    """The entry's volume file: the configured suffix, else whichever suffix the entry has."""
    preferred = cache_dir / f"{step_name}{cache_nifti_suffix()}"
    if preferred.exists():
        return preferred
    for suffix in NIFTI_SUFFIXES:
        candidate = cache_dir / f"{step_name}{suffix}"
        if candidate.exists():
            return candidate
    return preferred


def validated_affine(affine: Any) -> NDArray[np.float64]:
    """``affine`` as a float64 4x4 matrix; `ValueError` unless it is one, with finite entries."""
    try:
        matrix = np.array(affine, dtype=np.float64)
    except (TypeError, ValueError):
        msg = f"affine must be a finite 4x4 matrix of numbers, got {type(affine).__name__}"
        raise ValueError(msg) from None
    if matrix.shape != (4, 4):
        msg = f"affine must be a finite 4x4 matrix, got shape {matrix.shape}"
        raise ValueError(msg)
    if not np.isfinite(matrix).all():
        msg = "affine must be a finite 4x4 matrix, got non-finite entries (nan or inf)"
        raise ValueError(msg)
    return matrix


def header_from_metadata(metadata: dict[str, Any]) -> Nifti1Header:
    """A NIfTI-1 header holding the NIfTI fields of ``metadata``; other keys are skipped."""
    header = Nifti1Header()  # type: ignore[no-untyped-call]
    valid = set(header.keys())  # type: ignore[no-untyped-call]
    for key, value in metadata.items():
        if key not in valid:
            continue
        try:
            header[key] = value
        except (TypeError, ValueError) as exc:
            msg = f"metadata field {key!r}: cannot store {value!r} in a NIfTI header ({exc})"
            raise ValueError(msg) from None
    return header


def _plain(value: Any) -> Any:
    """A header field as plain Python values (lists, floats, ints, str) for fingerprints."""
    item = np.asarray(value)
    if item.dtype.kind == "S":
        return bytes(item.tobytes()).rstrip(b"\0").decode("latin-1")
    return item.tolist()


def meaningful_header(metadata: dict[str, Any], ndim: int) -> dict[str, Any]:
    """The header fields of ``metadata`` that change an ``ndim``-D image's meaning, as plain
    values: `MEANINGFUL_FIELDS`, qfac and the zooms.
    """
    header = header_from_metadata(metadata)
    fields: dict[str, Any] = {name: _plain(header[name]) for name in MEANINGFUL_FIELDS}
    # pixdim[0] is qfac (qform handedness), then one zoom per dimension present.
    fields["pixdim"] = _plain(header["pixdim"][: ndim + 1])
    return fields


def build_image(
    array: NDArray[Any], affine: NDArray[np.floating[Any]], metadata: dict[str, Any]
) -> Nifti1Image:
    """A NIfTI-1 image that stores ``array`` in its own dtype with ``affine`` and ``metadata``.

    The qform and sform codes of ``metadata`` are kept; when both are 0 (or the qform alone
    cannot express ``affine``, e.g. a shear), the sform is set with code 2 ("aligned") so the
    stored affine is exactly ``affine``.
    """
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)  # NIfTI has no boolean type
    header = header_from_metadata(metadata)
    try:
        header.set_data_dtype(array.dtype)  # type: ignore[no-untyped-call]
    except HeaderDataError:
        msg = f"arrays of dtype {array.dtype} cannot be stored in NIfTI"
        raise ValueError(msg) from None
    qcode = int(header["qform_code"])
    scode = int(header["sform_code"])
    image = Nifti1Image(array, affine, header)  # type: ignore[no-untyped-call]
    if qcode == 0 and scode == 0:
        scode = 2
    image.set_sform(affine, code=scode)  # type: ignore[no-untyped-call]
    image.set_qform(affine, code=qcode)  # type: ignore[no-untyped-call]
    if not np.allclose(image.header.get_best_affine(), affine, rtol=0, atol=1e-6):  # type: ignore[no-untyped-call]
        image.set_sform(affine, code=2)  # type: ignore[no-untyped-call]
    return image

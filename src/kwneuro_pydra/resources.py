"""Imaging resources on nibabel that implement the cache protocol and fingerprint fast.

The names and behaviour follow upstream kwneuro 1.0 (``kwneuro.resource``, ``kwneuro.io`` and
``kwneuro.dwi``), so a script ports by changing its imports:

- volumes: `VolumeResource` (abstract), `InMemoryVolumeResource`, `NiftiVolumeResource`;
- b-values: `BvalResource` (abstract), `InMemoryBvalResource`, `FslBvalResource`;
- b-vectors: `BvecResource` (abstract), `InMemoryBvecResource`, `FslBvecResource`;
- `Dwi`: a 4-D volume with its b-values and b-vectors, validated on construction.

Where this module differs from upstream, it is deliberate:

- Loading keeps the stored dtype (``np.asanyarray(img.dataobj)``, never ``get_fdata()``);
  an image with a scale factor (``scl_slope``) loads as floats, as nibabel scales it.
- A `NiftiVolumeResource` reads its header once (re-read only when the file changes) and
  decodes voxels only in `NiftiVolumeResource.get_array` / `NiftiVolumeResource.load`;
  `get_affine`, `get_metadata` and `get_shape` never decode voxels.
- Saving preserves the array's dtype, the affine and the qform/sform codes.
- FSL text files are written with the shortest exact decimal form of each value (float64),
  so a b-table round-trips bit for bit.
- Bad input raises a clear error naming the path or the field (`ResourceFileError` for an
  unreadable file, `FileNotFoundError` with the path for a missing one, `ValueError` for
  inconsistent values).

Fingerprints (see `kwneuro_pydra._fingerprint`): in-memory resources by content (array,
affine and the header fields that change an image's meaning); file-backed resources by their
file's content through the stat-keyed digest memo, without decoding anything.

Cache protocol: a `@cacheable` step annotated to return a `VolumeResource`, `BvalResource`,
`BvecResource` or `Dwi` stores its result as NIfTI (``.nii.gz``, or ``.nii`` when the active
`Cache` has ``nifti_compression=False``) and FSL text files, and gets back file-backed,
lazy resources.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.nifti1 import Nifti1Header, Nifti1Image
from nibabel.spatialimages import HeaderDataError
from numpy.typing import NDArray

if TYPE_CHECKING:
    import dipy.core.gradients

__all__ = [
    "B0_THRESHOLD",
    "BVEC_NORM_TOLERANCE",
    "BvalResource",
    "BvecResource",
    "Dwi",
    "FslBvalResource",
    "FslBvecResource",
    "InMemoryBvalResource",
    "InMemoryBvecResource",
    "InMemoryVolumeResource",
    "NiftiVolumeResource",
    "PathLike",
    "Resource",
    "ResourceFileError",
    "VolumeResource",
    "normalize_path",
]

PathLike = Path | str
"""A filesystem path given as a `pathlib.Path` or a string."""

BVEC_NORM_TOLERANCE = 1e-3
"""Largest accepted deviation from 1 of the norm of a b-vector whose b-value is not 0.

FSL text files usually carry 6 decimals, and scanner exports are often rounded further;
dipy's `gradient_table` accepts the same order of deviation.
"""

B0_THRESHOLD = 50.0
"""B-values at or below this are treated as b=0 images (dipy's default threshold)."""

_NIFTI_SUFFIXES = (".nii.gz", ".nii")

# Header fields that change what an image means (beyond its array and affine). They enter the
# fingerprint of an in-memory volume; descriptions, calibration hints and the like do not.
_MEANINGFUL_FIELDS = (
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

# What nibabel, gzip, zlib and the struct module raise on a damaged or foreign file.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    ImageFileError,
    HeaderDataError,
    EOFError,
    OSError,
    ValueError,
    zlib.error,
    struct.error,
)


class ResourceFileError(ValueError):
    """A resource file exists but cannot be read: not NIfTI, truncated, corrupted, malformed.

    The message names the file and what is wrong with it. The low-level exception (zlib,
    gzip, struct, nibabel) stays available as ``__context__`` but is not shown in tracebacks.
    """


def normalize_path(path_input: PathLike) -> Path:
    """Expand ``~`` and make a path absolute (resolving symbolic links).

    Args:
        path_input: A path as a string or `pathlib.Path`.

    Returns:
        The absolute, resolved path.
    """
    return Path(path_input).expanduser().resolve()


def _missing(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, f"{what} not found: {path}", str(path))


def _require_file(path: Path, what: str) -> None:
    """Raise `FileNotFoundError` naming ``path`` unless it is an existing regular file."""
    if not path.is_file():
        raise _missing(path, what)


def _nifti_suffix_of(path: Path) -> str:
    name = path.name.lower()
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    msg = f"a NIfTI file name must end in .nii.gz or .nii: {path}"
    raise ValueError(msg)


def _cache_nifti_suffix() -> str:
    """The NIfTI suffix for cache entries: ``.nii`` only when the active cache asks for it."""
    from kwneuro_pydra.cache import current_cache  # deferred: the cache never imports us

    cache = current_cache()
    if cache is not None and not getattr(cache, "nifti_compression", True):
        return ".nii"
    return ".nii.gz"


def _cache_nifti_path(cache_dir: Path, step_name: str) -> Path:
    """The entry's volume file: the configured suffix, else whichever suffix the entry has."""
    preferred = cache_dir / f"{step_name}{_cache_nifti_suffix()}"
    if preferred.exists():
        return preferred
    for suffix in _NIFTI_SUFFIXES:
        candidate = cache_dir / f"{step_name}{suffix}"
        if candidate.exists():
            return candidate
    return preferred


def _validated_affine(affine: Any) -> NDArray[np.float64]:
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


def _header_from_metadata(metadata: dict[str, Any]) -> Nifti1Header:
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


def _meaningful_header(metadata: dict[str, Any], ndim: int) -> dict[str, Any]:
    header = _header_from_metadata(metadata)
    fields: dict[str, Any] = {name: _plain(header[name]) for name in _MEANINGFUL_FIELDS}
    # pixdim[0] is qfac (qform handedness), then one zoom per dimension present.
    fields["pixdim"] = _plain(header["pixdim"][: ndim + 1])
    return fields


def _build_image(
    array: NDArray[Any], affine: NDArray[np.floating[Any]], metadata: dict[str, Any]
) -> Nifti1Image:
    """A NIfTI-1 image that stores ``array`` in its own dtype with ``affine`` and ``metadata``.

    The qform and sform codes of ``metadata`` are kept; when both are 0 (or the qform alone
    cannot express ``affine``, e.g. a shear), the sform is set with code 2 ("aligned") so the
    stored affine is exactly ``affine``.
    """
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)  # NIfTI has no boolean type
    header = _header_from_metadata(metadata)
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


def _source(resource: object) -> str:
    path = getattr(resource, "path", None)
    return str(path) if isinstance(path, Path) else "in memory"


# ---------------------------------------------------------------------------------------------
# Base
# ---------------------------------------------------------------------------------------------


class Resource(ABC):
    """A piece of data that lives in memory or on disk."""

    is_loaded: ClassVar[bool] = True
    """Whether the resource holds its data in memory (rather than, e.g., in a file)."""

    @abstractmethod
    def load(self) -> Resource:
        """Return an in-memory version of this resource (itself when already in memory).

        Returns:
            A resource whose data is held in memory.
        """


# ---------------------------------------------------------------------------------------------
# Volumes
# ---------------------------------------------------------------------------------------------


class VolumeResource(Resource):
    """A volume or stack of volumes: an n-D array (n >= 3, three spatial axes first) with an
    affine mapping voxel indices to scanner space and NIfTI-style metadata.

    Implements the cache protocol: a ``@cacheable`` step returning a volume stores it as
    ``<step_name>.nii.gz`` (``.nii`` when the active cache has ``nifti_compression=False``)
    and gets back a lazy `NiftiVolumeResource`.
    """

    @abstractmethod
    def get_array(self) -> NDArray[Any]:
        """Return the voxel array, in the dtype it is stored in.

        Returns:
            The n-D voxel array.
        """

    @abstractmethod
    def get_affine(self) -> NDArray[np.floating[Any]]:
        """Return the 4x4 affine that maps voxel indices to scanner space.

        Returns:
            A 4x4 float64 matrix.
        """

    @abstractmethod
    def get_metadata(self) -> dict[str, Any]:
        """Return the image metadata (NIfTI-1 header fields by name, plus any custom keys).

        Returns:
            A dict of header fields.
        """

    @abstractmethod
    def load(self) -> InMemoryVolumeResource:
        """Return the volume held in memory.

        Returns:
            An `InMemoryVolumeResource`.
        """

    def get_shape(self) -> tuple[int, ...]:
        """Return the shape of the voxel array (without decoding voxels where possible).

        Returns:
            The array shape.
        """
        return tuple(self.get_array().shape)

    @classmethod
    def _cache_files(cls, step_name: str) -> list[str]:
        """Cache protocol: the entry's file name, ``.nii.gz`` or ``.nii`` per the active cache.

        Args:
            step_name: The step's name.

        Returns:
            ``[f"{step_name}.nii.gz"]`` or ``[f"{step_name}.nii"]``.
        """
        return [f"{step_name}{_cache_nifti_suffix()}"]

    def _cache_save(self, cache_dir: Path, step_name: str) -> None:
        """Cache protocol: write this volume into ``cache_dir``.

        Args:
            cache_dir: The (temporary) entry directory.
            step_name: The step's name.
        """
        NiftiVolumeResource.save(self, cache_dir / self._cache_files(step_name)[0])

    @classmethod
    def _cache_load(cls, cache_dir: Path, step_name: str) -> NiftiVolumeResource:
        """Cache protocol: a lazy resource over the entry's volume file.

        Args:
            cache_dir: The entry directory.
            step_name: The step's name.

        Returns:
            A `NiftiVolumeResource` (nothing is read yet).
        """
        return NiftiVolumeResource(_cache_nifti_path(cache_dir, step_name))


@dataclass(frozen=True, eq=False)
class InMemoryVolumeResource(VolumeResource):
    """A volume held in memory.

    Args:
        array: The voxel array (n >= 3 dimensions expected; stored as given).
        affine: 4x4 voxel-to-scanner matrix (default identity); stored as float64.
        metadata: NIfTI-1 header fields by name (as ``dict(nibabel_header)`` gives them),
            plus any custom keys (those are not written to NIfTI files).

    Raises:
        ValueError: ``affine`` is not a finite 4x4 matrix, or ``array`` has object dtype.

    Fingerprint: the array's content (dtype, shape, memory order included), the affine, and
    the header fields that change the image's meaning (qform/sform codes, zooms, units,
    intent, slice timing); other metadata (e.g. ``descrip``) does not enter it.
    """

    is_loaded: ClassVar[bool] = True

    array: NDArray[Any]
    affine: NDArray[np.floating[Any]] = field(default_factory=lambda: np.eye(4))
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray):
            object.__setattr__(self, "array", np.asarray(self.array))
        if self.array.dtype.hasobject:
            msg = "volume array must be numeric, got dtype object"
            raise ValueError(msg)
        object.__setattr__(self, "affine", _validated_affine(self.affine))
        if not isinstance(self.metadata, dict):
            object.__setattr__(self, "metadata", dict(self.metadata))

    def get_array(self) -> NDArray[Any]:
        """Return the voxel array.

        Returns:
            The array itself (no copy).
        """
        return self.array

    def get_affine(self) -> NDArray[np.floating[Any]]:
        """Return the affine.

        Returns:
            The 4x4 float64 affine (no copy).
        """
        return self.affine

    def get_metadata(self) -> dict[str, Any]:
        """Return the metadata.

        Returns:
            The metadata dict (no copy).
        """
        return self.metadata

    def get_shape(self) -> tuple[int, ...]:
        """Return the array shape.

        Returns:
            The array shape.
        """
        return tuple(self.array.shape)

    def load(self) -> InMemoryVolumeResource:
        """Return itself: already in memory.

        Returns:
            ``self``.
        """
        return self

    def __fingerprint__(self) -> tuple[Any, ...]:
        """Fingerprint stand-in: (array, affine, meaning-changing header fields).

        Returns:
            A tuple the fingerprint hashes recursively.
        """
        return (self.array, self.affine, _meaningful_header(self.metadata, self.array.ndim))


@dataclass(frozen=True, init=False)
class NiftiVolumeResource(VolumeResource):
    """A volume stored in a NIfTI-1 file (``.nii`` or ``.nii.gz``), read lazily.

    Nothing is read on construction. The header is read on first use and kept until the file
    changes (checked with one ``stat``); voxels are decoded only by `get_array` and `load`,
    each call decoding the file once. An uncompressed ``.nii`` is memory-mapped
    (copy-on-write), so loading it costs almost nothing until voxels are touched.

    Args:
        path: The file; made absolute (``~`` expanded, links resolved).

    Raises (on use):
        FileNotFoundError: the file does not exist (the message names it).
        ResourceFileError: the file is not NIfTI, or is truncated or corrupted.

    Fingerprint: the file's content (via the stat-keyed digest memo; nothing is decoded),
    so two identical files fingerprint alike wherever they live.
    """

    is_loaded: ClassVar[bool] = False

    path: Path
    _header_memo: tuple[tuple[int, ...], Nifti1Image] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __init__(self, path: PathLike) -> None:
        object.__setattr__(self, "path", normalize_path(path))
        object.__setattr__(self, "_header_memo", None)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle only the path (never a cached header or open image).

        Returns:
            The state to pickle.
        """
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore from `__getstate__`.

        Args:
            state: The pickled state.
        """
        object.__setattr__(self, "path", state["path"])
        object.__setattr__(self, "_header_memo", None)

    def _image(self) -> Nifti1Image:
        """The nibabel image (header parsed, voxels not read), re-read if the file changed."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise _missing(self.path, "NIfTI file") from None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        memo = self._header_memo
        if memo is not None and memo[0] == key:
            return memo[1]
        if not os.path.isfile(self.path):
            raise _missing(self.path, "NIfTI file")
        try:
            image = nib.load(self.path)
        except FileNotFoundError:
            raise _missing(self.path, "NIfTI file") from None
        except PermissionError:
            raise
        except _DECODE_ERRORS as exc:
            msg = f"not a readable NIfTI file: {self.path} ({type(exc).__name__}: {exc})"
            raise ResourceFileError(msg) from None
        if not isinstance(image, Nifti1Image):
            msg = f"not a NIfTI-1 file: {self.path} (nibabel reads it as {type(image).__name__})"
            raise ResourceFileError(msg)
        object.__setattr__(self, "_header_memo", (key, image))
        return image

    def get_array(self) -> NDArray[Any]:
        """Decode and return the voxel array in its stored dtype (scaled if the file says so).

        Returns:
            The voxel array (a copy-on-write memory map for an unscaled ``.nii``).

        Raises:
            FileNotFoundError: the file does not exist.
            ResourceFileError: the file is not NIfTI, or is truncated or corrupted.
        """
        image = self._image()
        try:
            return np.asanyarray(image.dataobj)
        except FileNotFoundError:
            raise _missing(self.path, "NIfTI file") from None
        except PermissionError:
            raise
        except _DECODE_ERRORS as exc:
            msg = (
                f"truncated or corrupted NIfTI file: {self.path} "
                f"({type(exc).__name__}: {str(exc).strip()})"
            )
            raise ResourceFileError(msg) from None

    def get_affine(self) -> NDArray[np.floating[Any]]:
        """Return the affine from the header (no voxel decoding).

        Returns:
            A 4x4 float64 matrix (a copy).

        Raises:
            FileNotFoundError: the file does not exist.
            ResourceFileError: the file is not NIfTI.
        """
        affine = self._image().affine
        return np.array(affine, dtype=np.float64)

    def get_metadata(self) -> dict[str, Any]:
        """Return the header fields (no voxel decoding).

        Returns:
            ``dict`` of the NIfTI-1 header fields (a copy).

        Raises:
            FileNotFoundError: the file does not exist.
            ResourceFileError: the file is not NIfTI.
        """
        return dict(self._image().header.copy())  # type: ignore[no-untyped-call]

    def get_shape(self) -> tuple[int, ...]:
        """Return the array shape from the header (no voxel decoding).

        Returns:
            The array shape.

        Raises:
            FileNotFoundError: the file does not exist.
            ResourceFileError: the file is not NIfTI.
        """
        return tuple(int(n) for n in self._image().shape)

    def load(self) -> InMemoryVolumeResource:
        """Decode the file once and return the volume in memory.

        Returns:
            An `InMemoryVolumeResource` with the stored dtype, the affine and the header.

        Raises:
            FileNotFoundError: the file does not exist.
            ResourceFileError: the file is not NIfTI, or is truncated or corrupted.
        """
        array = self.get_array()
        return InMemoryVolumeResource(
            array=array, affine=self.get_affine(), metadata=self.get_metadata()
        )

    def __fingerprint__(self) -> Path:
        """Fingerprint stand-in: the file, hashed by content.

        Returns:
            The path of the (existing) file.

        Raises:
            FileNotFoundError: the file does not exist.
        """
        _require_file(self.path, "NIfTI file")
        return self.path

    @staticmethod
    def save(volume: VolumeResource, path: PathLike) -> NiftiVolumeResource:
        """Write ``volume`` to a NIfTI-1 file and return a resource over it.

        The array keeps its dtype (booleans become uint8, NIfTI has no boolean type), the
        affine is stored exactly, and the qform/sform codes, zooms beyond the spatial ones,
        units, intent and other NIfTI fields of the metadata are written. Custom (non-NIfTI)
        metadata keys are not written. A file-backed source with the same compression is
        copied byte for byte instead of being decoded and re-encoded.

        Args:
            volume: The volume to write.
            path: Destination; ``.nii.gz`` is compressed, ``.nii`` is not. Parent directories
                must exist.

        Returns:
            A `NiftiVolumeResource` over the written file.

        Raises:
            ValueError: ``path`` does not end in ``.nii`` or ``.nii.gz``, or the array dtype or
                a metadata field cannot be stored in NIfTI.
        """
        target = normalize_path(path)
        suffix = _nifti_suffix_of(target)
        if isinstance(volume, NiftiVolumeResource) and _nifti_suffix_of(volume.path) == suffix:
            _require_file(volume.path, "NIfTI file")
            if volume.path != target:
                shutil.copyfile(volume.path, target)
            return NiftiVolumeResource(target)
        image = _build_image(volume.get_array(), volume.get_affine(), volume.get_metadata())
        nib.save(image, target)
        return NiftiVolumeResource(target)


# ---------------------------------------------------------------------------------------------
# FSL text files
# ---------------------------------------------------------------------------------------------


def _format_number(value: float) -> str:
    """Shortest decimal that reads back as exactly ``value`` (float64)."""
    return np.format_float_positional(np.float64(value), trim="-")


def _read_table(path: Path, what: str) -> list[list[float]]:
    """Rows of numbers from a whitespace-separated text file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _missing(path, f"{what} file") from None
    except IsADirectoryError:
        raise _missing(path, f"{what} file") from None
    except UnicodeDecodeError:
        msg = f"not a text {what} file: {path}"
        raise ResourceFileError(msg) from None
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        try:
            rows.append([float(token) for token in tokens])
        except ValueError:
            msg = f"malformed {what} file: {path}, line {number}: {line.strip()[:60]!r}"
            raise ResourceFileError(msg) from None
    if not rows:
        msg = f"empty {what} file: {path}"
        raise ResourceFileError(msg)
    return rows


def _validated_bvals(array: Any) -> NDArray[np.floating[Any]]:
    values = np.asarray(array)
    if values.dtype.kind not in "biuf":
        msg = f"b-values must be real numbers, got dtype {values.dtype}"
        raise ValueError(msg)
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


def _validated_bvecs(array: Any) -> NDArray[np.floating[Any]]:
    vectors = np.asarray(array)
    if vectors.dtype.kind not in "biuf":
        msg = f"b-vectors must be real numbers, got dtype {vectors.dtype}"
        raise ValueError(msg)
    if vectors.ndim != 2 or vectors.shape[1] != 3:
        msg = f"b-vector array must have shape (N, 3), got {vectors.shape}"
        raise ValueError(msg)
    return vectors


class BvalResource(Resource):
    """The b-values of a 4-D DWI, one per volume.

    Implements the cache protocol (``<step_name>.bval``, FSL text).
    """

    @abstractmethod
    def get(self) -> NDArray[np.floating[Any]]:
        """Return the b-values.

        Returns:
            Array of shape (N,).
        """

    def load(self) -> InMemoryBvalResource:
        """Return the b-values held in memory.

        Returns:
            An `InMemoryBvalResource`.
        """
        return InMemoryBvalResource(self.get())

    @classmethod
    def _cache_files(cls, step_name: str) -> list[str]:
        """Cache protocol: the entry's file name.

        Args:
            step_name: The step's name.

        Returns:
            ``[f"{step_name}.bval"]``.
        """
        return [f"{step_name}.bval"]

    def _cache_save(self, cache_dir: Path, step_name: str) -> None:
        """Cache protocol: write the b-values into ``cache_dir``.

        Args:
            cache_dir: The (temporary) entry directory.
            step_name: The step's name.
        """
        FslBvalResource.save(self, cache_dir / f"{step_name}.bval")

    @classmethod
    def _cache_load(cls, cache_dir: Path, step_name: str) -> FslBvalResource:
        """Cache protocol: a lazy resource over the entry's b-value file.

        Args:
            cache_dir: The entry directory.
            step_name: The step's name.

        Returns:
            A `FslBvalResource`.
        """
        return FslBvalResource(cache_dir / f"{step_name}.bval")


@dataclass(frozen=True, eq=False)
class InMemoryBvalResource(BvalResource):
    """B-values held in memory.

    Args:
        array: The b-values, shape (N,), finite and non-negative.

    Raises:
        ValueError: the array is not 1-D, not numeric, not finite, or has negative values.
    """

    is_loaded: ClassVar[bool] = True

    array: NDArray[np.floating[Any]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "array", _validated_bvals(self.array))

    def get(self) -> NDArray[np.floating[Any]]:
        """Return the b-values.

        Returns:
            The array itself (no copy).
        """
        return self.array

    def load(self) -> InMemoryBvalResource:
        """Return itself: already in memory.

        Returns:
            ``self``.
        """
        return self

    def __fingerprint__(self) -> NDArray[np.floating[Any]]:
        """Fingerprint stand-in: the array.

        Returns:
            The b-value array.
        """
        return self.array


@dataclass(frozen=True, init=False)
class FslBvalResource(BvalResource):
    """B-values in an FSL text file (numbers separated by white space; one row or one column).

    Args:
        path: The file; made absolute (``~`` expanded, links resolved).

    Raises (on use):
        FileNotFoundError: the file does not exist.
        ResourceFileError: the file is empty or holds something other than numbers.
        ValueError: the values are not finite or are negative.

    Fingerprint: the file's content.
    """

    is_loaded: ClassVar[bool] = False

    path: Path

    def __init__(self, path: PathLike) -> None:
        object.__setattr__(self, "path", normalize_path(path))

    def get(self) -> NDArray[np.floating[Any]]:
        """Read and return the b-values.

        Returns:
            float64 array of shape (N,).

        Raises:
            FileNotFoundError: the file does not exist.
            ResourceFileError: the file is malformed.
            ValueError: the values are invalid (message names the file).
        """
        rows = _read_table(self.path, "b-value")
        values = np.array([value for row in rows for value in row], dtype=np.float64)
        try:
            return _validated_bvals(values)
        except ValueError as exc:
            raise ValueError(f"{self.path}: {exc}") from None

    def __fingerprint__(self) -> Path:
        """Fingerprint stand-in: the file, hashed by content.

        Returns:
            The path of the (existing) file.

        Raises:
            FileNotFoundError: the file does not exist.
        """
        _require_file(self.path, "b-value file")
        return self.path

    @staticmethod
    def save(bvals: BvalResource, path: PathLike) -> FslBvalResource:
        """Write b-values as one row of FSL text (exact float64 decimals).

        Args:
            bvals: The b-values.
            path: Destination file.

        Returns:
            A `FslBvalResource` over the written file.
        """
        target = normalize_path(path)
        values = bvals.get()
        target.write_text(" ".join(_format_number(v) for v in values) + "\n", encoding="utf-8")
        return FslBvalResource(target)


class BvecResource(Resource):
    """The b-vectors of a 4-D DWI, one unit vector (x, y, z) per volume.

    Implements the cache protocol (``<step_name>.bvec``, FSL text).
    """

    @abstractmethod
    def get(self) -> NDArray[np.floating[Any]]:
        """Return the b-vectors.

        Returns:
            Array of shape (N, 3).
        """

    def load(self) -> InMemoryBvecResource:
        """Return the b-vectors held in memory.

        Returns:
            An `InMemoryBvecResource`.
        """
        return InMemoryBvecResource(self.get())

    @classmethod
    def _cache_files(cls, step_name: str) -> list[str]:
        """Cache protocol: the entry's file name.

        Args:
            step_name: The step's name.

        Returns:
            ``[f"{step_name}.bvec"]``.
        """
        return [f"{step_name}.bvec"]

    def _cache_save(self, cache_dir: Path, step_name: str) -> None:
        """Cache protocol: write the b-vectors into ``cache_dir``.

        Args:
            cache_dir: The (temporary) entry directory.
            step_name: The step's name.
        """
        FslBvecResource.save(self, cache_dir / f"{step_name}.bvec")

    @classmethod
    def _cache_load(cls, cache_dir: Path, step_name: str) -> FslBvecResource:
        """Cache protocol: a lazy resource over the entry's b-vector file.

        Args:
            cache_dir: The entry directory.
            step_name: The step's name.

        Returns:
            A `FslBvecResource`.
        """
        return FslBvecResource(cache_dir / f"{step_name}.bvec")


@dataclass(frozen=True, eq=False)
class InMemoryBvecResource(BvecResource):
    """B-vectors held in memory.

    Unit length is checked by `Dwi`, which knows the b-values: rows of b=0 volumes may be
    zero or even nan (as in some scanner exports and in dipy's ``small_64D`` data).

    Args:
        array: The b-vectors, shape (N, 3).

    Raises:
        ValueError: the array is not of shape (N, 3) or not numeric.
    """

    is_loaded: ClassVar[bool] = True

    array: NDArray[np.floating[Any]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "array", _validated_bvecs(self.array))

    def get(self) -> NDArray[np.floating[Any]]:
        """Return the b-vectors.

        Returns:
            The array itself (no copy).
        """
        return self.array

    def load(self) -> InMemoryBvecResource:
        """Return itself: already in memory.

        Returns:
            ``self``.
        """
        return self

    def __fingerprint__(self) -> NDArray[np.floating[Any]]:
        """Fingerprint stand-in: the array.

        Returns:
            The b-vector array.
        """
        return self.array


@dataclass(frozen=True, init=False)
class FslBvecResource(BvecResource):
    """B-vectors in an FSL text file: three rows (x, y and z of every volume).

    A file of N rows of three numbers (N != 3) is also accepted, as dipy does. A 3x3 file is
    read the FSL way (rows are x, y, z).

    Args:
        path: The file; made absolute (``~`` expanded, links resolved).

    Raises (on use):
        FileNotFoundError: the file does not exist.
        ResourceFileError: the file is empty, holds something other than numbers, or is not
            a 3 x N (or N x 3) table.

    Fingerprint: the file's content.
    """

    is_loaded: ClassVar[bool] = False

    path: Path

    def __init__(self, path: PathLike) -> None:
        object.__setattr__(self, "path", normalize_path(path))

    def get(self) -> NDArray[np.floating[Any]]:
        """Read and return the b-vectors.

        Returns:
            float64 array of shape (N, 3).

        Raises:
            FileNotFoundError: the file does not exist.
            ResourceFileError: the file is malformed (message names the file and the shape).
        """
        rows = _read_table(self.path, "b-vector")
        widths = {len(row) for row in rows}
        if len(widths) != 1:
            msg = (
                f"malformed b-vector file: {self.path} "
                f"(rows of different lengths: {sorted(widths)})"
            )
            raise ResourceFileError(msg)
        table = np.array(rows, dtype=np.float64)
        if table.shape[0] == 3:
            table = table.T
        elif table.shape[1] != 3:
            msg = (
                f"malformed b-vector file: {self.path} (a {table.shape[0]} x {table.shape[1]} "
                "table; expected 3 rows of x, y, z, or N rows of 3)"
            )
            raise ResourceFileError(msg)
        try:
            return _validated_bvecs(np.ascontiguousarray(table))
        except ValueError as exc:
            raise ValueError(f"{self.path}: {exc}") from None

    def __fingerprint__(self) -> Path:
        """Fingerprint stand-in: the file, hashed by content.

        Returns:
            The path of the (existing) file.

        Raises:
            FileNotFoundError: the file does not exist.
        """
        _require_file(self.path, "b-vector file")
        return self.path

    @staticmethod
    def save(bvecs: BvecResource, path: PathLike) -> FslBvecResource:
        """Write b-vectors as FSL text: three rows (x, y, z), exact float64 decimals.

        Args:
            bvecs: The b-vectors.
            path: Destination file.

        Returns:
            A `FslBvecResource` over the written file.
        """
        target = normalize_path(path)
        vectors = bvecs.get()
        lines = (" ".join(_format_number(v) for v in component) for component in vectors.T)
        target.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return FslBvecResource(target)


# ---------------------------------------------------------------------------------------------
# DWI
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Dwi:
    """A diffusion-weighted image: a 4-D volume with one b-value and one b-vector per volume.

    Validated on construction (reading only headers and text files, never voxels).

    Args:
        volume: The 4-D volume; the last axis indexes the diffusion weightings.
        bval: The b-values.
        bvec: The b-vectors.

    Raises:
        ValueError: the volume is not 4-D; the volume, b-value and b-vector counts disagree
            (the message names all three); a b-vector whose b-value is above 0 is not of unit
            length (within `BVEC_NORM_TOLERANCE`).
        FileNotFoundError: a file-backed part is missing.
        ResourceFileError: a file-backed part cannot be read.

    Cache protocol: ``<step_name>.nii.gz`` (or ``.nii``), ``<step_name>.bval`` and
    ``<step_name>.bvec``. Fingerprint: those of its three parts.
    """

    volume: VolumeResource
    bval: BvalResource
    bvec: BvecResource

    def __post_init__(self) -> None:
        shape = self.volume.get_shape()
        if len(shape) != 4:
            msg = (
                f"a DWI volume must be 4-D (x, y, z, diffusion weighting), got shape {shape} "
                f"({_source(self.volume)})"
            )
            raise ValueError(msg)
        bvals = self.bval.get()
        bvecs = self.bvec.get()
        n_volumes, n_bvals, n_bvecs = shape[3], len(bvals), len(bvecs)
        if not n_volumes == n_bvals == n_bvecs:
            msg = (
                "DWI counts disagree: "
                f"volume has {n_volumes} diffusion volumes ({_source(self.volume)}), "
                f"bval has {n_bvals} b-values ({_source(self.bval)}), "
                f"bvec has {n_bvecs} b-vectors ({_source(self.bvec)})"
            )
            raise ValueError(msg)
        weighted = np.asarray(bvals) > 0
        norms = np.linalg.norm(np.asarray(bvecs, dtype=np.float64)[weighted], axis=1)
        bad = np.flatnonzero(~(np.abs(norms - 1.0) <= BVEC_NORM_TOLERANCE))  # nan is bad
        if bad.size:
            index = int(np.flatnonzero(weighted)[bad[0]])
            msg = (
                "all b-vectors with nonzero b-values must be unit vectors: "
                f"{bad.size} are not, first at volume {index} "
                f"(b={float(bvals[index]):g}, |bvec|={float(norms[bad[0]]):.6g}; "
                f"{_source(self.bvec)})"
            )
            raise ValueError(msg)

    def load(self) -> Dwi:
        """Return a `Dwi` with all parts held in memory.

        Returns:
            A new `Dwi` of in-memory resources.
        """
        return Dwi(volume=self.volume.load(), bval=self.bval.load(), bvec=self.bvec.load())

    def save(self, path: PathLike, basename: str, *, compress: bool = True) -> Dwi:
        """Write all parts to a directory and return a `Dwi` over the written files.

        Args:
            path: Destination directory (created if needed).
            basename: File name stem: writes ``<basename>.nii.gz`` (or ``.nii``),
                ``<basename>.bval`` and ``<basename>.bvec``.
            compress: Write ``.nii.gz`` (default) rather than ``.nii``.

        Returns:
            A file-backed `Dwi`.

        Raises:
            ValueError: ``path`` exists and is not a directory.
        """
        directory = normalize_path(path)
        if directory.exists() and not directory.is_dir():
            msg = f"`path` should be the desired save directory, got a file: {directory}"
            raise ValueError(msg)
        directory.mkdir(parents=True, exist_ok=True)
        suffix = ".nii.gz" if compress else ".nii"
        return Dwi(
            volume=NiftiVolumeResource.save(self.volume, directory / f"{basename}{suffix}"),
            bval=FslBvalResource.save(self.bval, directory / f"{basename}.bval"),
            bvec=FslBvecResource.save(self.bvec, directory / f"{basename}.bvec"),
        )

    def get_gtab(self) -> dipy.core.gradients.GradientTable:
        """Return dipy's gradient table for this DWI (needs dipy installed).

        Returns:
            A `dipy.core.gradients.GradientTable`.

        Raises:
            ImportError: dipy is not installed.
        """
        from dipy.core.gradients import gradient_table

        table: dipy.core.gradients.GradientTable = gradient_table(
            bvals=self.bval.get(), bvecs=self.bvec.get()
        )
        return table

    def b0_mask(self, threshold: float = B0_THRESHOLD) -> NDArray[np.bool_]:
        """Return which volumes are b=0 images.

        Args:
            threshold: B-values at or below this count as b=0.

        Returns:
            Boolean array of shape (N,).
        """
        return np.asarray(self.bval.get()) <= threshold

    def __fingerprint__(self) -> tuple[VolumeResource, BvalResource, BvecResource]:
        """Fingerprint stand-in: the three parts, each fingerprinted as itself.

        Returns:
            ``(volume, bval, bvec)``.
        """
        return (self.volume, self.bval, self.bvec)

    @classmethod
    def _cache_files(cls, step_name: str) -> list[str]:
        """Cache protocol: the entry's three file names.

        Args:
            step_name: The step's name.

        Returns:
            The volume (``.nii.gz`` or ``.nii`` per the active cache), ``.bval`` and
            ``.bvec`` file names.
        """
        return [
            f"{step_name}{_cache_nifti_suffix()}",
            f"{step_name}.bval",
            f"{step_name}.bvec",
        ]

    def _cache_save(self, cache_dir: Path, step_name: str) -> None:
        """Cache protocol: write the three parts into ``cache_dir``.

        Args:
            cache_dir: The (temporary) entry directory.
            step_name: The step's name.
        """
        volume_name, bval_name, bvec_name = self._cache_files(step_name)
        NiftiVolumeResource.save(self.volume, cache_dir / volume_name)
        FslBvalResource.save(self.bval, cache_dir / bval_name)
        FslBvecResource.save(self.bvec, cache_dir / bvec_name)

    @classmethod
    def _cache_load(cls, cache_dir: Path, step_name: str) -> Dwi:
        """Cache protocol: a file-backed `Dwi` over the entry's files.

        Args:
            cache_dir: The entry directory.
            step_name: The step's name.

        Returns:
            A `Dwi` of `NiftiVolumeResource`, `FslBvalResource` and `FslBvecResource`.
        """
        return cls(
            NiftiVolumeResource(_cache_nifti_path(cache_dir, step_name)),
            FslBvalResource(cache_dir / f"{step_name}.bval"),
            FslBvecResource(cache_dir / f"{step_name}.bvec"),
        )

"""Volumes: `VolumeResource` (abstract), `InMemoryVolumeResource` and `NiftiVolumeResource`."""

import os
import shutil
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
from nibabel.nifti1 import Nifti1Image
from numpy.typing import NDArray

from kwneuro_pydra.resources._base import Resource
from kwneuro_pydra.resources._files import (
    PathLike,
    ResourceFileError,
    missing,
    normalize_path,
    require_file,
)
from kwneuro_pydra.resources._nifti import (
    DECODE_ERRORS,
    build_image,
    cache_nifti_path,
    cache_nifti_suffix,
    meaningful_header,
    nifti_suffix_of,
    validated_affine,
)
from kwneuro_pydra.resources._niftiio import image_bytes, read_gzipped_voxels, write_image


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
    def load(self) -> "InMemoryVolumeResource":
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
        return [f"{step_name}{cache_nifti_suffix()}"]

    def _cache_save(self, cache_dir: Path, step_name: str) -> None:
        """Cache protocol: write this volume into ``cache_dir``.

        Args:
            cache_dir: The (temporary) entry directory.
            step_name: The step's name.
        """
        NiftiVolumeResource.save(self, cache_dir / self._cache_files(step_name)[0])

    @classmethod
    def _cache_load(cls, cache_dir: Path, step_name: str) -> "NiftiVolumeResource":
        """Cache protocol: a lazy resource over the entry's volume file.

        Args:
            cache_dir: The entry directory.
            step_name: The step's name.

        Returns:
            A `NiftiVolumeResource` (nothing is read yet).
        """
        return NiftiVolumeResource(cache_nifti_path(cache_dir, step_name))


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
        object.__setattr__(self, "affine", validated_affine(self.affine))
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

    def load(self) -> "InMemoryVolumeResource":
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
        return (self.array, self.affine, meaningful_header(self.metadata, self.array.ndim))


@dataclass(frozen=True, init=False)
class NiftiVolumeResource(VolumeResource):
    """A volume stored in a NIfTI-1 file (``.nii`` or ``.nii.gz``), read lazily.

    Nothing is read on construction. The header is read on first use and kept until the file
    changes (checked with one ``stat``); voxels are decoded only by `get_array` and `load`,
    at most once per process while the file is unchanged. An uncompressed ``.nii`` is
    memory-mapped, so loading it costs almost nothing until voxels are touched. Arrays are
    read-only.

    Args:
        path: The file; made absolute (``~`` expanded, links resolved).

    Raises:
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
            raise missing(self.path, "NIfTI file") from None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        memo = self._header_memo
        if memo is not None and memo[0] == key:
            return memo[1]
        require_file(self.path, "NIfTI file")
        try:
            image = nib.load(self.path, mmap="r")
        except FileNotFoundError:
            raise missing(self.path, "NIfTI file") from None
        except PermissionError:
            raise
        except DECODE_ERRORS as exc:
            msg = f"not a readable NIfTI file: {self.path} ({type(exc).__name__}: {exc})"
            raise ResourceFileError(msg) from None
        if not isinstance(image, Nifti1Image):
            msg = f"not a NIfTI-1 file: {self.path} (nibabel reads it as {type(image).__name__})"
            raise ResourceFileError(msg)
        object.__setattr__(self, "_header_memo", (key, image))
        return image

    def get_array(self) -> NDArray[Any]:
        """Decode and return the voxel array in its stored dtype (scaled if the file says so).

        A ``.nii.gz`` is decompressed at most once per process while the file is unchanged
        (a memo bounded in bytes; see `kwneuro_pydra.resources`); an unscaled ``.nii`` is
        memory-mapped. The array is read-only, shared by every caller: copy it to modify it.

        Returns:
            The read-only voxel array, Fortran order.

        Raises:
            FileNotFoundError: the file does not exist.
            ResourceFileError: the file is not NIfTI, or is truncated or corrupted.
        """
        image = self._image()
        image_bytes(image.header, self.path)  # refuses a header declaring too much
        try:
            if self.path.name.lower().endswith(".gz"):
                return read_gzipped_voxels(self.path)
            array: NDArray[Any] = np.asanyarray(image.dataobj)
        except FileNotFoundError:
            raise missing(self.path, "NIfTI file") from None
        except PermissionError:
            raise
        except DECODE_ERRORS as exc:
            msg = (
                f"truncated or corrupted NIfTI file: {self.path} "
                f"({type(exc).__name__}: {str(exc).strip()})"
            )
            raise ResourceFileError(msg) from None
        array.flags.writeable = False
        return array

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
            An `InMemoryVolumeResource` with the stored dtype (its array read-only, see
            `get_array`), the affine and the header.

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
        require_file(self.path, "NIfTI file")
        return self.path

    @staticmethod
    def save(volume: VolumeResource, path: PathLike) -> "NiftiVolumeResource":
        """Write ``volume`` to a NIfTI-1 file and return a resource over it.

        The array keeps its dtype (booleans become uint8, NIfTI has no boolean type), the
        affine is stored exactly, and the qform/sform codes, zooms beyond the spatial ones,
        units, intent and other NIfTI fields of the metadata are written. Custom (non-NIfTI)
        metadata keys are not written. A file-backed source with the same compression is
        copied byte for byte instead of being decoded and re-encoded. ``.nii.gz`` is
        compressed with ISA-L when the ``isal`` package is installed (an ordinary gzip stream),
        and the written bytes' digest is recorded, so fingerprinting the new file reads nothing.

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
        suffix = nifti_suffix_of(target)
        if isinstance(volume, NiftiVolumeResource) and nifti_suffix_of(volume.path) == suffix:
            require_file(volume.path, "NIfTI file")
            if volume.path != target:
                shutil.copyfile(volume.path, target)
            return NiftiVolumeResource(target)
        image = build_image(volume.get_array(), volume.get_affine(), volume.get_metadata())
        write_image(image, target)
        return NiftiVolumeResource(target)

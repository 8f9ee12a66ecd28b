"""`Dwi`: a 4-D volume with its b-values and b-vectors, validated on construction."""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from kwneuro_pydra.resources._files import PathLike, normalize_path, source_of
from kwneuro_pydra.resources._gradients import (
    BvalResource,
    BvecResource,
    FslBvalResource,
    FslBvecResource,
)
from kwneuro_pydra.resources._volume import NiftiVolumeResource, VolumeResource

if TYPE_CHECKING:
    import dipy.core.gradients

BVEC_NORM_TOLERANCE = 1e-2
"""Largest accepted deviation from 1 of the norm of a b-vector whose b-value is not 0.

dipy's `gradient_table` ``atol``: FSL text files usually carry 6 decimals, but scanner
exports are often rounded to 2 (norms 0.993 to 1.006); the tensor fit normalises them.
"""

B0_THRESHOLD = 50.0
"""B-values at or below this are treated as b=0 images (dipy's default threshold)."""


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
            (the message names all three); a b-vector whose b-value is above `B0_THRESHOLD`
            is not of unit length (within `BVEC_NORM_TOLERANCE`); the b-vectors of b=0
            volumes may be anything, zero or nan included, as dipy accepts them.
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
                f"({source_of(self.volume)})"
            )
            raise ValueError(msg)
        bvals = self.bval.get()
        bvecs = self.bvec.get()
        n_volumes, n_bvals, n_bvecs = shape[3], len(bvals), len(bvecs)
        if not n_volumes == n_bvals == n_bvecs:
            msg = (
                "DWI counts disagree: "
                f"volume has {n_volumes} diffusion volumes ({source_of(self.volume)}), "
                f"bval has {n_bvals} b-values ({source_of(self.bval)}), "
                f"bvec has {n_bvecs} b-vectors ({source_of(self.bvec)}); every volume "
                "needs one b-value and one b-vector: check that the three files belong together"
            )
            raise ValueError(msg)
        weighted = np.asarray(bvals) > B0_THRESHOLD  # b=0 rows may be zero or nan (dipy)
        norms = np.linalg.norm(np.asarray(bvecs, dtype=np.float64)[weighted], axis=1)
        bad = np.flatnonzero(~(np.abs(norms - 1.0) <= BVEC_NORM_TOLERANCE))  # nan is bad
        if bad.size:
            index = int(np.flatnonzero(weighted)[bad[0]])
            msg = (
                f"all b-vectors with b-values above {B0_THRESHOLD:g} must be unit vectors: "
                f"{bad.size} are not, first at volume {index} "
                f"(b={float(bvals[index]):g}, |bvec|={float(norms[bad[0]]):.6g}; "
                f"{source_of(self.bvec)}); check that the b-vector file matches the b-values, "
                "or normalise its vectors"
            )
            raise ValueError(msg)

    def load(self) -> "Dwi":
        """Return a `Dwi` with all parts held in memory.

        Returns:
            A new `Dwi` of in-memory resources.
        """
        return Dwi(volume=self.volume.load(), bval=self.bval.load(), bvec=self.bvec.load())

    def save(self, path: PathLike, basename: str, *, compress: bool = True) -> "Dwi":
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

    def get_gtab(self) -> "dipy.core.gradients.GradientTable":
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
        """Cache protocol: its parts' files, ``<step_name>.nii.gz`` (or ``.nii`` per the active
        cache), ``<step_name>.bval`` and ``<step_name>.bvec``.
        """
        return [
            *VolumeResource._cache_files(step_name),
            *BvalResource._cache_files(step_name),
            *BvecResource._cache_files(step_name),
        ]

    def _cache_save(self, cache_dir: Path, step_name: str) -> None:
        """Cache protocol: write each part into ``cache_dir`` by its own protocol."""
        VolumeResource._cache_save(self.volume, cache_dir, step_name)
        BvalResource._cache_save(self.bval, cache_dir, step_name)
        BvecResource._cache_save(self.bvec, cache_dir, step_name)

    @classmethod
    def _cache_load(cls, cache_dir: Path, step_name: str) -> "Dwi":
        """Cache protocol: a `Dwi` of `NiftiVolumeResource`, `FslBvalResource` and
        `FslBvecResource` over the entry's files.
        """
        return cls(
            VolumeResource._cache_load(cache_dir, step_name),
            BvalResource._cache_load(cache_dir, step_name),
            BvecResource._cache_load(cache_dir, step_name),
        )

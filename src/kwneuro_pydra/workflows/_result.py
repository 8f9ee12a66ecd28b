"""`DtiResult`: the maps of a tensor fit, as one value that steps return, cache and pass on.

Annotations are evaluated eagerly (no ``from __future__ import annotations``): the class
reports ``kwneuro_pydra.workflows`` as its module, where `typing.get_type_hints` could not
resolve the names of this one.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from kwneuro_pydra.resources import VolumeResource

__all__ = ["DtiResult"]


@dataclass(frozen=True, eq=False)
class DtiResult:
    """The maps of a diffusion tensor fit, each a `VolumeResource` with the DWI's affine.

    Maps are float32, 0 outside the mask and in voxels that could not be fitted.
    Diffusivities are in mm²/s when the b-values are in s/mm².

    Attributes:
        fa: Fractional anisotropy, 0 to 1, (x, y, z).
        md: Mean diffusivity, the mean eigenvalue, (x, y, z).
        ad: Axial diffusivity, the largest eigenvalue, (x, y, z).
        rd: Radial diffusivity, the mean of the two smaller eigenvalues, (x, y, z).
        evals: Eigenvalues in descending order, (x, y, z, 3).
        evecs: Eigenvectors as columns, (x, y, z, 3, 3): ``evecs[..., :, k]`` belongs to
            ``evals[..., k]`` (dipy's convention; the sign of each is arbitrary).
        tensor: The tensor's six distinct elements in dipy's (lower-triangular) order Dxx,
            Dxy, Dyy, Dxz, Dyz, Dzz, (x, y, z, 6).
        s0: Fitted signal without diffusion weighting, (x, y, z).
        color_fa: Colour FA, float RGB in [0, 1], (x, y, z, 3): the absolute value of the
            principal eigenvector's x, y, z times FA (dipy's ``color_fa``).

    Cache protocol: ``<step_name>_<map>.nii.gz`` (or ``.nii``) for each map, loaded back
    as `NiftiVolumeResource` maps. Fingerprint: those of its maps, in this order.
    """

    fa: VolumeResource
    md: VolumeResource
    ad: VolumeResource
    rd: VolumeResource
    evals: VolumeResource
    evecs: VolumeResource
    tensor: VolumeResource
    s0: VolumeResource
    color_fa: VolumeResource

    def maps(self) -> dict[str, VolumeResource]:
        """Return the maps by name, in the order of the attributes.

        Returns:
            ``{"fa": self.fa, "md": self.md, ...}``.
        """
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def load(self) -> "DtiResult":
        """Return a `DtiResult` with every map held in memory.

        Returns:
            A new `DtiResult` of `InMemoryVolumeResource` maps.
        """
        return DtiResult(**{name: volume.load() for name, volume in self.maps().items()})

    def __fingerprint__(self) -> tuple[VolumeResource, ...]:
        """Fingerprint stand-in: the maps, each fingerprinted as itself.

        Returns:
            The maps in attribute order.
        """
        return tuple(self.maps().values())

    @classmethod
    def _cache_files(cls, step_name: str) -> list[str]:
        """Cache protocol: one volume file per map, ``<step_name>_<map>.nii.gz``."""
        return [
            file
            for f in dataclasses.fields(cls)
            for file in VolumeResource._cache_files(f"{step_name}_{f.name}")
        ]

    def _cache_save(self, cache_dir: Path, step_name: str) -> None:
        """Cache protocol: write each map into ``cache_dir`` by the volume protocol."""
        for name, volume in self.maps().items():
            VolumeResource._cache_save(volume, cache_dir, f"{step_name}_{name}")

    @classmethod
    def _cache_load(cls, cache_dir: Path, step_name: str) -> "DtiResult":
        """Cache protocol: a `DtiResult` of lazy `NiftiVolumeResource` maps."""
        return cls(
            **{
                f.name: VolumeResource._cache_load(cache_dir, f"{step_name}_{f.name}")
                for f in dataclasses.fields(cls)
            }
        )

"""`DtiResult`: the maps of a tensor fit, as one value that steps return, cache and pass on.

Annotations are evaluated eagerly (no ``from __future__ import annotations``): the class
reports ``kwneuro_pydra.workflows`` as its module, where `typing.get_type_hints` could not
resolve the names of this one.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kwneuro_pydra.resources import VolumeResource

__all__ = ["DtiResult", "FitRecord"]


@dataclass(frozen=True)
class FitRecord:
    """What a tensor fit did: the method, the frame, the shells fitted and left out.

    Attributes:
        method: ``"WLS"`` or ``"OLS"``.
        frame: The frame of the eigenvectors and the tensor: ``"bvec"`` or ``"world"``.
        bmax: The highest nominal shell b-value fitted on request (s/mm²).
        shell_tolerance: The largest gap between b-values of one shell (s/mm²).
        b0_volumes: The b=0 volumes fitted.
        shells: ``(nominal b-value, volumes)`` of each shell fitted, lowest first.
        left_out: ``(nominal b-value, volumes)`` of each shell left out.
        unfitted: Voxels of the mask not fitted (NaN in every map).
        notes: The warnings given by the fit, one sentence each.
    """

    method: str
    frame: str
    bmax: float
    shell_tolerance: float
    b0_volumes: int
    shells: tuple[tuple[float, int], ...]
    left_out: tuple[tuple[float, int], ...]
    unfitted: int
    notes: tuple[str, ...]

    def to_json(self) -> str:
        """Return the record as a JSON object (sorted keys, so equal records give equal text)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FitRecord":
        """Return the record of `to_json`'s text.

        Args:
            text: What `to_json` returned.

        Returns:
            The record.
        """
        raw: dict[str, Any] = json.loads(text)
        raw["shells"] = tuple((float(b), int(n)) for b, n in raw["shells"])
        raw["left_out"] = tuple((float(b), int(n)) for b, n in raw["left_out"])
        raw["notes"] = tuple(raw["notes"])
        return cls(**raw)


@dataclass(frozen=True, eq=False)
class DtiResult:
    """The maps of a diffusion tensor fit, each a `VolumeResource` with the DWI's affine.

    Maps are float32: 0 outside the mask, NaN in the voxels of the mask that could not be
    fitted (a NaN or infinite sample, or no sample above 0; ``fit.unfitted`` counts them, as
    MRtrix leaves them NaN). Diffusivities are in mm²/s when the b-values are in s/mm².

    Frames. ``evecs`` and ``tensor`` are in the frame of the b-vectors (``fit.frame`` is
    ``"bvec"``), as dipy gives them: FSL's convention, the image's voxel axes with the first
    one mirrored when the affine's determinant is positive. With ``frame="world"``
    (`estimate_dti`) they are in world (scanner, RAS+) coordinates instead, as MRtrix gives
    them: ``R @ diag(-1, 1, 1) @ v`` (positive determinant) or ``R @ v`` (negative), where
    ``R`` is the affine's rotation (orthogonal polar factor). ``color_fa`` is always in world
    axes: red left-right, green anterior-posterior, blue inferior-superior.

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
            principal eigenvector's world x, y, z times FA (dipy's ``color_fa`` for images
            stored with axes in x, y, z order; dipy's is in the b-vector frame).
        fit: What the fit did (`FitRecord`), or None for results assembled from maps alone.

    Cache protocol: ``<step_name>_<map>.nii.gz`` (or ``.nii``) for each map, loaded back
    as `NiftiVolumeResource` maps, and ``<step_name>_fit.json`` for the record.
    Fingerprint: those of its maps, in this order, and the record's JSON text.
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
    fit: FitRecord | None = None

    def maps(self) -> dict[str, VolumeResource]:
        """Return the maps by name, in the order of the attributes.

        Returns:
            ``{"fa": self.fa, "md": self.md, ...}`` (the record is not a map).
        """
        return {name: getattr(self, name) for name in _MAPS}

    def load(self) -> "DtiResult":
        """Return a `DtiResult` with every map held in memory.

        Returns:
            A new `DtiResult` of `InMemoryVolumeResource` maps, with the same record.
        """
        maps = {name: volume.load() for name, volume in self.maps().items()}
        return DtiResult(**maps, fit=self.fit)

    def __fingerprint__(self) -> tuple[VolumeResource | str, ...]:
        """Fingerprint stand-in: the maps, each fingerprinted as itself, and the record.

        Returns:
            The maps in attribute order, then the record's JSON text ("" when None).
        """
        return (*self.maps().values(), "" if self.fit is None else self.fit.to_json())

    @classmethod
    def _cache_files(cls, step_name: str) -> list[str]:
        """Cache protocol: one volume file per map, ``<step_name>_<map>.nii.gz``, and
        ``<step_name>_fit.json``.
        """
        volumes = [
            file for name in _MAPS for file in VolumeResource._cache_files(f"{step_name}_{name}")
        ]
        return [*volumes, f"{step_name}_fit.json"]

    def _cache_save(self, cache_dir: Path, step_name: str) -> None:
        """Cache protocol: write each map into ``cache_dir`` by the volume protocol, and the
        record (``null`` when None).
        """
        for name, volume in self.maps().items():
            VolumeResource._cache_save(volume, cache_dir, f"{step_name}_{name}")
        text = "null" if self.fit is None else self.fit.to_json()
        (cache_dir / f"{step_name}_fit.json").write_text(text + "\n", encoding="utf-8")

    @classmethod
    def _cache_load(cls, cache_dir: Path, step_name: str) -> "DtiResult":
        """Cache protocol: a `DtiResult` of lazy `NiftiVolumeResource` maps and its record."""
        text = (cache_dir / f"{step_name}_fit.json").read_text(encoding="utf-8").strip()
        maps = {
            name: VolumeResource._cache_load(cache_dir, f"{step_name}_{name}") for name in _MAPS
        }
        return cls(**maps, fit=None if text == "null" else FitRecord.from_json(text))


_MAPS = tuple(f.name for f in dataclasses.fields(DtiResult) if f.name != "fit")
"""The names of `DtiResult`'s maps, in attribute order."""

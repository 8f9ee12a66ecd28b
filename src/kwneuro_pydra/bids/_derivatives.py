"""Write BIDS-Derivatives: named links to cache entries, JSON sidecars, the dataset description."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from kwneuro_pydra._filedigest import carry_over
from kwneuro_pydra._files import (
    UnsafeFileError,
    open_new,
    read_regular,
    temporary_name,
    write_atomic,
)
from kwneuro_pydra.bids._discover import DwiSeries

__all__ = [
    "DERIVATIVES",
    "Derivative",
    "derivative_path",
    "no_link_under",
    "place",
    "stale_temporaries",
    "write_dataset_description",
    "write_derivatives",
    "write_json",
]

_LINK_FAILURES = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES}


@attrs.frozen
class Derivative:
    """How one output of the pipeline is named in the derivatives.

    Attributes:
        output: The pipeline's output (a result attribute name, e.g. ``fa``).
        entities: What follows the source entities, e.g. ``model-tensor_param-fa_dwimap``.
        description: The sidecar's ``Description``.
        units: The sidecar's ``Units``, or "" when the map has none.
        sidecar: More sidecar fields (the mask's ``Type``).
        oriented: The map holds vectors or a tensor: its sidecar states their frame.
    """

    output: str
    entities: str
    description: str
    units: str = ""
    sidecar: Mapping[str, Any] = attrs.field(factory=dict)
    oriented: bool = False


def _tensor(
    param: str, description: str, units: str = "", *, oriented: bool = False
) -> Derivative:
    entities = f"model-tensor_param-{param.replace('_', '')}_dwimap"
    return Derivative(param, entities, description, units, oriented=oriented)


FRAMES = {
    "bvec": "The frame of the b-vectors, as dipy gives it: FSL's convention, the image's voxel "
    "axes with the first axis mirrored when the affine's determinant is positive. World "
    "(scanner RAS+) vectors are R @ F @ v, R the affine's rotation, F = diag(-1, 1, 1) for a "
    "positive determinant and the identity otherwise.",
    "world": "World (scanner, RAS+) coordinates, as MRtrix gives them: x left to right, y "
    "posterior to anterior, z inferior to superior.",
}
"""The sidecars' ``CoordinateFrame`` of oriented maps, by `estimate_dti`'s ``frame``."""

UNFITTED = (
    "0 outside the brain mask; NaN inside it where the tensor could not be fitted (a NaN, "
    "infinite or no positive sample), counted in UnfittedVoxels"
)
"""The sidecars' ``UnfittedValue`` of the tensor maps."""

DERIVATIVES: tuple[Derivative, ...] = (
    Derivative(
        "mask",
        "desc-brain_mask",
        "Brain mask (1 inside the brain)",
        sidecar={"Type": "Brain"},
    ),
    _tensor("fa", "Fractional anisotropy of the diffusion tensor"),
    _tensor("md", "Mean diffusivity: the mean eigenvalue of the tensor", "mm^2/s"),
    _tensor("ad", "Axial diffusivity: the largest eigenvalue of the tensor", "mm^2/s"),
    _tensor("rd", "Radial diffusivity: the mean of the two smaller eigenvalues", "mm^2/s"),
    _tensor("s0", "Signal at b=0 estimated by the tensor fit", "arbitrary"),
    _tensor(
        "tensor",
        "The tensor's six elements (4th axis) in dipy's order Dxx, Dxy, Dyy, Dxz, Dyz, Dzz",
        "mm^2/s",
        oriented=True,
    ),
    _tensor("evals", "Eigenvalues in descending order (4th axis)", "mm^2/s"),
    _tensor(
        "evecs", "Eigenvectors as columns (axes 4 and 5: component, eigenvector)", oriented=True
    ),
    _tensor(
        "color_fa",
        "Colour FA: |principal eigenvector in world axes| x FA, RGB in [0, 1] (4th axis): red "
        "left-right, green anterior-posterior, blue inferior-superior",
    ),
)
"""Pipeline output -> BIDS-Derivatives name (BEP016 for model maps); one line per map."""


def place(source: Path, target: Path) -> None:
    """Make ``target`` a hard link to ``source`` (a copy across file systems), atomically.

    A reader of ``target`` sees the old file or the new one, never a partial one; nothing is
    done when ``target`` already is ``source``, or a copy of it (same size and modification
    time: a cached rerun into another file system copies nothing again). The memoised digest
    of ``source`` is kept across the link (see `kwneuro_pydra._filedigest.carry_over`; on
    disk inside a `Cache`).

    Args:
        source: An existing file (a cache entry's output).
        target: The derivative's path; its folder is created.

    Raises:
        UnsafeFileError: ``target`` is a symbolic link (refused, never followed).
        OSError: Neither a link nor a copy could be made.
    """
    with contextlib.suppress(OSError):
        if os.path.samefile(source, target) or _copied(source, target):
            return
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        raise UnsafeFileError(target)
    temporary = temporary_name(target)
    made = os.stat(source)
    before: os.stat_result | None = made
    try:
        try:
            os.link(source, temporary)  # a new name: fails on anything planted there
        except OSError as error:
            if error.errno not in _LINK_FAILURES:
                raise
            with open(source, "rb") as reading, os.fdopen(open_new(temporary), "wb") as copy:
                shutil.copyfileobj(reading, copy)
            os.utime(temporary, ns=(made.st_atime_ns, made.st_mtime_ns))  # see _copied
            before = None
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    if before is not None:  # the link changed the entry file's ctime, not its bytes
        carry_over(source, before)


def no_link_under(root: Path, folder: str | Path) -> None:
    """Refuse a symbolic link at any folder of ``folder`` under ``root`` (``sub-01``,
    ``sub-01/dwi``): a link planted by someone who can write ``root`` would make this
    process write where it points. ``root`` itself may be a link (the user's choice).

    Args:
        root: The derivatives folder (OUTPUT_DIR).
        folder: A folder relative to it; it need not exist.

    Raises:
        UnsafeFileError: One of its folders is a symbolic link (named; not followed).
    """
    path = root
    for part in Path(folder).parts:
        path = path / part
        if path.is_symlink():
            raise UnsafeFileError(path, "a symbolic link in place of a folder")


def _copied(source: Path, target: Path) -> bool:
    """True when ``target`` is a copy `place` made of ``source``: a regular file of its size
    and modification time (which the copy takes; a cache entry's files never change).
    """
    made, copy = os.stat(source), os.lstat(target)
    return stat.S_ISREG(copy.st_mode) and (copy.st_size, copy.st_mtime_ns) == (
        made.st_size,
        made.st_mtime_ns,
    )


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path``, atomically; untouched when it is equal.

    Args:
        path: The file; its folder is created.
        data: JSON-serialisable mapping.

    Raises:
        UnsafeFileError: ``path`` is a symbolic link (refused, never followed).
        OSError: The file cannot be written (the error names it and the cause).
    """
    _write_bytes(path, _text(data))


TEMPORARY_AGE = 3600.0
"""Seconds after which a temporary file in a derivatives folder counts as left by a crash."""

_TEMPORARY = re.compile(r"\..+\.(?:[0-9a-f]{16}|[0-9a-f]{32})\.tmp")
"""`temporary_name`'s names (and the 32-hex ones of earlier versions)."""


def stale_temporaries(output_dir: Path) -> list[Path]:
    """The temporary files (hard links to cache entries, JSON, pages) that killed runs left
    in a derivatives folder, made more than `TEMPORARY_AGE` seconds ago.

    Hidden folders (the cache inside the folder) are not searched. Age is the inode's
    change time, which linking sets (a hard link keeps its entry file's modification time).

    Args:
        output_dir: A derivatives folder (OUTPUT_DIR).

    Returns:
        The files, to remove with ``unlink``.
    """
    cutoff = time.time() - TEMPORARY_AGE
    found = []
    for folder, subfolders, files in os.walk(output_dir):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in files:
            path = Path(folder, name)
            if _TEMPORARY.fullmatch(name) and _changed_before(path, cutoff):
                found.append(path)
    return sorted(found)


def _changed_before(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_ctime < cutoff
    except OSError:  # gone meanwhile
        return False


def _text(data: Mapping[str, Any]) -> bytes:
    """The bytes `write_json` writes for ``data``."""
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8")


def write_dataset_description(
    output_dir: Path, bids_dir: Path, *, version: str, source_name: str | None = None
) -> Path:
    """Write ``OUTPUT_DIR/dataset_description.json`` of a derivative dataset, its README and
    its ``.bidsignore`` (the report's pages and figures, the QC table).

    Args:
        output_dir: The derivatives folder.
        bids_dir: The source dataset.
        version: kwneuro-pydra's version (``GeneratedBy``).
        source_name: The source dataset's ``Name``, if it has one.

    Returns:
        The file written.
    """
    path = output_dir / "dataset_description.json"
    raw = bids_dir.absolute().as_uri()
    write_json(
        path,
        {
            "Name": f"kwneuro-pydra DTI derivatives of {source_name or bids_dir.name}",
            "BIDSVersion": "1.10.0",
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": "kwneuro-pydra",
                    "Version": version,
                    "Description": "Diffusion tensor maps and brain masks, with a visual report",
                }
            ],
            "SourceDatasets": [{"URL": raw}],
            "DatasetLinks": {"raw": raw},
        },
    )
    _write_bytes(output_dir / ".bidsignore", BIDSIGNORE.encode())
    _write_bytes(
        output_dir / "README.md", README.format(source=source_name or bids_dir.name).encode()
    )
    return path


BIDSIGNORE = """\
# The visual report's pages and the subjects' figures, and the group's QC table, are not
# BIDS files (see README.md). The group's figure (docs/) and the run's options record
# (logs/) are in folders BIDS reserves, which the validator does not look inside.
/*.html
sub-*/figures
/group_*
"""
"""``OUTPUT_DIR/.bidsignore``: what the BIDS validator is not to check."""

README = """\
# kwneuro-pydra DTI derivatives of {source}

Diffusion tensor maps and brain masks of every DWI series of the source dataset, written by
kwneuro-pydra (`kwneuro-pydra run`), with a visual report.

- `sub-<label>/[ses-<label>/]dwi/`: the brain mask (`desc-brain_mask`) and the tensor maps
  named after BEP016 (`model-tensor_param-<fa|md|ad|rd|s0|tensor|evals|evecs|colorfa>_dwimap`),
  each with a JSON sidecar: description, units, the fit's method, shells fitted and left
  out, unfitted voxels, warnings, and the run's parameters.
- Values: 0 outside the brain mask; NaN inside it where the tensor could not be fitted (a
  NaN, infinite or no positive sample). Diffusivities in mm^2/s.
- Frames: eigenvectors and the tensor are in the frame of the b-vectors (dipy's: FSL's
  convention, voxel axes with the first mirrored for a positive-determinant affine) unless
  the sidecar's `CoordinateFrame` says world; colour FA is in world axes (red left-right,
  green anterior-posterior, blue inferior-superior).
- `report.html`, `sub-<label>.html`, `sub-<label>/figures/`, `docs/figures/`: the visual
  report; `group_desc-qc_dwi.tsv`: its numbers per series (these are listed in
  `.bidsignore`); `logs/`: the last run's options (`kwneuro-pydra-options.json`) and
  Pydra's job folders.
"""
"""``OUTPUT_DIR/README.md`` (``{source}``: the source dataset's name)."""


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; untouched when it already holds the same."""
    with contextlib.suppress(OSError):
        if read_regular(path) == data:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


def derivative_path(
    series: DwiSeries, output_dir: Path, output: str, extension: str = ".nii.gz"
) -> Path:
    """Where `write_derivatives` puts one output of a series.

    Args:
        series: The source series.
        output_dir: The derivatives folder.
        output: A `DERIVATIVES` output name (``mask``, ``fa``, ``md`` ...).
        extension: The file's extension.

    Returns:
        ``OUTPUT_DIR/sub-<label>/[ses-<label>/]dwi/<source entities>_<entities><extension>``.

    Raises:
        KeyError: ``output`` is not in `DERIVATIVES`.
    """
    row = next((row for row in DERIVATIVES if row.output == output), None)
    if row is None:
        raise KeyError(f"no derivative named {output!r}")
    return output_dir / series.directory / f"{series.name}_{row.entities}{extension}"


def write_derivatives(
    series: DwiSeries,
    outputs: Mapping[str, Any],
    output_dir: Path,
    *,
    parameters: Mapping[str, Any],
    fit: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Link a series' outputs into ``output_dir`` under BIDS-Derivatives names, with sidecars.

    For each `DERIVATIVES` row whose output is present in ``outputs`` (an object with a
    ``path``, e.g. a `NiftiVolumeResource` served from the cache):
    ``OUTPUT_DIR/sub-<label>/[ses-<label>/]dwi/<source entities>_<entities>.nii.gz`` and a
    ``.json`` sidecar beside it. An image and its sidecar never disagree, whenever the
    writer is killed: when the sidecar changes (other parameters), the old image is removed
    first, the sidecar written, then the new image linked (a kill leaves the image missing
    until the next run, never an image beside another run's sidecar).
    The sidecars of the tensor maps say what the fit did
    (``fit``: shells fitted and left out, unfitted voxels, warnings), what unfitted voxels
    hold, and, for eigenvectors and the tensor, their coordinate frame.

    Args:
        series: The source series.
        outputs: Output name -> file-backed result.
        output_dir: The derivatives folder.
        parameters: The pipeline's options, recorded in every sidecar.
        fit: The fit's record as a mapping (``dataclasses.asdict(DtiResult.fit)``), or None.

    Returns:
        The derivative image files written or refreshed.

    Raises:
        UnsafeFileError: A folder of the series' derivatives (``sub-<label>``, ``dwi``...)
            or a file to write is a symbolic link (refused, never followed: see
            `no_link_under`).
        OSError: A file cannot be written (the error names it).
    """
    no_link_under(output_dir, series.directory)
    written = []
    for row in DERIVATIVES:
        if row.output not in outputs:
            continue
        source = Path(outputs[row.output].path)
        extension = ".nii.gz" if source.name.endswith(".nii.gz") else source.suffix
        target = derivative_path(series, output_dir, row.output, extension)
        sidecar: dict[str, Any] = {
            "Description": row.description,
            "Sources": [f"bids:raw:{series.source}"],
        }
        if row.units:
            sidecar["Units"] = row.units
        sidecar.update(row.sidecar)
        if row.output == "mask":  # in the DWI's space (no space entity): name the image
            sidecar["SpatialReference"] = f"bids:raw:{series.source}"
        else:
            sidecar.update(_fit_fields(fit, oriented=row.oriented))
        sidecar["Parameters"] = dict(parameters)
        json_path = target.with_name(target.name.removesuffix(extension) + ".json")
        with contextlib.suppress(OSError):
            if read_regular(json_path) != _text(sidecar):
                target.unlink(missing_ok=True)  # never the old image beside the new sidecar
        write_json(json_path, sidecar)
        place(source, target)
        written.append(target)
    return written


def _fit_fields(fit: Mapping[str, Any] | None, *, oriented: bool) -> dict[str, Any]:
    """The sidecar fields of a tensor map: unfitted voxels, frame, and the fit's record."""
    fields: dict[str, Any] = {"UnfittedValue": UNFITTED}
    if oriented:
        fields["CoordinateFrame"] = FRAMES[fit["frame"] if fit else "bvec"]
    if fit:
        shells = [{"BValue": b, "Volumes": n} for b, n in fit["shells"]]
        fields.update(
            FitMethod=fit["method"],
            B0Volumes=fit["b0_volumes"],
            ShellsFitted=shells,
            ShellsLeftOut=[{"BValue": b, "Volumes": n} for b, n in fit["left_out"]],
            UnfittedVoxels=fit["unfitted"],
            Warnings=list(fit["notes"]),
        )
    return fields

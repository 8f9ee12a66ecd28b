"""The demo: a BIDS dataset of phantoms written beside its derivatives, and the maps' error
against the phantoms' ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import numpy as np

from kwneuro_pydra._files import read_regular
from kwneuro_pydra.app._errors import BidsError
from kwneuro_pydra.app._folders import writable_folder
from kwneuro_pydra.bids import derivative_path, discover
from kwneuro_pydra.resources import NiftiVolumeResource

__all__ = ["Accuracy", "demo_accuracy", "write_demo"]


def write_demo(output: Path, subjects: int) -> tuple[Path, Path]:
    """Write the demo dataset to ``OUTPUT/bids`` (existing phantoms reused).

    Args:
        output: The demo's folder.
        subjects: Phantom subjects.

    Returns:
        The dataset (``OUTPUT/bids``) and the derivatives folder (``OUTPUT/derivatives``).

    Raises:
        BidsError: ``output`` already holds a dataset the demo did not write (``OUTPUT``,
            ``OUTPUT/bids`` or ``OUTPUT/derivatives`` has a ``dataset_description.json``
            that is not the demo's): the demo never writes into it.
        AppError: ``output`` cannot be made or written.
    """
    from kwneuro_pydra.workflows.demo import DEMO_NAME, write_demo_dataset

    output = output.absolute()
    derived = f"kwneuro-pydra DTI derivatives of {DEMO_NAME}"
    written = [(output, None), (output / "bids", DEMO_NAME), (output / "derivatives", derived)]
    for folder, name in written:
        description = folder / "dataset_description.json"
        if not description.exists():
            continue
        try:
            found = json.loads(read_regular(description)).get("Name")
        except (OSError, ValueError, AttributeError):
            found = None
        if name is None or found != name:
            raise BidsError(
                f"OUTPUT {output} already holds a dataset the demo did not write "
                f"({description}): choose a new folder for the demo"
            )
    output = writable_folder(output, "OUTPUT")
    return write_demo_dataset(output / "bids", subjects=subjects), output / "derivatives"


@attrs.frozen
class Accuracy:
    """A demo series' maps against its phantom's ground truth (tissue inside the mask).

    Attributes:
        series: The series' name.
        voxels: Tissue voxels in the brain mask.
        fa_error: Median absolute FA error.
        md_error: Median relative MD error.
    """

    series: str
    voxels: int
    fa_error: float
    md_error: float


def demo_accuracy(bids_dir: Path, derivatives: Path, subjects: int) -> list[Accuracy]:
    """Each demo series' FA and MD error against its phantom's ground truth.

    Args:
        bids_dir: The demo dataset.
        derivatives: Its derivatives folder.
        subjects: As given to `write_demo`.

    Returns:
        One `Accuracy` per series that has derivatives (a failed series has none).
    """
    from kwneuro_pydra.workflows.demo import demo_truths

    truths = demo_truths(subjects)
    found = []
    for series in discover(bids_dir):
        paths = [derivative_path(series, derivatives, name) for name in ("mask", "fa", "md")]
        if series.name not in truths or not all(path.is_file() for path in paths):
            continue
        truth = truths[series.name]
        mask, fa, md = (NiftiVolumeResource(path).get_array() for path in paths)
        inside = (mask > 0) & (truth.labels > 0)
        fa_error = np.abs(fa[inside] - truth.fa[inside])
        md_error = np.abs(md[inside] - truth.md[inside]) / truth.md[inside]
        found.append(
            Accuracy(
                series.name,
                int(inside.sum()),
                float(np.median(fa_error)),
                float(np.median(md_error)),
            )
        )
    return found

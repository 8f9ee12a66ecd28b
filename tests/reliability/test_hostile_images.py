"""Images built to exhaust memory are refused by name, in bounded memory: a gzip stream that
inflates far beyond what its NIfTI header declares (a gzip bomb), and a header declaring
more voxels than the machine holds."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from nibabel.nifti1 import Nifti1Header

from tests.reliability._system import run_python

_READ = """
import json, resource
from kwneuro_pydra.resources import NiftiVolumeResource
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    shape = NiftiVolumeResource({path!r}).get_array().shape
    outcome = f"read {{shape}}"
except Exception as error:
    outcome = f"{{type(error).__name__}}: {{error}}"
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({{"outcome": outcome, "grown_mib": grown / 1024}}))
"""


def _nifti_gz(path: Path, shape: tuple[int, ...], *, voxels: int, padding: int = 0) -> Path:
    """A ``.nii.gz`` whose header declares ``shape`` (float32), holding ``voxels`` voxels
    and then ``padding`` zero bytes, compressed in chunks (never all in memory)."""
    header = Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_data_offset(352)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    with path.open("wb") as out:
        out.write(compressor.compress(header.binaryblock + bytes(4)))
        out.write(compressor.compress(np.ones(voxels, np.float32).tobytes()))
        chunk = bytes(1 << 24)
        for _ in range(padding // len(chunk)):
            out.write(compressor.compress(chunk))
        out.write(compressor.flush())
    return path


def test_a_gzip_bomb_is_refused_without_inflating_it(tmp_path: Path) -> None:
    bomb = 1 << 30  # 1 GiB of zeros after the 4 KB the header declares: ~1 MB compressed
    path = _nifti_gz(tmp_path / "bomb.nii.gz", (10, 10, 10), voxels=1000, padding=bomb)
    assert path.stat().st_size < 4 << 20
    report = run_python(_READ.format(path=str(path)), timeout=120)
    assert report["outcome"].startswith("ResourceFileError"), report
    assert str(path) in report["outcome"] and "more than the 4352 bytes" in report["outcome"]
    assert report["grown_mib"] < 64, f"inflated the bomb: {report}"


def test_a_header_declaring_too_many_voxels_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = _nifti_gz(tmp_path / "huge.nii.gz", (32767, 32767, 32767, 32), voxels=1000)
    report = run_python(_READ.format(path=str(path)), timeout=60)
    outcome = report["outcome"]
    assert outcome.startswith("ResourceFileError"), report
    assert str(path) in outcome and "32767x32767x32767x32 voxels" in outcome, outcome
    assert "KWNEURO_PYDRA_MAX_IMAGE_MB" in outcome

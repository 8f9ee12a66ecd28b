"""Files the app reads that are not regular files (FIFOs, devices) fail at once, naming
themselves; nothing blocks. Each case runs in a child process with a timeout, so the old
behaviour (a hang) fails the test instead of hanging it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kwneuro_pydra.bids import BidsError, discover
from tests.bids_data import good_dataset
from tests.reliability._system import run_python

_READERS = """
import json, os
from pathlib import Path
from kwneuro_pydra.resources import FslBvalResource, FslBvecResource, NiftiVolumeResource
from kwneuro_pydra.bids import write_json
d = Path({folder!r})
os.mkfifo(d / "dwi.bval")
os.mkfifo(d / "dwi.bvec")
os.mkfifo(d / "dwi.nii.gz")
os.symlink("/dev/zero", d / "zero.nii.gz")
os.mkfifo(d / "derivative.json")
out = {{}}
for name, read in [
    ("bval", lambda: FslBvalResource(d / "dwi.bval").get()),
    ("bvec", lambda: FslBvecResource(d / "dwi.bvec").get()),
    ("fifo image", lambda: NiftiVolumeResource(d / "dwi.nii.gz").get_array()),
    ("device image", lambda: NiftiVolumeResource(d / "zero.nii.gz").get_array()),
    ("derivative sidecar", lambda: write_json(d / "derivative.json", {{"a": 1}})),
]:
    try:
        read()
        out[name] = "done"
    except Exception as error:
        out[name] = f"{{type(error).__name__}}: {{error}}"
out["sidecar"] = json.loads((d / "derivative.json").read_text())
print(json.dumps(out))
"""


def test_fifos_and_devices_as_inputs_fail_at_once_naming_them(tmp_path: Path) -> None:
    out = run_python(_READERS.format(folder=str(tmp_path)), timeout=30)
    for name, file, kind in [
        ("bval", tmp_path / "dwi.bval", "a FIFO"),
        ("bvec", tmp_path / "dwi.bvec", "a FIFO"),
        ("fifo image", tmp_path / "dwi.nii.gz", "a FIFO"),
        ("device image", Path("/dev/zero"), "a character device"),  # the link, resolved
    ]:
        assert out[name].startswith("ResourceFileError"), out[name]
        assert str(file) in out[name] and kind in out[name], out[name]
    # A FIFO where a derivative's sidecar goes is replaced by the sidecar.
    assert out["derivative sidecar"] == "done" and out["sidecar"] == {"a": 1}


@pytest.mark.parametrize(
    "record", ["logs/kwneuro-pydra-options.json", "kwneuro-pydra-options.json"]
)  # where it is written, and where earlier versions wrote it
def test_fifos_at_the_apps_records_fail_status_or_are_ignored_never_hang(
    tmp_path: Path, record: str
) -> None:
    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    out, work = tmp_path / "out", tmp_path / "out" / ".kwneuro-cache"
    work.mkdir(parents=True)
    (out / "logs").mkdir()
    os.mkfifo(out / record)
    os.mkfifo(work / "last-run.json")
    command = [sys.executable, "-m", "kwneuro_pydra.cli", "status", str(bids_dir), str(out)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"}
    )
    assert done.returncode == 0, done.stderr
    assert str(out / record) in done.stderr
    assert "not a regular file (a FIFO)" in done.stderr
    assert "sub-01" in done.stdout


def test_a_fifo_as_the_dataset_description_is_named_not_opened(tmp_path: Path) -> None:
    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    (bids_dir / "dataset_description.json").unlink()
    os.mkfifo(bids_dir / "dataset_description.json")
    with pytest.raises(BidsError, match=r"its dataset_description\.json is a FIFO"):
        discover(bids_dir)


_JOB_RECORD = """
import json, os
from pathlib import Path
from kwneuro_pydra.pydra import job_record, recorded_jobs
from kwneuro_pydra.pydra._slurm import read_record
record = job_record(Path({folder!r}))
record.parent.mkdir()
os.mkfifo(record)
out = {{}}
for name, read in [("jobs", recorded_jobs), ("record", read_record)]:
    try:
        out[name] = str(read(record))
    except Exception as error:
        out[name] = f"{{type(error).__name__}}: {{error}}"
print(json.dumps(out))
"""


def test_a_fifo_at_the_slurm_job_record_is_named_never_read(tmp_path: Path) -> None:
    """Another member of a shared cache's group plants a FIFO at ``.logs/slurm-jobs.tsv``:
    reading the record (a Slurm run, ``status OUTPUT_DIR``, ``cancel``) fails naming it
    at once instead of blocking for good."""
    out = run_python(_JOB_RECORD.format(folder=str(tmp_path)), timeout=30)
    record = tmp_path / ".logs" / "slurm-jobs.tsv"
    for name in ("jobs", "record"):
        assert out[name].startswith("NotRegularFileError"), out[name]
        assert str(record) in out[name] and "a FIFO" in out[name], out[name]

"""The app's records (``last-run.json``, JSON sidecars) are replaced whole or not at all: a
full disk keeps the old record and says which file and why; a record another member of a
shared folder made is replaced, not a reason to stop."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from kwneuro_pydra.app._series import RECORD, Unit, recording
from kwneuro_pydra.bids import DwiSeries, write_json
from tests.reliability._system import fill, require_root, run_python


def write_record(work: Path, units: list[Unit]) -> None:
    """Add ``units`` to the run record in ``work`` (as a run of the app does)."""
    with recording(work, units):
        pass


def _failed(name: str) -> Unit:
    root = Path("/data")
    series = DwiSeries(
        root, {"sub": name}, root / f"sub-{name}/dwi/sub-{name}_dwi.nii.gz", None, None
    )
    return Unit(series, failure=f"{name} failed", failed_step="mean_b0")


def test_a_record_on_a_full_disk_keeps_its_old_content_and_the_error_names_it(
    tmpfs: Callable[..., Path],
) -> None:
    work = tmpfs(256)
    write_record(work, [_failed("01")])
    before = (work / RECORD).read_bytes()
    write_json(work / "sidecar.json", {"Parameters": {"run": "a"}})
    filler = fill(work)
    many = [_failed(f"{n:04}") for n in range(2000)]  # more than a block
    with pytest.raises(OSError, match="No space left on device") as full:
        write_record(work, many)
    assert full.value.filename == str(work / RECORD)
    assert str(work / RECORD) in str(full.value)
    assert (work / RECORD).read_bytes() == before, "the earlier failures are kept"
    with pytest.raises(OSError, match="No space left on device"):
        write_json(work / "sidecar.json", {"Parameters": {"run": "b" * 100_000}})
    assert json.loads((work / "sidecar.json").read_text()) == {"Parameters": {"run": "a"}}
    names = [RECORD, f"{RECORD}.lock", "sidecar.json", "filler"]
    assert sorted(p.name for p in work.iterdir()) == sorted(names)
    filler.unlink()


def test_a_record_another_member_made_is_replaced(shared_dir: Path) -> None:
    require_root("shares a folder with user nobody")
    work = shared_dir / "work"
    work.mkdir()
    shutil.chown(work, group="nogroup")
    work.chmod(0o2775)
    write_record(work, [_failed("01")])  # root's record, mode 644: nobody cannot write it
    code = f"""
import json
from pathlib import Path
from kwneuro_pydra.app._series import recording
from tests.reliability.test_records import _failed
with recording(Path({str(work)!r}), [_failed("02")]) as record:
    print(json.dumps(sorted(record)))
"""
    assert run_python(code, as_nobody=True) == ["sub-01", "sub-02"]
    assert (work / RECORD).stat().st_uid != 0, "nobody's record replaced root's"

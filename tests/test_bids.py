"""BIDS discovery (bids2table, inheritance) and derivatives writing (names, links, sidecars,
the names of earlier versions)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kwneuro_pydra.app import app_status
from kwneuro_pydra.app._options import LEGACY_OPTIONS_FILE, OPTIONS_FILE
from kwneuro_pydra.bids import BidsError, SeriesError, discover, place, write_json
from kwneuro_pydra.cli import main
from kwneuro_pydra.report import GROUP_FIGURE
from tests._audit import watching
from tests.bids_data import MASK, add_series, bare_dataset, good_dataset


def test_every_dwi_series_is_a_unit_with_its_b_table_by_inheritance(tmp_path: Path) -> None:
    root = bare_dataset(tmp_path / "ds")
    add_series(root, "sub-01_run-1")
    add_series(root, "sub-01_run-2", table=None)  # inherits the subject-level table below
    add_series(root, "sub-02_ses-a_acq-hi", table=None)  # inherits the dataset-level table
    add_series(root, "sub-02_ses-b_acq-lo")
    add_series(root, "sub-02_ses-a", folder="anat")  # not a DWI folder
    (root / "sub-01" / "dwi" / "sub-01_dwi.bval").write_text("0 1000\n")
    (root / "sub-01" / "dwi" / "sub-01_dwi.bvec").write_text("0 1\n0 0\n0 0\n")
    (root / "dwi.bval").write_text("0\n")
    (root / "dwi.bvec").write_text("0\n0\n0\n")
    (root / "acq-lo_dwi.bval").write_text("0\n")  # does not apply to acq-hi

    series = {s.name: s for s in discover(root)}

    assert sorted(series) == [
        "sub-01_run-1",
        "sub-01_run-2",
        "sub-02_ses-a_acq-hi",
        "sub-02_ses-b_acq-lo",
    ]
    assert series["sub-01_run-1"].bval == root / "sub-01/dwi/sub-01_run-1_dwi.bval"
    assert series["sub-01_run-2"].bval == root / "sub-01/dwi/sub-01_dwi.bval"
    assert series["sub-02_ses-a_acq-hi"].bval == root / "dwi.bval"
    assert series["sub-02_ses-a_acq-hi"].bvec == root / "dwi.bvec"
    own = root / "sub-02/ses-b/dwi/sub-02_ses-b_acq-lo_dwi.bval"
    assert series["sub-02_ses-b_acq-lo"].bval == own
    assert series["sub-02_ses-a_acq-hi"].directory == Path("sub-02/ses-a/dwi")
    assert series["sub-02_ses-a_acq-hi"].session == "a"


def test_participants_and_sessions_select_with_or_without_prefix(tmp_path: Path) -> None:
    root = good_dataset(tmp_path / "ds")
    names = [s.name for s in discover(root, participants=["sub-02", "03"])]
    assert names == ["sub-02_ses-1", "sub-02_ses-2", "sub-03"]
    assert [s.name for s in discover(root, participants=["02"], sessions=["ses-2"])] == [
        "sub-02_ses-2"
    ]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "no dataset_description.json"),
    ],
)
def test_an_unusable_dataset_is_a_clear_error(tmp_path: Path, setup, message: str) -> None:  # type: ignore[no-untyped-def]
    setup(tmp_path / "ds")
    with pytest.raises(BidsError, match=message):
        discover(tmp_path / "ds")


def test_an_unknown_participant_lists_those_that_exist(tmp_path: Path) -> None:
    root = good_dataset(tmp_path / "ds")
    with pytest.raises(BidsError, match=r"no participant 07 .*found: 01, 02, 03\)"):
        discover(root, participants=["01", "sub-07"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"table": None}, r"no \.bval or \.bvec file applies"),
        ({"table": 9}, "counts disagree: volume has 8 diffusion volumes"),
        ({"three_d": True}, "must be 4-D"),
    ],
)
def test_a_series_that_cannot_load_names_its_file(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    root = bare_dataset(tmp_path / "ds")
    add_series(root, "sub-01", **kwargs)  # type: ignore[arg-type]
    (series,) = discover(root)
    with pytest.raises(SeriesError, match=message) as raised:
        series.load()
    assert "sub-01/dwi/sub-01_dwi.nii.gz" in str(raised.value)


def test_an_unreadable_nifti_is_a_series_error(tmp_path: Path) -> None:
    root = bare_dataset(tmp_path / "ds")
    image = add_series(root, "sub-01")
    image.write_bytes(b"not a nifti at all")
    (series,) = discover(root)
    with pytest.raises(SeriesError, match=r"sub-01_dwi\.nii\.gz"):
        series.load()


def test_place_links_then_replaces_without_touching_the_old_file(tmp_path: Path) -> None:
    first, second, target = tmp_path / "a", tmp_path / "b", tmp_path / "out" / "t.nii.gz"
    first.write_text("first")
    second.write_text("second")
    place(first, target)
    assert os.path.samefile(first, target)
    place(first, target)  # already in place: nothing to do
    place(second, target)
    assert os.path.samefile(second, target)
    assert first.read_text() == "first"  # the entry it linked to is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["t.nii.gz"]  # no leftovers


def test_place_never_lets_the_derivatives_name_go_missing(tmp_path: Path) -> None:
    """Before every rename, removal and link (an audit hook runs first), the target exists."""
    old, new, target = tmp_path / "old.nii.gz", tmp_path / "new.nii.gz", tmp_path / "d" / "t"
    old.write_bytes(b"old bytes")
    new.write_bytes(b"new bytes")
    place(old, target)
    seen: list[tuple[str, bool]] = []

    def check(event: str, args: tuple[Any, ...]) -> None:
        if event in ("os.rename", "os.remove", "os.link"):
            seen.append((event, target.exists()))

    with watching(check):
        place(new, target)
    assert ("os.rename", True) in seen  # the replacement itself was audited
    assert all(exists for _, exists in seen), seen
    assert target.read_bytes() == b"new bytes" and old.read_bytes() == b"old bytes"


def test_place_copies_across_file_systems(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system to copy across")
    source = tmp_path / "entry.nii.gz"
    source.write_bytes(b"voxels")
    target = Path(os.environ.get("TMPDIR_SHM", shm)) / f"kwneuro-test-{os.getpid()}" / "t"
    try:
        place(source, target)
        assert target.read_bytes() == b"voxels"
        assert not os.path.samefile(source, target)
    finally:
        target.unlink(missing_ok=True)
        target.parent.rmdir()


def test_write_json_leaves_an_equal_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_json(path, {"a": 1})
    before = path.stat().st_ino, path.stat().st_mtime_ns
    write_json(path, {"a": 1})
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == before
    write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}


def test_participants_are_the_subject_folders_and_participants_tsv(tmp_path: Path) -> None:
    from kwneuro_pydra.bids import participants_of

    root = good_dataset(tmp_path / "bids", subjects=2)
    (root / "sub-07" / "anat").mkdir(parents=True)  # anatomy only
    (root / "participants.tsv").write_text("age\tparticipant_id\n30\tsub-01\n31\tsub-09\n")
    assert participants_of(root) == ["01", "02", "07", "09"]
    assert [s.subject for s in discover(root, participants=["07", "09"])] == []  # known, no DWI


def test_a_file_name_that_is_not_utf8_fails_only_its_subjects_series(tmp_path: Path) -> None:
    root = good_dataset(tmp_path / "bids", subjects=3)
    (root / "sub-03" / "anat").mkdir()
    odd = os.fsencode(root / "sub-03" / "anat") + b"/sub-03_T1w\xff.nii.gz"
    Path(os.fsdecode(odd)).write_bytes(b"")
    found = {s.name: s for s in discover(root)}
    assert sorted(found) == ["sub-01", "sub-02_ses-1", "sub-02_ses-2", "sub-03"]
    assert found["sub-01"].problem is None and found["sub-01"].load() is not None
    with pytest.raises(SeriesError, match=r"sub-03/anat/sub-03_T1w\\xff.nii.gz: a file name"):
        found["sub-03"].load()


def test_an_output_folder_of_an_earlier_version_keeps_working(tmp_path: Path) -> None:
    """Up to 0.1.0 the options record and the group's figure were at names the BIDS
    validator reports (``kwneuro-pydra-options.json``, ``figures/group_desc-...``). status
    reads the old record while the new one is absent; the next run moves both."""
    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    out = tmp_path / "out"
    run = ["run", str(bids_dir), str(out), "participant", "--worker", "debug", "-q", *MASK]
    assert main([*run, "--fit-method", "OLS"]) == 0
    # what an earlier version left: both files at their old names
    (out / OPTIONS_FILE).rename(out / LEGACY_OPTIONS_FILE)
    (out / "figures").mkdir()
    (out / GROUP_FIGURE).rename(out / "figures" / "group_desc-distributions_dwi.png")

    status = app_status(bids_dir, out)
    assert status.parameters["fit_method"] == "OLS"  # the old record's, not the default WLS
    assert f"recorded in {out / LEGACY_OPTIONS_FILE}" in status.options
    assert {s for series in status.series for s in series.states.values()} == {"cached"}

    assert main([*run, "--fit-method", "OLS"]) == 0
    assert json.loads((out / OPTIONS_FILE).read_text())["Parameters"]["fit_method"] == "OLS"
    assert not (out / LEGACY_OPTIONS_FILE).exists()
    assert not (out / "figures").exists()  # the old figure, and its folder, emptied
    assert f'src="{GROUP_FIGURE}"' in (out / "report.html").read_text()
    assert (out / GROUP_FIGURE).is_file()
    assert f"recorded in {out / OPTIONS_FILE}" in app_status(bids_dir, out).options

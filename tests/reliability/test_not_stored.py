"""The BIDS app where its cache cannot be written, and where a derivative's folder is a link.

A result computed but not stored (another user's entry folders, made under umask 022: user
``nobody``, through ``setpriv`` without capabilities, runs the app in a setgid folder shared
with root) is still the run's: the series succeeds, its derivatives are written from what the
run returned, and the cache's warning, raised in a worker process, reaches the console of the
command. A result that cannot be kept as a file in the job directory either fails its series
plainly. A symbolic link planted at a derivative's folder is refused, never followed.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from kwneuro_pydra.app import AppRun, app_status, run_bids_app
from kwneuro_pydra.app._series import pipeline, read_record
from kwneuro_pydra.cache import NotStoredWarning, cacheable
from kwneuro_pydra.pydra import run_subjects
from tests._pydra_steps import json_spec
from tests.bids_data import MASK, good_dataset
from tests.reliability._system import NOBODY, require_root

PARAMETERS = {"median_radius": 1, "numpass": 1}
"""`MASK` as the app's parameters."""


@cacheable(json_spec("inner_plus_one"))
def inner_plus_one(x: float) -> float:
    """A step another step calls inside its computation."""
    return x + 1


@cacheable(json_spec("outer_doubled"))
def outer_doubled(x: float) -> float:
    """A step calling `inner_plus_one` inside (one node)."""
    return inner_plus_one(x) * 2


def calls_inside(x: float) -> float:
    """A pipeline of one step, which calls another inside."""
    return outer_doubled(x)


@pytest.fixture
def lab(shared_dir: Path) -> Iterator[Path]:
    """A setgid folder writable by the group ``nogroup`` (user nobody's); umask 002."""
    require_root("shares a folder with user nobody")
    folder = shared_dir / "lab"
    folder.mkdir()
    shutil.chown(folder, group="nogroup")
    folder.chmod(0o2775)
    mask = os.umask(0o002)
    try:
        yield folder
    finally:
        os.umask(mask)


def _derivatives(output_dir: Path) -> dict[str, object]:
    """Every derivative under ``sub-*``: images by their voxels, sidecars by their fields."""
    found: dict[str, object] = {}
    for path in sorted(output_dir.glob("sub-*/**/*")):
        name = str(path.relative_to(output_dir))
        if path.name.endswith(".nii.gz"):
            found[name] = np.asanyarray(nib.load(path).dataobj).tolist()
        elif path.suffix == ".json":
            found[name] = json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".png":
            found[name] = path.read_bytes()
    return found


@pytest.mark.parametrize("worker", ["cf", "debug"])
def test_a_result_another_users_folders_cannot_store_is_still_the_runs(
    lab: Path, shared_dir: Path, worker: str
) -> None:
    bids_dir = good_dataset(shared_dir / "bids", subjects=1)
    reference = run_bids_app(
        bids_dir, shared_dir / "reference", worker="debug", parameters=PARAMETERS
    )
    assert reference.ok
    output_dir = lab / "out"
    work = output_dir / ".kwneuro-cache"
    work.mkdir(parents=True)
    os.umask(0o022)  # another user's run made the subject's entry folders
    for step in pipeline().STEPS:
        (work / "sub-01" / step.__name__).mkdir(parents=True)
    os.umask(0o002)
    command = [sys.executable, "-m", "kwneuro_pydra.cli", "run", str(bids_dir), str(output_dir)]
    done = subprocess.run(
        [*NOBODY, "--", *command, "participant", "--worker", worker, *MASK],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
        env={**os.environ, "COLUMNS": "200", "MPLCONFIGDIR": str(lab / "mpl")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 series succeeded, 0 failed." in done.stdout, done.stdout
    console = " ".join(done.stderr.split())  # rich wraps long lines
    for step in pipeline().STEPS:
        assert f"sub-01: step '{step.__name__}': cannot store results in" in console, console
    assert f"Permission denied: {work / 'sub-01' / 'mean_b0' / '.lock'}" in console, console
    assert console.count("cannot store results in") == len(pipeline().STEPS), "once each"
    assert not any(p.is_file() for p in (work / "sub-01").rglob("*")), "nothing was stored"
    written = _derivatives(output_dir)
    assert written == _derivatives(shared_dir / "reference"), "as a normal run writes them"
    assert len([n for n in written if n.endswith(".nii.gz")]) == 10
    assert (output_dir / "sub-01.html").is_file()

    again = run_bids_app(bids_dir, output_dir, worker=worker, parameters=PARAMETERS)
    assert again.ok and {o.state for s in again.series for o in s.steps} == {"computed"}
    assert app_status(bids_dir, output_dir).counts["cached"] == len(pipeline().STEPS)
    assert _derivatives(output_dir) == written


def test_a_link_planted_at_a_derivatives_folder_is_refused_not_followed(
    tmp_path: Path,
) -> None:
    bids_dir = good_dataset(tmp_path / "bids", subjects=2)
    output_dir, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "sub-01_desc-brain_mask.json").write_text("theirs\n")
    (output_dir / "sub-01").mkdir(parents=True)
    (output_dir / "sub-01" / "dwi").symlink_to(elsewhere, target_is_directory=True)
    result = run_bids_app(bids_dir, output_dir, worker="debug", parameters=PARAMETERS)
    assert [s.name for s in result.failed] == ["sub-01"]
    failure = result.failed[0].failure
    assert failure is not None and "symbolic link" in failure, failure
    assert str(output_dir / "sub-01" / "dwi") in failure, failure
    assert [p.name for p in elsewhere.iterdir()] == ["sub-01_desc-brain_mask.json"]
    assert (elsewhere / "sub-01_desc-brain_mask.json").read_text() == "theirs\n"
    assert (output_dir / "sub-01" / "dwi").is_symlink()
    assert read_record(result.work_dir)["sub-01"]["reason"] == failure, "recorded failed"
    assert failure in (output_dir / "sub-01.html").read_text(encoding="utf-8")
    assert result.series[1].ok and result.series[1].derivatives


def test_a_link_planted_at_a_subjects_figures_folder_is_refused(tmp_path: Path) -> None:
    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    output_dir, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (output_dir / "sub-01").mkdir(parents=True)
    (output_dir / "sub-01" / "figures").symlink_to(elsewhere, target_is_directory=True)
    result = run_bids_app(bids_dir, output_dir, worker="debug", parameters=PARAMETERS)
    (failed,) = result.failed
    assert failed.failure is not None
    assert str(output_dir / "sub-01" / "figures") in failed.failure, failed.failure
    assert list(elsewhere.iterdir()) == []


def test_run_subjects_returns_and_names_what_a_worker_could_not_store(tmp_path: Path) -> None:
    """A step folder planted as a link (refused: ELOOP) in one subject's cache: the `cf`
    worker computes the step, keeps its file-backed result for the step after it, and the
    warning reaches this process, once."""
    from tests import _pydra_steps

    root, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "s1").mkdir(parents=True)
    (root / "s1" / "scale_volume").symlink_to(elsewhere, target_is_directory=True)
    subjects = {"s1": {"n": 6}, "s2": {"n": 6}}
    with pytest.warns(NotStoredWarning) as caught:
        results = run_subjects(
            _pydra_steps.volumes, subjects, root, worker="cf", job_cache=tmp_path / "jobs"
        )
    (warning,) = [str(w.message) for w in caught if w.category is NotStoredWarning]
    link = root / "s1" / "scale_volume"
    assert warning.startswith("s1: step 'scale_volume': cannot store results in"), warning
    assert "symbolic link" in warning and str(link) in warning, warning
    assert results["s1"].ok and results["s2"].ok
    assert results["s1"].outputs == pytest.approx(results["s2"].outputs)
    assert list(results["s1"].not_stored) == ["scale_volume"] and not results["s2"].not_stored
    assert list(elsewhere.iterdir()) == [], "nothing written through the link"
    assert (root / "s1" / "volume_mean").is_dir(), "the step after it is stored"


def _path_of_length(parent: Path, length: int) -> Path:
    """A new folder under ``parent`` whose absolute path is ``length`` characters long."""
    path = parent
    while len(str(path)) + 201 < length:
        path /= "x" * 200
    path /= "y" * (length - len(str(path)) - 1)
    path.mkdir(parents=True)
    assert len(str(path)) == length
    return path


def _app_run_with_links(tmp_path: Path, name: str, job_cache: Path) -> tuple[AppRun, list[str]]:
    """The BIDS app (``cf``) on one series whose step folders in the cache are planted
    links, so that no result can be stored there: its outcome and the warnings it gave."""
    bids_dir = tmp_path / "bids"
    if not bids_dir.exists():
        good_dataset(bids_dir, subjects=1)
    output_dir, elsewhere = tmp_path / name, tmp_path / f"{name}-elsewhere"
    elsewhere.mkdir()
    work = output_dir / ".kwneuro-cache" / "sub-01"
    work.mkdir(parents=True)
    for step in pipeline().STEPS:
        (work / step.__name__).symlink_to(elsewhere, target_is_directory=True)
    with pytest.warns(NotStoredWarning) as caught:
        result = run_bids_app(
            bids_dir, output_dir, worker="cf", parameters=PARAMETERS, job_cache=job_cache
        )
    assert list(elsewhere.iterdir()) == [], "nothing written through the links"
    return result, [str(w.message) for w in caught if w.category is NotStoredWarning]


def test_a_result_neither_stored_nor_kept_as_a_file_fails_its_series_plainly(
    tmp_path: Path,
) -> None:
    """A result the cache cannot store and the job directory cannot keep either is held in
    memory; the series then fails, naming what is in memory, instead of crashing where its
    derivatives need files. Keeping is made to fail for real: the job cache's path is so long
    (PATH_MAX) that Pydra's own files and the records fit, the kept files do not."""
    from kwneuro_pydra.pydra._task import NOT_STORED

    probe = tmp_path / "probe-jobs"  # the same run with a short path: the lengths it needs
    result, _ = _app_run_with_links(tmp_path, "probe", probe)
    assert result.ok
    paths = [str(p.relative_to(probe)) for p in probe.rglob("*")]
    fits = max(len(p) for p in paths if f"{NOT_STORED}/" not in p)  # Pydra's and the records
    kept = min(len(p) for p in paths if f"{NOT_STORED}/" in p)  # the kept files
    assert kept > fits, "the kept files' paths are the longest ones"
    jobs = _path_of_length(tmp_path, os.pathconf("/", "PC_PATH_MAX") - 2 - fits)

    result, warned = _app_run_with_links(tmp_path, "out", jobs)
    assert len(warned) == len(pipeline().STEPS), "each step's warning reaches this process"
    assert all("nor can it be kept in" in w and "File name too long" in w for w in warned)
    (failed,) = result.failed
    assert failed.failure is not None
    assert failed.failure.startswith(
        "its results could be neither stored in its cache nor kept as files"
    ), failed.failure
    assert "fa, " in failed.failure and "run it again" in failed.failure, failed.failure
    output_dir = tmp_path / "out"
    assert not (output_dir / "sub-01" / "dwi").exists(), "no derivatives"
    assert read_record(result.work_dir)["sub-01"]["reason"] == failed.failure
    page = (output_dir / "sub-01.html").read_text(encoding="utf-8")
    assert html.escape(failed.failure) in page


@pytest.mark.parametrize("worker", ["cf", "debug"])
def test_a_step_called_inside_a_node_that_cannot_be_stored_is_warned_about(
    tmp_path: Path, worker: str
) -> None:
    """The node's own step is stored; the step it called inside is not (its folder is a
    planted link): that step's warning reaches this process too, and ``not_stored`` names
    it."""
    root, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "s1").mkdir(parents=True)
    (root / "s1" / "inner_plus_one").symlink_to(elsewhere, target_is_directory=True)
    with pytest.warns(NotStoredWarning) as caught:
        results = run_subjects(
            calls_inside, {"s1": {"x": 1.0}}, root, worker=worker, job_cache=tmp_path / "jobs"
        )
    (warning,) = [str(w.message) for w in caught if w.category is NotStoredWarning]
    assert warning.startswith("s1: step 'inner_plus_one': cannot store results in"), warning
    assert results["s1"].ok and results["s1"].outputs == 4.0
    assert list(results["s1"].not_stored) == ["inner_plus_one"]
    assert list(elsewhere.iterdir()) == [], "nothing written through the link"
    assert (root / "s1" / "outer_doubled").is_dir(), "the node's own step is stored"

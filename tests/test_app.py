"""The BIDS app as a library (`kwneuro_pydra.app`), and as users meet it: the dataset stays
read-only, every subject is accounted for, a bad series fails alone, runs of one participant
each compose, Ctrl-C stops cleanly, ``status`` reads at 80 columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from kwneuro_pydra.app import AppError, AppRun, BidsError, app_status, run_bids_app
from tests.bids_data import MASK, add_series, good_dataset

PARAMETERS = {"median_radius": 1, "numpass": 1}
"""`MASK` as the app's parameters."""


def kwneuro(*args: str, columns: int = 200, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """The command in a fresh process, output piped (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "kwneuro_pydra.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": str(columns)},
        **kwargs,  # type: ignore[call-overload]
    )


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_run_bids_app_returns_what_the_command_prints_and_writes_the_same(
    tmp_path: Path,
) -> None:
    bids_dir = good_dataset(tmp_path / "bids")
    result = run_bids_app(bids_dir, tmp_path / "py", worker="debug", parameters=PARAMETERS)
    assert isinstance(result, AppRun) and result.ok
    assert [s.name for s in result.series] == ["sub-01", "sub-02_ses-1", "sub-02_ses-2", "sub-03"]
    assert all(o.state == "computed" for s in result.series for o in s.steps)
    assert result.report == tmp_path / "py" / "report.html" and result.report.is_file()
    cli = kwneuro(
        "run", str(bids_dir), str(tmp_path / "cli"), "participant", "--worker", "debug", *MASK
    )
    assert cli.returncode == 0, cli.stderr
    printed = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in cli.stdout.splitlines()
        if line.startswith("│")
    ]
    assert [row[:4] for row in printed] == [
        [c.step, str(c.computed), str(c.reused), str(c.failed)] for c in result.steps
    ]
    assert f"{len(result.series)} series succeeded, 0 failed." in cli.stdout
    assert result.summary in cli.stdout  # "3 subjects, 4 DWI series"
    mine = sorted(p.relative_to(tmp_path / "py") for p in result.derivatives)
    theirs = sorted(
        p.relative_to(tmp_path / "cli") for p in (tmp_path / "cli").rglob("*_dwimap.nii.gz")
    )
    assert [p for p in mine if p.name.endswith("_dwimap.nii.gz")] == theirs
    for relative in mine:
        a = np.asanyarray(nib.load(tmp_path / "py" / relative).dataobj)
        b = np.asanyarray(nib.load(tmp_path / "cli" / relative).dataobj)
        assert np.array_equal(a, b), relative
    again = run_bids_app(bids_dir, tmp_path / "py", worker="debug", parameters=PARAMETERS)
    assert {o.state for s in again.series for o in s.steps} == {"reused"}
    status = app_status(bids_dir, tmp_path / "py")
    assert status.counts == {"cached": 36, "stale": 0, "missing": 0, "failed": 0}


def test_app_errors_are_its_own_classes_and_the_command_exits_2(tmp_path: Path) -> None:
    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    with pytest.raises(AppError, match="worker 'sge': expected one of debug, cf, slurm"):
        run_bids_app(bids_dir, tmp_path / "out", worker="sge")
    with pytest.raises(AppError, match="force: unknown step nosuch"):
        run_bids_app(bids_dir, tmp_path / "out", force={"nosuch"})
    with pytest.raises(AppError, match="parameters: bmax: must be above 0"):
        run_bids_app(bids_dir, tmp_path / "out", parameters={"bmax": -1})
    with pytest.raises(BidsError, match="no participant 09"):
        run_bids_app(bids_dir, tmp_path / "out", participants=["09"])
    assert not (tmp_path / "out").exists()
    refused = kwneuro(
        "run", str(bids_dir), str(tmp_path / "out"), "participant", "--worker", "sge"
    )
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert "invalid choice: 'sge'" in refused.stderr


@pytest.mark.parametrize(
    ("output", "work", "message"),
    [
        ("bids", None, "OUTPUT_DIR {bids} is the BIDS dataset"),
        ("bids/sub-01", None, "OUTPUT_DIR {bids}/sub-01 is inside the BIDS dataset (sub-01)"),
        ("link", None, "OUTPUT_DIR {tmp}/link is the BIDS dataset (it resolves to {bids})"),
        ("link/sub-01/dwi", None, "is inside the BIDS dataset (sub-01/dwi)"),
        ("out", "bids/sub-01", "the work folder {bids}/sub-01 is inside the BIDS dataset"),
        ("out", "link", "the work folder {tmp}/link is the BIDS dataset"),
    ],
)
def test_the_raw_dataset_is_never_written(
    tmp_path: Path, output: str, work: str | None, message: str
) -> None:
    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    (tmp_path / "link").symlink_to(bids_dir)
    before = snapshot(bids_dir)
    args = ["run", str(tmp_path / output), "participant", "--worker", "debug", *MASK]
    result = kwneuro(
        "run", str(bids_dir), *args[1:], *(["-w", str(tmp_path / work)] if work else [])
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert message.format(bids=bids_dir, tmp=tmp_path) in result.stderr
    assert "the raw dataset is never written" in result.stderr
    assert snapshot(bids_dir) == before
    assert not (tmp_path / "out").exists()


def test_derivatives_inside_the_dataset_are_accepted(tmp_path: Path) -> None:
    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    result = run_bids_app(
        bids_dir, bids_dir / "derivatives" / "dti", worker="debug", parameters=PARAMETERS
    )
    assert result.ok and result.report == bids_dir / "derivatives" / "dti" / "report.html"
    assert json.loads((bids_dir / "dataset_description.json").read_text())["DatasetType"] == "raw"


def test_demo_refuses_a_study_it_did_not_write(tmp_path: Path) -> None:
    study = tmp_path / "study"
    good_dataset(study / "bids", subjects=1)
    description = study / "bids" / "dataset_description.json"
    description.write_text(
        json.dumps({"Name": "my study", "BIDSVersion": "1.10.0", "Authors": ["me"]})
    )
    before = snapshot(study)
    result = kwneuro("demo", str(study), "--subjects", "2", "--worker", "debug")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert f"already holds a dataset the demo did not write ({description})" in result.stderr
    assert snapshot(study) == before
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "dataset_description.json").write_text('{"Name": "x"}')
    assert kwneuro("demo", str(tmp_path / "raw"), "--worker", "debug").returncode == 2


def test_subjects_without_dwi_are_listed_and_asking_for_one_names_it(tmp_path: Path) -> None:
    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    (bids_dir / "sub-07" / "anat").mkdir(parents=True)
    (bids_dir / "sub-07" / "anat" / "sub-07_T1w.nii.gz").write_bytes(b"")
    (bids_dir / "participants.tsv").write_text("participant_id\nsub-01\nsub-07\nsub-08\n")
    result = run_bids_app(bids_dir, tmp_path / "out", worker="debug", parameters=PARAMETERS)
    assert result.ok and result.no_dwi == ("07", "08")
    assert result.summary == "1 subject, 1 DWI series; no DWI: sub-07, sub-08"
    assert "no DWI: sub-07, sub-08" in result.report.read_text()
    status = kwneuro("status", str(bids_dir), str(tmp_path / "out"))
    assert "no DWI: sub-07, sub-08" in status.stdout
    ran = kwneuro(
        "run", str(bids_dir), str(tmp_path / "out"), "participant", "--worker", "debug", *MASK
    )
    assert "No DWI: sub-07, sub-08" in ran.stdout
    both = kwneuro(
        "run",
        str(bids_dir),
        str(tmp_path / "out"),
        "participant",
        "--participant-label",
        "07",
        "01",
        "--worker",
        "debug",
        *MASK,
    )
    assert both.returncode == 2 and len(both.stderr.splitlines()) == 1, both.stderr
    assert "1 participant asked for without a DWI series: sub-07" in both.stderr


def test_a_bad_file_name_fails_its_series_alone(tmp_path: Path) -> None:
    bids_dir = good_dataset(tmp_path / "bids", subjects=4)
    copy = bids_dir / "sub-03" / "dwi" / "sub-03_acq-b1000 (copy)_dwi.nii.gz"
    copy.write_bytes((bids_dir / "sub-03" / "dwi" / "sub-03_dwi.nii.gz").read_bytes())
    nii = bids_dir / "sub-01" / "dwi" / "sub-01_dwi.nii"  # beside sub-01_dwi.nii.gz
    nib.save(nib.load(bids_dir / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"), nii)
    misplaced = bids_dir / "sub-03" / "ses-1" / "dwi" / "sub-03_dwi.nii.gz"  # no ses- entity
    misplaced.parent.mkdir(parents=True)
    misplaced.write_bytes((bids_dir / "sub-03" / "dwi" / "sub-03_dwi.nii.gz").read_bytes())
    anat = bids_dir / "sub-02" / "anat"
    anat.mkdir()
    Path(os.fsdecode(os.fsencode(anat) + b"/sub-02_T1w\xff.nii.gz")).write_bytes(b"")
    result = run_bids_app(bids_dir, tmp_path / "out", worker="debug", parameters=PARAMETERS)
    failures = {s.source: s.failure for s in result.series if not s.ok}
    assert sorted(failures) == [
        "sub-01/dwi/sub-01_dwi.nii",
        "sub-01/dwi/sub-01_dwi.nii.gz",
        "sub-02/ses-1/dwi/sub-02_ses-1_dwi.nii.gz",
        "sub-02/ses-2/dwi/sub-02_ses-2_dwi.nii.gz",
        "sub-03/dwi/sub-03_acq-b1000 (copy)_dwi.nii.gz",
        "sub-03/dwi/sub-03_dwi.nii.gz",
        "sub-03/ses-1/dwi/sub-03_dwi.nii.gz",
    ]
    assert (
        "another image has its name (sub-01/dwi/sub-01_dwi.nii.gz)"
        in failures["sub-01/dwi/sub-01_dwi.nii"]
    )
    assert "not a BIDS file name" in failures["sub-03/dwi/sub-03_acq-b1000 (copy)_dwi.nii.gz"]
    assert failures["sub-02/ses-1/dwi/sub-02_ses-1_dwi.nii.gz"].startswith(
        "sub-02/anat/sub-02_T1w\\xff.nii.gz: a file name of sub-02 that is not UTF-8"
    )
    assert (
        "another image has its name (sub-03/dwi/sub-03_dwi.nii.gz)"
        in failures["sub-03/ses-1/dwi/sub-03_dwi.nii.gz"]
    )
    assert [s.name for s in result.series if s.ok] == ["sub-04_ses-1", "sub-04_ses-2"]
    for name in ("sub-01", "sub-03"):  # never one cache for two images
        assert not (tmp_path / "out" / ".kwneuro-cache" / name).exists()
    status = kwneuro("status", str(bids_dir), str(tmp_path / "out"))
    assert status.returncode == 0 and "not UTF-8" in status.stdout, status.stderr


def test_runs_of_one_participant_each_compose(tmp_path: Path) -> None:
    bids_dir = good_dataset(tmp_path / "bids", subjects=2)
    add_series(bids_dir, "sub-03", b0=False)  # mean_b0 fails
    out = tmp_path / "out"
    first = run_bids_app(bids_dir, out, participants=["03"], worker="debug", parameters=PARAMETERS)
    assert not first.ok and first.series[0].failed_step == "mean_b0"
    second = run_bids_app(
        bids_dir, out, participants=["01"], worker="debug", parameters=PARAMETERS
    )
    assert second.ok and [s.name for s in second.series] == ["sub-01"]
    report = (out / "report.html").read_text()
    assert "sub-01" in report and "sub-03" in report and "no b=0 volume" in report
    record = json.loads((out / ".kwneuro-cache" / "last-run.json").read_text())
    assert record["sub-03"]["step"] == "mean_b0" and record["sub-01"]["reason"] is None
    status = app_status(bids_dir, out)
    states = {s.name: s.states for s in status.series}
    assert states["sub-03"]["mean_b0"] == "failed" and set(states["sub-01"].values()) == {"cached"}
    # a participant run with other options keeps them in the report of a later run
    ols = {**PARAMETERS, "fit_method": "OLS"}
    assert run_bids_app(bids_dir, out, participants=["02"], worker="debug", parameters=ols).ok
    assert run_bids_app(
        bids_dir, out, participants=["01"], worker="debug", parameters=PARAMETERS
    ).ok
    report = (out / "report.html").read_text()
    assert "no longer in the cache" not in report and report.count('class="failed">failed') == 1
    sidecar = out / "sub-02/ses-1/dwi/sub-02_ses-1_model-tensor_param-fa_dwimap.json"
    assert json.loads(sidecar.read_text())["Parameters"]["fit_method"] == "OLS"
    # two runs at once, one participant each: neither loses the other's series
    both = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kwneuro_pydra.cli",
                "run",
                str(bids_dir),
                str(tmp_path / "together"),
                "participant",
                "--participant-label",
                label,
                "--worker",
                "debug",
                "-q",
                *MASK,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for label in ("01", "02")
    ]
    errors = [p.communicate(timeout=300)[1] for p in both]
    assert [p.returncode for p in both] == [0, 0], errors
    record = json.loads((tmp_path / "together" / ".kwneuro-cache" / "last-run.json").read_text())
    assert sorted(record) == ["sub-01", "sub-02_ses-1", "sub-02_ses-2"]
    report = (tmp_path / "together" / "report.html").read_text()
    assert all(f'id="{name}"' in report or name in report for name in record)
    assert (tmp_path / "together" / "sub-01.html").is_file()
    assert (tmp_path / "together" / "sub-02.html").is_file()


def _identities(out: Path) -> dict[str, tuple[int, int]]:
    """Each report page and subject figure under ``out``: (inode, modification time)."""
    found = [*out.glob("*.html"), *out.glob("sub-*/figures/*.png")]
    return {p.relative_to(out).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns) for p in found}


def test_a_participant_run_writes_its_subjects_page_and_others_only_when_out_of_date(
    tmp_path: Path,
) -> None:
    bids_dir = good_dataset(tmp_path / "bids")
    out = tmp_path / "out"
    assert run_bids_app(bids_dir, out, worker="debug", parameters=PARAMETERS).ok
    before = _identities(out)
    assert len([n for n in before if n.startswith("sub-02/figures/")]) == 10
    # a rerun of sub-01 alone: its page and the group's, no other page or figure
    again = run_bids_app(bids_dir, out, participants=["01"], worker="debug", parameters=PARAMETERS)
    assert again.ok and again.pages == tuple(
        out / f for f in ("report.html", "sub-01.html", "sub-02.html", "sub-03.html")
    )
    after = _identities(out)
    for name, identity in before.items():
        if name.startswith(("sub-02", "sub-03")):
            assert after[name] == identity, name
    assert after["report.html"] != before["report.html"]
    assert after["sub-01.html"] != before["sub-01.html"]
    assert "estimate_dti</td><td>reused" in (out / "sub-01.html").read_text()
    assert "estimate_dti</td><td>computed" in (out / "sub-02.html").read_text()  # its run's
    # a page deleted comes back with the next run, whichever participant it runs
    (out / "sub-03.html").unlink()
    assert run_bids_app(
        bids_dir, out, participants=["01"], worker="debug", parameters=PARAMETERS
    ).ok
    assert 'id="sub-03"' in (out / "sub-03.html").read_text()
    # sub-02 again with other parameters: its page shows them
    ols = {**PARAMETERS, "fit_method": "OLS"}
    assert run_bids_app(bids_dir, out, participants=["02"], worker="debug", parameters=ols).ok
    assert "Fitted (OLS)" in (out / "sub-02.html").read_text()
    # ... and when sub-02 changes through another output folder sharing the work folder, the
    # next run into this one (of sub-01) brings its page up to date, and only its page
    work = out / ".kwneuro-cache"
    assert run_bids_app(
        bids_dir,
        tmp_path / "other",
        work_dir=work,
        participants=["02"],
        worker="debug",
        parameters=PARAMETERS,
    ).ok
    before = _identities(out)
    assert run_bids_app(
        bids_dir, out, participants=["01"], worker="debug", parameters=PARAMETERS
    ).ok
    page = (out / "sub-02.html").read_text()
    assert "Fitted (WLS)" in page and "Fitted (OLS)" not in page
    assert _identities(out)["sub-03.html"] == before["sub-03.html"]


def test_status_reads_at_80_columns_piped_and_as_json_with_the_runs_work_dir(
    tmp_path: Path,
) -> None:
    bids_dir = good_dataset(tmp_path / "bids", subjects=2)
    out, work = tmp_path / "out", tmp_path / "elsewhere"
    ran = kwneuro(
        "run",
        str(bids_dir),
        str(out),
        "participant",
        "--worker",
        "debug",
        "-w",
        str(work),
        "--participant-label",
        "01",
        *MASK,
    )
    assert ran.returncode == 0, ran.stderr
    narrow = kwneuro("status", str(bids_dir), str(out), columns=80)
    assert narrow.returncode == 0, narrow.stderr
    lines = narrow.stdout.splitlines()
    assert f"cache {work}" in lines[0]  # the run's -w, recorded
    assert "sub-01: 9 cached" in lines
    assert "sub-02_ses-1: 9 missing from mean_b0" in lines
    assert "…" not in narrow.stdout
    assert all(len(line) <= 80 for line in lines[1:4])
    wide = kwneuro("status", str(bids_dir), str(out), columns=200)
    assert any(
        line.startswith("│ sub-01") and "cached" in line for line in wide.stdout.splitlines()
    )
    found = json.loads(kwneuro("status", str(bids_dir), str(out), "--json").stdout)
    assert found["work_dir"] == str(work)
    assert found["counts"] == {"cached": 9, "stale": 0, "missing": 18, "failed": 0}
    assert [s["name"] for s in found["series"]] == ["sub-01", "sub-02_ses-1", "sub-02_ses-2"]
    assert set(found["series"][0]["states"].values()) == {"cached"}


def test_ctrl_c_is_one_line_exit_130_and_a_rerun_resumes(tmp_path: Path) -> None:
    import signal
    import time

    bids_dir = good_dataset(tmp_path / "bids", subjects=3)
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "kwneuro_pydra.cli",
        "run",
        str(bids_dir),
        str(out),
        "participant",
        "--worker",
        "cf",
        "--n-procs",
        "2",
        *MASK,
    ]
    run = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not any((out / ".kwneuro-cache").glob("*/mean_b0")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert stderr.splitlines() == ["kwneuro-pydra run: interrupted (rerun to resume)"], stderr
    rerun = kwneuro(*args[3:])
    assert rerun.returncode == 0, rerun.stderr
    assert "4 series succeeded, 0 failed." in rerun.stdout


def test_the_app_is_a_library_and_the_cli_a_thin_layer() -> None:
    """No module of `kwneuro_pydra.app` imports argparse or rich (the command line's); the
    ``run`` command only parses and prints."""
    import ast

    import kwneuro_pydra.app
    import kwneuro_pydra.cli.run

    for module in Path(kwneuro_pydra.app.__file__).parent.glob("*.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        imported |= {
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        }
        assert not {name.split(".")[0] for name in imported} & {"argparse", "rich"}, module
    assert len(Path(kwneuro_pydra.cli.run.__file__).read_text().splitlines()) < 150


def test_on_progress_hears_the_start_and_the_end_however_computing_ends(tmp_path: Path) -> None:
    from kwneuro_pydra.app import Progress

    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    heard: list[Progress] = []
    result = run_bids_app(
        bids_dir, tmp_path / "out", worker="debug", parameters=PARAMETERS, on_progress=heard.append
    )
    assert result.ok and [p.done for p in heard] == [False, True]
    assert heard[-1].series == ("sub-01",)
    assert [row[2] for row in heard[-1].counts()] == [1] * 9  # each step computed once
    heard.clear()
    with pytest.raises(TypeError, match="bogus"):  # run_subjects refuses the argument
        run_bids_app(
            bids_dir,
            tmp_path / "again",
            worker="debug",
            parameters=PARAMETERS,
            on_progress=heard.append,
            bogus=1,
        )
    assert [p.done for p in heard] == [False, True]  # a live display is stopped all the same
    assert run_bids_app(
        bids_dir, tmp_path / "out", worker="debug", parameters=PARAMETERS, on_progress=heard.append
    ).ok
    assert [p.done for p in heard] == [False, True]  # all cached: nothing to show


def test_crash_records_go_to_output_dir_logs_not_home_and_only_the_last_runs_stay(
    tmp_path: Path,
) -> None:
    """Pydra's job cache of the app (pickles, crash records ``_error.pklz``) is
    ``OUTPUT_DIR/logs/pydra-<uid>``: nothing of it in the home folder; a run removes the
    folders of the runs before it."""
    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    add_series(bids_dir, "sub-03", b0=False)  # a step fails: a crash record
    out, home = tmp_path / "out", tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "PYDRA_HASH_CACHE")}
    args = ["run", str(bids_dir), str(out), "participant", "--worker", "cf", *MASK]
    for _ in range(2):
        ran = subprocess.run(
            [sys.executable, "-m", "kwneuro_pydra.cli", *args],
            capture_output=True,
            text=True,
            env={**env, "HOME": str(home), "COLUMNS": "200"},
        )
        assert ran.returncode == 1, ran.stderr
        assert "FAILED sub-03: step '" in ran.stderr
    assert not list(home.rglob("*.pklz")) and not (home / ".cache" / "kwneuro-pydra").exists()
    jobs = out / "logs" / f"pydra-{os.getuid()}"
    (run,) = jobs.glob("run-*")  # the first run's folder went with the second run
    assert list(run.rglob("_error.pklz"))
    assert jobs.stat().st_mode & 0o077 == 0  # pickles that are loaded: yours alone


def test_the_report_and_sidecars_record_the_command_the_worker_and_the_fit(
    tmp_path: Path,
) -> None:
    bids_dir, out = good_dataset(tmp_path / "bids", subjects=1), tmp_path / "out"
    ran = run_bids_app(
        bids_dir,
        out,
        parameters={**PARAMETERS, "bmax": 1000.0},
        worker="debug",
        command=["kwneuro-pydra", "run", "B&D"],
    )
    assert ran.ok
    page = (out / "report.html").read_text()
    assert "kwneuro-pydra run B&amp;D" in page and "debug" in page
    (fa,) = out.glob("sub-01/dwi/*param-fa_dwimap.json")
    sidecar = json.loads(fa.read_text())
    assert sidecar["FitMethod"] == "WLS" and sidecar["ShellsLeftOut"] == [], sidecar
    assert [shell["BValue"] for shell in sidecar["ShellsFitted"]] == [1000.0], sidecar

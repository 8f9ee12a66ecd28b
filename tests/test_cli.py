"""The ``kwneuro-pydra`` command as a user meets it: run, status, ls, prune, clear, demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kwneuro_pydra import Cache
from kwneuro_pydra._store import entry_key
from kwneuro_pydra.bids import discover
from kwneuro_pydra.cli import main
from tests._volumes import nibabel_image
from tests.bids_data import MASK, add_series, good_dataset

MAPS = ("desc-brain_mask", "model-tensor_param-fa_dwimap", "model-tensor_param-md_dwimap")


def kwneuro(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed command in a fresh process, as a user does."""
    return subprocess.run(
        [sys.executable, "-m", "kwneuro_pydra.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3-subject dataset (sub-02 with two sessions) run once with the debug worker."""
    root = tmp_path_factory.mktemp("cli")
    bids_dir = good_dataset(root / "bids")
    args = ["run", str(bids_dir), str(root / "out"), "participant", "--worker", "debug", *MASK]
    assert main(args) == 0
    return bids_dir, root / "out"


def test_run_writes_bids_derivatives_linked_to_the_cache(ran: tuple[Path, Path]) -> None:
    bids_dir, out = ran
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "kwneuro-pydra"
    assert description["SourceDatasets"] == [{"URL": bids_dir.absolute().as_uri()}]
    for folder, name in [
        ("sub-01/dwi", "sub-01"),
        ("sub-02/ses-1/dwi", "sub-02_ses-1"),
        ("sub-02/ses-2/dwi", "sub-02_ses-2"),
        ("sub-03/dwi", "sub-03"),
    ]:
        for entities in MAPS:
            image = out / folder / f"{name}_{entities}.nii.gz"
            sidecar = json.loads(image.with_name(f"{name}_{entities}.json").read_text())
            assert sidecar["Sources"] == [f"bids:raw:{folder}/{name}_dwi.nii.gz"]
            assert image.stat().st_nlink == 2  # a hard link to its cache entry
    fa = out / "sub-01/dwi/sub-01_model-tensor_param-fa_dwimap.nii.gz"
    (entry,) = Cache(out / ".kwneuro-cache" / "sub-01").entries("estimate_dti")
    assert any(os.path.samefile(fa, entry.path / name) for name in entry.files)
    md_file = out / "sub-03/dwi/sub-03_model-tensor_param-md_dwimap.nii.gz"
    md = np.asanyarray(nibabel_image(md_file).dataobj)
    mask = np.asanyarray(nibabel_image(out / "sub-03/dwi/sub-03_desc-brain_mask.nii.gz").dataobj)
    assert 5e-4 < np.median(md[mask > 0]) < 1.2e-3  # the phantoms' MD
    for page in ("report.html", "sub-01.html", "sub-02.html", "sub-03.html"):
        assert (out / page).is_file()


def test_a_rerun_reuses_every_step_and_says_so(ran: tuple[Path, Path]) -> None:
    bids_dir, out = ran
    fa = out / "sub-01/dwi/sub-01_model-tensor_param-fa_dwimap.nii.gz"
    inode = fa.stat().st_ino
    result = kwneuro("run", str(bids_dir), str(out), "participant", "--worker", "debug", *MASK)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "estimate_dti" in line]
    assert rows and rows[0].split("│")[2:4] == ["        0 ", "      4 "]  # computed, reused
    assert f"Report: {out / 'report.html'}" in result.stdout
    assert fa.stat().st_ino == inode
    assert result.stderr == ""


def test_force_recomputes_that_step_only(ran: tuple[Path, Path]) -> None:
    from kwneuro_pydra.app import run_bids_app

    bids_dir, out = ran
    figure = out / "sub-03" / "figures" / "sub-03_desc-md_dwi.png"
    inode = figure.stat().st_ino
    result = run_bids_app(
        bids_dir,
        out,
        worker="debug",
        force={"md_mosaic"},
        parameters={"median_radius": 1, "numpass": 1},
    )
    assert result.ok
    counts = {c.step: (c.computed, c.reused) for c in result.steps}
    assert counts["md_mosaic"] == (4, 0)
    assert all(counts[s] == (0, 4) for s in counts if s != "md_mosaic")
    assert figure.stat().st_ino != inode  # the report links the new entry


def test_participant_label_runs_only_those(tmp_path: Path, ran: tuple[Path, Path]) -> None:
    bids_dir, _ = ran
    out = tmp_path / "out"
    code = main(
        [
            "run",
            str(bids_dir),
            str(out),
            "participant",
            "--participant-label",
            "sub-03",
            "--worker",
            "debug",
            "-q",
            *MASK,
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.glob("sub-*.html")) == ["sub-03.html"]


def test_bad_series_fail_one_by_one_while_the_others_finish(tmp_path: Path) -> None:
    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    (bids_dir / "dwi.bval").unlink()  # sub-01 keeps its own table below
    (bids_dir / "dwi.bvec").unlink()
    add_series(bids_dir, "sub-01", volumes=32, table=32)
    add_series(bids_dir, "sub-02", table=None)  # no b-values, no b-vectors
    add_series(bids_dir, "sub-03", table=9)  # 8 volumes, 9 b-values
    add_series(bids_dir, "sub-04", three_d=True)
    add_series(bids_dir, "sub-05").write_bytes(b"\x1f\x8b garbage")  # unreadable NIfTI
    add_series(bids_dir, "sub-06", b0=False)  # mean_b0 fails inside the pipeline
    truncated = add_series(bids_dir, "sub-07")  # the header loads, the voxels do not
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    out = tmp_path / "out"
    result = kwneuro("run", str(bids_dir), str(out), "participant", "--worker", "debug", *MASK)
    assert result.returncode == 1
    failed = [line for line in result.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 6, result.stderr
    assert failed == result.stderr.splitlines()  # one line each, nothing else (no Pydra noise)
    assert "sub-02: sub-02/dwi/sub-02_dwi.nii.gz: no .bval or .bvec file" in failed[0]
    assert "counts disagree" in failed[1] and "must be 4-D" in failed[2]
    assert "sub-05" in failed[3]
    assert "sub-06: step 'mean_b0' failed: ValueError: mean_b0: no b=0 volume" in failed[4]
    # the step's own exception class, by its short name, once (its class is not rebuilt)
    error = f"ResourceFileError: truncated or corrupted NIfTI file: {truncated}"
    reason = f"step 'mean_b0' failed: {error}"
    assert failed[5].startswith(f"FAILED sub-07: {reason}"), failed[5]
    assert "RuntimeError" not in failed[5] and failed[5].count("ResourceFileError") == 1
    assert reason in (out / "sub-07.html").read_text().replace("&#x27;", "'")
    assert "Traceback" not in result.stderr
    assert (out / "sub-01/dwi/sub-01_model-tensor_param-fa_dwimap.nii.gz").is_file()
    report = (out / "report.html").read_text()
    assert report.count('class="failed">failed') == 6
    assert "no b=0 volume" in report and "counts disagree" in report
    assert "no b=0 volume" in (out / "sub-06.html").read_text()
    status = kwneuro("status", str(bids_dir), str(out), *MASK)
    assert status.returncode == 0
    sub06 = next(line for line in status.stdout.splitlines() if "sub-06" in line)
    assert "failed" in sub06
    assert "cannot load" in next(line for line in status.stdout.splitlines() if "sub-04" in line)


def test_status_shows_missing_then_cached(tmp_path: Path) -> None:
    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    before = kwneuro("status", str(bids_dir), str(tmp_path / "out"), *MASK)
    assert before.returncode == 0, before.stderr
    assert "9 steps missing" in before.stdout
    assert not (tmp_path / "out").exists()  # status writes nothing
    assert (
        main(
            [
                "run",
                str(bids_dir),
                str(tmp_path / "out"),
                "participant",
                "--worker",
                "debug",
                "-q",
                *MASK,
            ]
        )
        == 0
    )
    after = kwneuro("status", str(bids_dir), str(tmp_path / "out"), *MASK)
    assert "9 steps cached, 0 steps stale, 0 steps missing, 0 steps failed" in after.stdout
    (entry,) = Cache(tmp_path / "out" / ".kwneuro-cache" / "sub-01").entries("estimate_dti")
    sidecar = entry.path / "estimate_dti.params.json"
    record = {**json.loads(sidecar.read_text()), "code": "0" * 64}  # as if made by older code
    sidecar.write_text(json.dumps(record))
    entry.path.rename(
        entry.path.with_name(entry_key(record["scalars"], record["hashes"], record["code"]))
    )
    stale = kwneuro("status", str(bids_dir), str(tmp_path / "out"), *MASK)
    assert "3 steps cached, 1 step stale, 5 steps missing, 0 steps failed" in stale.stdout
    row = next(line for line in stale.stdout.splitlines() if line.startswith("│ sub-01"))
    assert row.split("│")[5].strip() == "stale"  # estimate_dti, the fourth step


def test_status_looks_up_the_options_the_run_recorded(tmp_path: Path) -> None:
    bids_dir, out = good_dataset(tmp_path / "bids", subjects=1), tmp_path / "out"
    assert (
        main(
            [
                "run",
                str(bids_dir),
                str(out),
                "participant",
                "--worker",
                "debug",
                "-q",
                "--fit-method",
                "OLS",
                "--bmax",
                "1200",
                *MASK,
            ]
        )
        == 0
    )
    record = json.loads((out / "logs" / "kwneuro-pydra-options.json").read_text())
    assert record["Parameters"] == {
        "fit_method": "OLS",
        "bmax": 1200.0,
        "mask_method": "shells",
        "median_radius": 1,
        "numpass": 1,
    }
    recorded = kwneuro("status", str(bids_dir), str(out))  # no option repeated
    assert recorded.returncode == 0 and recorded.stderr == "", recorded.stderr
    assert "9 steps cached, 0 steps stale, 0 steps missing" in recorded.stdout
    assert (
        "DTI options: --fit-method OLS --bmax 1200 --mask-method shells --mask-median-radius 1 "
        "--mask-numpass 1 "
        f"(as given, else the run's, recorded in {out / 'logs' / 'kwneuro-pydra-options.json'})"
    ) in recorded.stdout
    # an option given overrides the record, and status says they differ
    wls = kwneuro("status", str(bids_dir), str(out), "--fit-method", "WLS")
    assert "3 steps cached, 0 steps stale, 6 steps missing" in wls.stdout  # mask, not fit
    assert "--fit-method: the run recorded --fit-method OLS" in wls.stderr
    assert "showing the cache for --fit-method WLS" in wls.stderr
    same = kwneuro("status", str(bids_dir), str(out), "--fit-method", "OLS")
    assert "9 steps cached" in same.stdout and same.stderr == ""
    # a record that cannot be used: said so, and the defaults stand in
    record_file = out / "logs" / "kwneuro-pydra-options.json"
    record_file.write_text('{"Parameters": {"fit_method": "LS"}}')
    broken = kwneuro("status", str(bids_dir), str(out))
    assert broken.returncode == 0
    assert "fit_method: expected one of WLS, OLS, got 'LS'" in broken.stderr
    assert "2 steps cached, 0 steps stale, 7 steps missing" in broken.stdout  # mean_b0 ...
    shown = "DTI options: --fit-method WLS --bmax 1500 --mask-method shells --mask-median-radius 4"
    assert shown in broken.stdout


ON_SLURM = ("run", "{bids}", "{tmp}/out", "participant", "--worker", "slurm")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "{tmp}/nowhere", "{tmp}/out", "participant"], "does not exist"),
        (["run", "{tmp}", "{tmp}/out", "participant"], "no dataset_description.json"),
        (
            ["run", "{bids}", "{tmp}/out", "participant", "--participant-label", "09"],
            "no participant 09 in the dataset (participants found: 01, 02, 03)",
        ),
        (["run", "{bids}", "{file}", "participant"], "is a file, not a folder"),
        (["run", "{bids}", "/proc/kwneuro-out", "participant"], "cannot be written"),
        (["run", "{bids}", "{tmp}/out", "participant", "--worker", "nosuch"], "invalid choice"),
        (["run", "{bids}", "{tmp}/out", "participant", "--force", "nosuch"], "unknown step"),
        (["run", "{bids}", "{tmp}/out", "group"], "invalid choice"),
        (
            ["run", "{bids}", "{tmp}/out", "participant", "--sbatch-args=--mem=1G"],
            "--sbatch-args: only with --worker slurm (got --worker cf)",
        ),
        (
            ["run", "{bids}", "{tmp}/out", "participant", "--granularity", "subject"],
            "--granularity: only with --worker slurm",
        ),
        (
            [*ON_SLURM, "--resources", "{file}"],
            "--resources: {file}: resources file must end in .toml or .json",
        ),
        (
            [*ON_SLURM, "--resources", "{tmp}/none.toml"],
            "--resources: [Errno 2] No such file or directory",
        ),
        (
            ["run", "{bids}", "{tmp}/out", "participant", "--detach"],
            "--detach: only with --worker slurm (got --worker cf)",
        ),
        (
            [*ON_SLURM, "--detach", "--granularity", "node"],
            "--detach needs a job per series: --granularity subject",
        ),
        (["status", "{tmp}"], "no Slurm job recorded in {tmp}/.kwneuro-cache/.logs/slurm-jobs"),
        (["cancel", "{tmp}"], "no Slurm job recorded in {tmp}/.kwneuro-cache/.logs/slurm-jobs"),
        (
            ["status", "{tmp}", "--participant-label", "01", "--fit-method", "OLS"],
            "--participant-label, --fit-method: only with BIDS_DIR",
        ),
        (["demo", "{tmp}/demo", "--subjects", "0"], "must be at least 1"),
        (["prune", "{tmp}", "--keep", "0"], "must be at least 1"),
        (["prune", "{tmp}", "--keep", "-1"], "must be at least 1"),
        (["prune", "{tmp}", "--older-than-days", "-1"], "must be above 0"),
        (["ls", "{tmp}/nowhere"], "does not exist"),
        (["ls", "{tmp}"], "no kwneuro-pydra cache in"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    tmp_path: Path, ran: tuple[Path, Path], args: list[str], message: str
) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "dataset_description.json.not").write_text("")
    values = {"tmp": str(tmp_path), "bids": str(ran[0]), "file": str(tmp_path / "file")}
    result = kwneuro(*(a.format(**values) for a in args))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert message.format(**values) in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "demo").exists()


def test_an_unexpected_error_is_one_line_and_its_traceback_needs_v(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kwneuro_pydra.cli import ls

    def broken(args: object) -> int:
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(ls, "run", broken)
    assert main(["ls", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "kwneuro-pydra ls: error: RuntimeError: disk on fire (-v shows the traceback)\n"
    )
    assert main(["ls", str(tmp_path), "-v"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_version() -> None:
    """One version: ``kwneuro_pydra.__version__``, which the package's metadata reads."""
    from importlib.metadata import version

    import kwneuro_pydra

    result = kwneuro("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"kwneuro-pydra {kwneuro_pydra.__version__}"
    assert version("kwneuro-pydra") == kwneuro_pydra.__version__ == "0.1.0"


def test_ls_lists_a_cache_root_with_a_header_and_file_names(ran: tuple[Path, Path]) -> None:
    _, out = ran
    for where in (out / ".kwneuro-cache", out):
        result = kwneuro("ls", str(where))
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].split() == [
            "CACHE",
            "STEP",
            "KEY",
            "CREATED",
            "(UTC)",
            "TIME",
            "SIZE",
            "FILES",
        ]
        assert any(
            "sub-02_ses-1" in line and "estimate_dti" in line and "estimate_dti_fa.nii.gz" in line
            for line in lines
        )
        assert lines[-1].startswith("37 entries")  # 4 series x 9 steps + the group figure
    one = kwneuro("ls", str(out / ".kwneuro-cache" / "sub-01"), "estimate_dti")
    assert one.stdout.splitlines()[-1].startswith("1 entry, ")
    assert "the cache" in one.stdout.splitlines()[-1]
    unknown = kwneuro("ls", str(out), "estimate_dit")
    assert unknown.returncode == 2
    assert "unknown step estimate_dit: the steps in" in unknown.stderr


def test_prune_and_clear_dry_run_confirmation_and_plurals(tmp_path: Path) -> None:
    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    out = tmp_path / "out"
    args = ["run", str(bids_dir), str(out), "participant", "--worker", "debug", "-q", *MASK]
    assert main(args) == 0
    cache = out / ".kwneuro-cache" / "sub-01"
    from kwneuro_pydra.workflows.dti import brain_mask

    with Cache(cache):
        brain_mask(discover(bids_dir)[0].load(), median_radius=2)  # a second entry of brain_mask
    dry = kwneuro("prune", str(out), "--keep", "1", "--dry-run")
    assert dry.returncode == 0
    assert "1 folder would be removed from 2 caches under" in dry.stdout
    assert len(Cache(cache).entries("brain_mask")) == 2
    pruned = kwneuro("prune", str(out), "--keep", "1")
    assert "1 folder removed from 2 caches under" in pruned.stdout
    assert len(Cache(cache).entries("brain_mask")) == 1
    refused = kwneuro("clear", str(out), "brain_mask", stdin="")
    assert refused.returncode == 2 and "confirm with --yes" in refused.stderr
    assert len(Cache(cache).entries("brain_mask")) == 1
    dry_clear = kwneuro("clear", str(out), "--dry-run")
    assert "10 entries" in dry_clear.stdout and "would be removed" in dry_clear.stdout
    cleared = kwneuro("clear", str(out), "brain_mask", "--yes")
    assert cleared.returncode == 0
    assert "1 entry removed from 2 caches" in cleared.stdout
    assert Cache(cache).entries("brain_mask") == []


def test_demo_prints_where_the_report_is(tmp_path: Path) -> None:
    result = kwneuro("demo", str(tmp_path / "demo"), "--subjects", "2", "--worker", "debug")
    assert result.returncode == 0, result.stderr
    report = tmp_path / "demo" / "derivatives" / "report.html"
    assert f"Report: {report}" in result.stdout.splitlines()
    rows = {
        line.split("│")[1].strip(): line.split("│")[2:5]
        for line in result.stdout.splitlines()
        if line.startswith("│ sub-")
    }
    assert sorted(rows) == ["sub-01", "sub-02_ses-1", "sub-02_ses-2"]
    for voxels, fa_error, md_error in rows.values():  # the demo's error against ground truth
        assert int(voxels) > 1000 and float(fa_error) < 0.05 and float(md_error[:-2]) < 5
    bids_dir = tmp_path / "demo" / "bids"
    assert (bids_dir / "sub-02" / "ses-2" / "dwi" / "sub-02_ses-2_dwi.nii.gz").is_file()


def test_console_script_help_lists_the_commands() -> None:
    result = kwneuro("--help")
    assert result.returncode == 0
    for command in ("run", "status", "cancel", "ls", "prune", "clear", "demo"):
        assert command in result.stdout


def test_log_lines_go_through_the_display_console_and_forked_workers_stay_quiet(
    capfd: pytest.CaptureFixture[str],
) -> None:
    import logging

    from rich.logging import RichHandler

    from kwneuro_pydra.cli._common import console, logging_to_console

    with logging_to_console(0):
        (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, RichHandler)]
        assert handler.console is console()  # the console the live display draws on
        logging.getLogger("kwneuro_pydra.test").warning("from the main process")
        pid = os.fork()
        if pid == 0:  # a cf worker: forked, inheriting the handler
            logging.getLogger("kwneuro_pydra.test").warning("from a worker")
            os._exit(0)
        os.waitpid(pid, 0)
        err = capfd.readouterr().err
        assert "from the main process" in err
        assert "from a worker" not in err
    assert handler not in logging.getLogger().handlers


_READS = """
import json, sys
from kwneuro_pydra import _filedigest
from kwneuro_pydra.cli import main

hash_file, read = _filedigest._hash_file, []


def counted(path):
    hashed = hash_file(path)
    if hashed.stat.st_size >= _filedigest.PERSIST_MIN_SIZE:
        read.append(str(path))
    return hashed


_filedigest._hash_file = counted
code = main(["run", *sys.argv[1:], "-q"])
print(json.dumps({"code": code, "read": read}))
"""


def test_a_rerun_in_a_new_process_reads_no_large_file_again(tmp_path: Path) -> None:
    """Large inputs and outputs are digested once: their digests persist in the subject's
    cache, across the derivatives' hard links (which change an entry file's ctime)."""
    from kwneuro_pydra._filedigest import PERSIST_MIN_SIZE
    from kwneuro_pydra.workflows.demo import write_demo_dataset

    bids_dir = write_demo_dataset(tmp_path / "bids", subjects=1, shape=(64, 64, 40))
    time.sleep(1.1)  # settled, as a dataset's files are: their digests may be kept
    args = [str(bids_dir), str(tmp_path / "out"), "participant", "--worker", "debug", *MASK]
    cold = subprocess.run([sys.executable, "-c", _READS, *args], capture_output=True, text=True)
    assert json.loads(cold.stdout.splitlines()[-1])["code"] == 0, cold.stderr
    cache = tmp_path / "out" / ".kwneuro-cache"
    large = [p for p in cache.rglob("*.nii.gz") if p.stat().st_size >= PERSIST_MIN_SIZE]
    assert large, "no output is large enough for this test to mean anything"
    assert all(p.stat().st_nlink == 2 for p in large)  # linked into the derivatives
    time.sleep(1.1)
    rerun = subprocess.run([sys.executable, "-c", _READS, *args], capture_output=True, text=True)
    assert json.loads(rerun.stdout.splitlines()[-1]) == {"code": 0, "read": []}, rerun.stderr


def test_a_warning_says_its_class_and_message_and_where_only_with_vv(tmp_path: Path) -> None:
    bids_dir, out = good_dataset(tmp_path / "bids", subjects=1), tmp_path / "out"
    assert (
        main(["run", str(bids_dir), str(out), "participant", "--worker", "debug", "-q", *MASK])
        == 0
    )
    (entry,) = Cache(out / ".kwneuro-cache" / "sub-01").entries("mean_b0")
    (entry.path / "mean_b0.params.json").write_text("{")  # a damaged entry warns
    plain = kwneuro("status", str(bids_dir), str(out), *MASK)
    assert "UserWarning: cache sidecar" in plain.stderr, plain.stderr
    assert "src/kwneuro_pydra/" not in plain.stderr and "warnings.warn(" not in plain.stderr
    located = "".join(kwneuro("status", str(bids_dir), str(out), *MASK, "-vv").stderr.split())
    assert "src/kwneuro_pydra/cache.py:" in located and "UserWarning:cachesidecar" in located


_BREAK_FIT = """
import os

if os.environ.get("KWNEURO_TEST_BREAK_FIT"):  # the tensor fit raises from now on
    import numpy.linalg

    def pinv(*args, **kwargs):
        raise FloatingPointError("the fit is broken by the test")

    numpy.linalg.pinv = pinv
"""


@pytest.mark.parametrize("worker", ["debug", "cf"])
def test_a_forced_step_that_raises_fails_its_series_and_the_run(
    tmp_path: Path, worker: str
) -> None:
    """``run --force estimate_dti`` where the step now raises: exit 1, the series failed at
    that step, nothing "reused", although the cache holds the older entry."""
    bids_dir, out = good_dataset(tmp_path / "bids", subjects=1), tmp_path / "out"
    args = ["run", str(bids_dir), str(out), "participant", "--worker", worker, *MASK]
    assert kwneuro(*args).returncode == 0
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_BREAK_FIT)
    broken = subprocess.run(
        [sys.executable, "-m", "kwneuro_pydra.cli", *args, "--force", "estimate_dti"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "COLUMNS": "200",
            "PYTHONPATH": str(tmp_path / "site"),
            "KWNEURO_TEST_BREAK_FIT": "1",
        },
    )
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert broken.stderr.splitlines() == [
        "FAILED sub-01: step 'estimate_dti' failed: FloatingPointError: the fit is broken by "
        "the test"
    ]
    rows = {
        cells[0]: cells[1:4]
        for line in broken.stdout.splitlines()
        if line.startswith("│")
        for cells in [[c.strip() for c in line.split("│")[1:-1]]]
    }
    assert rows["mean_b0"] == ["0", "1", "0"]  # computed, reused, failed
    assert rows["estimate_dti"] == ["0", "0", "1"]
    assert rows["fa_mosaic"] == ["0", "0", "0"]  # not run
    assert "0 series succeeded, 1 failed." in broken.stdout
    assert 'class="failed">failed' in (out / "sub-01.html").read_text()
    # status: the older entry serves (cached), and the last run's failure is said.
    status = kwneuro("status", str(bids_dir), str(out), "--json")
    (series,) = json.loads(status.stdout)["series"]
    assert series["states"]["estimate_dti"] == "cached"
    assert series["failure"] == (
        "step 'estimate_dti' failed: FloatingPointError: the fit is broken by the test"
    )
    shown = kwneuro("status", str(bids_dir), str(out)).stdout
    assert "the last run of sub-01 failed: step 'estimate_dti' failed" in shown
    assert kwneuro(*args).returncode == 0  # the older entry still serves a plain rerun
    assert (
        json.loads(kwneuro("status", str(bids_dir), str(out), "--json").stdout)["series"][0][
            "failure"
        ]
        is None
    )  # that rerun succeeded


def test_slurm_without_a_reachable_controller_says_so(tmp_path: Path) -> None:
    """``--worker slurm`` with a slurm.conf whose controller port has nothing listening: one
    line saying no controller is reachable (not that Slurm refuses the options), at once."""
    import shutil
    import socket

    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    if shutil.which("scontrol") is None or not conf.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"Slurm's commands and {conf} are needed (CI installs them)")
        pytest.skip(f"no Slurm here (scontrol, {conf})")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lines = [
        line
        for line in conf.read_text().splitlines()
        if not line.strip().lower().startswith("slurmctldport")
    ]
    (tmp_path / "slurm.conf").write_text("\n".join([*lines, f"SlurmctldPort={port}", ""]))
    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kwneuro_pydra.cli",
            "run",
            str(bids_dir),
            str(tmp_path / "out"),
            "participant",
            "--worker",
            "slurm",
            *MASK,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "SLURM_CONF": str(tmp_path / "slurm.conf")},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert "no Slurm controller reachable (scontrol ping: Slurmctld(primary) at " in line
    assert f"is DOWN): start slurmctld, or point SLURM_CONF (now {tmp_path}/slurm.conf)" in line
    assert "refuses" not in line
    assert time.monotonic() - started < 60


def test_prune_prunes_the_job_cache_and_the_scheduler_logs(tmp_path: Path) -> None:
    """``prune OUTPUT_DIR``: the job cache's run folders no run holds (the newest kept; those
    the job record names after 7 days), the record's lines of jobs long ended, subject logs
    unchanged for 30 days; ``--dry-run`` lists them and changes nothing."""
    import fcntl

    from tests import _pydra_steps as steps

    out = tmp_path / "out"
    work = out / ".kwneuro-cache"
    with Cache(work / "sub-01"):
        steps.add_one(1.0)  # a cache for prune to find
    jobs = out / "logs" / f"pydra-{os.getuid()}"
    runs = {
        name: jobs / f"run-2026010{i}T000000-{name * 8}" for i, name in enumerate("abcde", start=1)
    }
    for run in runs.values():
        (run / "array-x").mkdir(parents=True)
        (run / ".lock").write_text("")
    held = os.open(runs["d"] / ".lock", os.O_RDWR)  # a run going on
    fcntl.flock(held, fcntl.LOCK_EX)
    logs = work / ".logs"
    logs.mkdir()
    record = logs / "slurm-jobs.tsv"
    lines = [
        f"c1\t1_0\tsub-01\tall steps\t{runs['a']}/array-x/slurm-1_0.err\n",  # its run: 8 days
        f"c2\t2_0\tsub-02\tall steps\t{runs['c']}/array-x/slurm-2_0.err\n",  # replaced below
        f"c2\t3_0\tsub-02\tall steps\t{runs['c']}/array-x/slurm-3_0.err\n",  # kept: its run
        f"c3\t4\tsub-03\tstep\t{tmp_path}/elsewhere/run-x/slurm-4.err\n",  # job cache unseen
    ]
    record.write_text("".join(lines))
    old = time.time() - 8 * 86400
    (logs / "sub-01.log").write_text("old\n")
    (logs / "sub-02.log").write_text("new\n")
    os.utime(logs / "sub-01.log", (old - 30 * 86400,) * 2)
    for name in "ab":
        os.utime(runs[name], (old,) * 2)
    try:
        dry = kwneuro("prune", str(out), "--dry-run")
        assert dry.returncode == 0, dry.stderr
        gone = [runs["a"], runs["b"], logs / "sub-01.log"]
        for path in gone:
            assert f"would remove {path}\n" in dry.stdout
        assert f"would drop 2 lines of jobs long ended from {record}" in dry.stdout
        assert all(run.is_dir() for run in runs.values()) and (logs / "sub-01.log").exists()
        assert record.read_text() == "".join(lines)
        pruned = kwneuro("prune", str(out))
        assert pruned.returncode == 0, pruned.stderr
        assert f"dropped 2 lines of jobs long ended from {record}" in pruned.stdout
        assert not any(path.exists() for path in gone)
        assert all(runs[name].is_dir() for name in "cde")  # named by the record, held, newest
        assert record.read_text() == lines[2] + lines[3]
        assert (logs / "sub-02.log").read_text() == "new\n"
        again = kwneuro("prune", str(out))
        assert "dropped" not in again.stdout and "run-" not in again.stdout
    finally:
        os.close(held)

"""Scheduler options that need no scheduler: requests, their files, refusals, checks."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("pydra")

from kwneuro_pydra.pydra import SlurmWorker, load_resources, run_subjects
from kwneuro_pydra.pydra._preflight import LOCAL_FILE_SYSTEMS, file_system_of
from kwneuro_pydra.pydra._resources import Request, for_subject, requests
from kwneuro_pydra.pydra._slurm import _array_row, read_record, stuck
from kwneuro_pydra.pydra._workarounds import sbatch_args
from tests import _pydra_steps as steps

STEPS = {"brain_mask", "estimate_dti", "fa_map"}


def test_a_request_becomes_sbatch_options() -> None:
    found = requests(
        {
            "estimate_dti": {"mem": "2G", "cpus": 2, "time": "00:30:00"},
            "brain_mask": {"mem": 500, "time": 90, "options": "--partition=short --qos=x"},
            "fa_map": {"mem": "1536K", "time": "1-12"},
        },
        STEPS,
    )
    assert {step: r.sbatch_args() for step, r in found.items()} == {
        "estimate_dti": ["--mem=2048M", "--cpus-per-task=2", "--time=0-00:30:00"],
        "brain_mask": ["--mem=500M", "--time=0-01:30:00", "--partition=short", "--qos=x"],
        "fa_map": ["--mem=2M", "--time=1-12:00:00"],
    }


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (
            {"mask": {"mem": "1G"}},
            "resources name a step the pipeline does not call: 'mask' "
            r"\(its steps: brain_mask, estimate_dti, fa_map\)",
        ),
        (
            {"fa_map": "2G"},
            r"resources\['fa_map'\] must be a mapping of mem, cpus, time, "
            "options, not str",
        ),
        (
            {"fa_map": {"memory": "2G"}},
            r"resources\['fa_map'\]: unknown key\(s\) 'memory' "
            r"\(expected some of mem, cpus, time, options\)",
        ),
        (
            {"fa_map": {"mem": "2 GB"}},
            r"resources\['fa_map'\]\['mem'\] = '2 GB': expected a "
            "size such as '500M'",
        ),
        ({"fa_map": {"mem": 0}}, r"\['mem'\] = 0: expected a size"),
        ({"fa_map": {"cpus": 1.5}}, r"\['cpus'\] = 1.5: expected a positive integer"),
        ({"fa_map": {"cpus": True}}, r"\['cpus'\] = True: expected a positive integer"),
        (
            {"fa_map": {"time": "half an hour"}},
            r"\['time'\] = 'half an hour': expected a "
            "Slurm duration",
        ),
        ({"fa_map": {"time": "00:00:00"}}, "expected a positive duration"),
        ({"fa_map": {"options": ["-p", "x"]}}, "expected a string of sbatch options"),
    ],
)
def test_bad_requests_name_the_step_the_key_and_what_was_expected(
    resources: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        requests(resources, STEPS)  # type: ignore[arg-type]


@given(st.integers(min_value=1, max_value=400 * 86400))
def test_a_time_limit_reads_back_as_given(seconds: int) -> None:
    (written,) = Request(seconds=seconds).sbatch_args()
    read = requests({"s": {"time": written.removeprefix("--time=")}}, {"s"})
    assert read["s"].seconds == seconds


def test_a_job_per_subject_asks_for_the_largest_and_the_sum_of_all_steps_times() -> None:
    a = Request(mem_mb=300, cpus=None, seconds=300, options=("--qos=x",))
    b = Request(mem_mb=2048, cpus=2, seconds=1800, options=("--qos", "x", "--exclusive"))
    three = ("brain_mask", "estimate_dti", "fa_map")
    named = {"brain_mask": a, "estimate_dti": b, "fa_map": Request(seconds=60)}
    assert for_subject(named, three) == Request(2048, 2, 2160, ("--qos=x", "--exclusive"))
    # a step without a time counts UNNAMED_STEP_TIME, named in resources or not
    assert for_subject({"estimate_dti": Request(seconds=60)}, three).seconds == 60 + 2 * 3600
    assert for_subject({"estimate_dti": b}, three, unnamed_time=10).seconds == 1820
    assert for_subject({"brain_mask": Request(cpus=4)}, three) == Request(cpus=4)  # no time
    assert for_subject({}, three) == Request()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("--partition=a", "--partition=b"),
        ("-p a", "--partition b"),
        ("-pa", "--partition=b"),
        ("--gres=gpu:1", "--gres=gpu:2"),
    ],
)
def test_two_steps_setting_one_option_differently_are_refused_in_one_job(
    first: str, second: str, tmp_path: Path
) -> None:
    found = requests({"brain_mask": {"options": first}, "fa_map": {"options": second}}, STEPS)
    with pytest.raises(
        ValueError,
        match=r"resources: steps 'brain_mask' and 'fa_map' run in one "
        r"job per subject but ask for different --(partition|gres) ",
    ):
        for_subject(found, sorted(STEPS))
    with pytest.raises(ValueError, match="ask for different"):  # before anything is submitted
        run_subjects(
            steps.pipeline3,
            {"sub-01": {"dwi": "a"}},
            tmp_path,
            worker="slurm",
            granularity="subject",
            resources={"brain_mask": {"options": first}, "fa_map": {"options": second}},
        )
    assert not (tmp_path / ".logs").exists()


@pytest.mark.parametrize(
    ("given", "why"),
    [
        (
            "--array=0-4",
            "submits a job per subject as job arrays itself; throttle them with "
            r"max_running \(--max-running\)",
        ),
        ("-a 1-3", "as job arrays itself"),
        ("--job-name=mine", "names each job after its subject"),
        ("-J mine", "names each job"),
        ("--parsable", "reads the job id"),
        ("--wrap=true", "submits its own job script"),
    ],
)
def test_sbatch_options_the_worker_sets_itself_are_refused_with_the_reason(
    given: str, why: str, tmp_path: Path
) -> None:
    one = {"sub-01": {"dwi": "a"}}
    option = given.split("=")[0].split(" ")[0]
    with pytest.raises(ValueError, match=f"sbatch_args: '{option}.*' is not accepted: .*{why}"):
        run_subjects(steps.pipeline, one, tmp_path, worker="slurm", sbatch_args=given)
    with pytest.raises(ValueError, match=rf"resources\['fa_map'\]\['options'\]: '{option}"):
        requests({"fa_map": {"options": f"--qos=x {given}"}}, STEPS)
    with pytest.raises(ValueError, match="is not accepted"):
        SlurmWorker(sbatch_args=given)  # type: ignore[call-arg]
    assert not (tmp_path / ".logs").exists()


def test_max_running_must_be_a_positive_integer() -> None:
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match=f"max_running={bad!r}: expected a positive integer"):
            SlurmWorker(max_running=bad)  # type: ignore[call-arg]
    for poll, longest in ((0, 60), (5, 1)):
        with pytest.raises(ValueError, match="expected 0 < poll_delay <= max_poll_delay"):
            SlurmWorker(poll_delay=poll, max_poll_delay=longest)  # type: ignore[call-arg]
    assert SlurmWorker(poll_delay=90).max_poll_delay == 90  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"detach needs a job per subject"):
        SlurmWorker(detach=True)  # type: ignore[call-arg]
    assert SlurmWorker(poll_delay=5).max_poll_delay == 60  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("reason", "stuck_"),
    [
        ("Resources", False),
        ("Priority", False),
        ("Dependency", False),
        ("BeginTime", False),
        ("JobArrayTaskLimit", False),
        ("None", False),
        ("PartitionDown", True),
        ("DependencyNeverSatisfied", True),
        ("BadConstraints", True),
        ("ReqNodeNotAvail, UnavailableNodes:vm-2", True),
        ("AssocGrpCpuLimit", True),
        ("QOSMaxWallDurationPerJobLimit", True),
        ("InvalidAccount", True),
    ],
)
def test_pending_reasons_that_waiting_does_not_resolve(reason: str, stuck_: bool) -> None:
    assert stuck(reason) is stuck_


def test_an_array_task_without_its_own_record_takes_its_arrays() -> None:
    """Slurm 22.05 records no task cancelled before it started, only its array."""
    rows = {"7_0": "COMPLETED", "7_[1-3,5%2]": "CANCELLED by 0", "9": "CANCELLED by 0"}
    assert _array_row("7_2", rows) == "CANCELLED by 0"
    assert _array_row("7_5", rows) == "CANCELLED by 0"
    assert _array_row("7_4", rows) is None
    assert _array_row("9_3", rows) == "CANCELLED by 0"  # its tasks cancelled one by one
    assert _array_row("12", rows) is None


def test_the_record_of_jobs_ignores_a_line_cut_short(tmp_path: Path) -> None:
    record = tmp_path / "slurm-jobs.tsv"
    assert read_record(record) == {}
    record.write_text(
        "abc\t12_0\tsub-01\tall steps\t/j/e.err\nabc\t13_0\tsub-01\tall steps"
        "\t/j/f.err\ndef\t14\tsub-02\tfa_map\t/j"
    )  # killed mid-write
    assert read_record(record) == {"abc": ("13_0", Path("/j/f.err"))}


def test_resources_files(tmp_path: Path) -> None:
    toml = tmp_path / "resources.toml"
    toml.write_text('[estimate_dti]\nmem = "2G"\ncpus = 2\ntime = "00:30:00"\n')
    as_json = tmp_path / "resources.json"
    as_json.write_text(json.dumps({"estimate_dti": {"mem": "2G", "cpus": 2, "time": "00:30:00"}}))
    assert (
        load_resources(toml)
        == load_resources(as_json)
        == {"estimate_dti": {"mem": "2G", "cpus": 2, "time": "00:30:00"}}
    )
    for name, text, message in [
        ("r.yaml", "a: 1", "must end in .toml or .json"),
        ("r.toml", "[estimate_dti\n", "cannot read resources"),
        ("r.json", '{"estimate_dti": 2}', "expected a table of options per step name"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            load_resources(tmp_path / name)


def test_output_options_are_refused_and_no_requeue_is_the_default() -> None:
    assert sbatch_args("--partition=short") == ["--partition=short", "--no-requeue"]
    assert sbatch_args("--requeue") == ["--requeue"]
    assert sbatch_args("--no-requeue -J x") == ["--no-requeue", "-J", "x"]
    for refused in ("-e err.txt", "--error=x", "-o out", "--output x", "-ex", "-ofile"):
        with pytest.raises(ValueError, match="is not accepted: each job's output and error"):
            sbatch_args(refused)


def test_unknown_workers_and_misplaced_options_are_refused(tmp_path: Path) -> None:
    one = {"sub-01": {"dwi": "a"}}
    with pytest.raises(ValueError, match=r"unknown worker 'slurmm': expected one of .*cf"):
        run_subjects(steps.pipeline, one, tmp_path, worker="slurmm")
    with pytest.raises(
        ValueError,
        match=r"resources, pending_timeout need worker='slurm' "
        r"\(worker is 'cf'\)",
    ):
        run_subjects(
            steps.pipeline,
            one,
            tmp_path,
            worker="cf",
            resources={"brain_mask": {"mem": "1G"}},
            pending_timeout=5,
        )
    with pytest.raises(ValueError, match=r"granularity='job': expected one of 'node', 'subject'"):
        run_subjects(steps.pipeline, one, tmp_path, worker="cf", granularity="job")
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A directory on a read-only file system (a tmpfs mounted ro; as root) or read-only."""
    where = tmp_path / "ro"
    where.mkdir()
    if os.geteuid() != 0:
        where.chmod(0o555)
        yield where
        where.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a read-only file system here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_cache_root_that_cannot_be_written_is_refused(read_only: Path) -> None:
    with pytest.raises(
        ValueError,
        match=f"cache root {read_only / 'derivatives'} is not "
        r"writable: \[Errno (30|13)\]",
    ):
        run_subjects(steps.pipeline, {"sub-01": {"dwi": "a"}}, read_only / "derivatives")


def test_the_file_system_of_a_path_is_read_from_the_mount_table(tmp_path: Path) -> None:
    mount, kind = file_system_of(tmp_path)
    assert Path(mount) == tmp_path or Path(mount) in tmp_path.parents
    found = subprocess.run(
        ["findmnt", "-n", "-o", "TARGET,FSTYPE", "-T", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    if found.returncode == 0:
        assert found.stdout.split() == [mount, kind]
    assert file_system_of(Path("/proc/self"))[1] == "proc" not in LOCAL_FILE_SYSTEMS


def test_the_cluster_options_of_the_command_line() -> None:
    import argparse

    from kwneuro_pydra.cli._cluster import add_scheduler_options, scheduler_options

    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", default="cf")
    parser.add_argument("--n-procs", type=int)
    add_scheduler_options(parser)
    given = parser.parse_args(
        [
            "--worker",
            "slurm",
            "--max-running",
            "20",
            "--max-poll-delay",
            "30",
            "--job-cache",
            "/tmp/j",
        ]
    )
    assert scheduler_options(given) == {
        "max_running": 20,
        "max_poll_delay": 30.0,
        "job_cache": Path("/tmp/j"),
    }
    assert scheduler_options(parser.parse_args([])) == {}
    assert scheduler_options(parser.parse_args(["--job-cache", "j"])) == {"job_cache": Path("j")}
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-running", "0"])

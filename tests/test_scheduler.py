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

from kwneuro_pydra.pydra import load_resources, run_subjects
from kwneuro_pydra.pydra._preflight import LOCAL_FILE_SYSTEMS, file_system_of
from kwneuro_pydra.pydra._resources import Request, in_sequence, requests
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
        ({"mask": {"mem": "1G"}}, "resources name a step the pipeline does not call: 'mask' "
                                  r"\(its steps: brain_mask, estimate_dti, fa_map\)"),
        ({"fa_map": "2G"}, r"resources\['fa_map'\] must be a mapping of mem, cpus, time, "
                           "options, not str"),
        ({"fa_map": {"memory": "2G"}}, r"resources\['fa_map'\]: unknown key\(s\) 'memory' "
                                       r"\(expected some of mem, cpus, time, options\)"),
        ({"fa_map": {"mem": "2 GB"}}, r"resources\['fa_map'\]\['mem'\] = '2 GB': expected a "
                                      "size such as '500M'"),
        ({"fa_map": {"mem": 0}}, r"\['mem'\] = 0: expected a size"),
        ({"fa_map": {"cpus": 1.5}}, r"\['cpus'\] = 1.5: expected a positive integer"),
        ({"fa_map": {"cpus": True}}, r"\['cpus'\] = True: expected a positive integer"),
        ({"fa_map": {"time": "half an hour"}}, r"\['time'\] = 'half an hour': expected a "
                                               "Slurm duration"),
        ({"fa_map": {"time": "00:00:00"}}, "expected a positive duration"),
        ({"fa_map": {"options": ["-p", "x"]}}, "expected a string of sbatch options"),
    ],
)  # fmt: skip
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


def test_steps_in_one_job_ask_for_the_largest_and_the_sum_of_times() -> None:
    a = Request(mem_mb=300, cpus=None, seconds=300, options=("--qos=x",))
    b = Request(mem_mb=2048, cpus=2, seconds=1800, options=("--qos=x", "--exclusive"))
    assert in_sequence([a, b]) == Request(2048, 2, 2100, ("--qos=x", "--exclusive"))
    assert in_sequence([a, Request(cpus=4)]).seconds is None  # one step without a limit
    assert in_sequence([]) == Request()


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
    with pytest.raises(ValueError, match=r"resources, pending_timeout need worker='slurm' "
                       r"\(worker is 'cf'\)"):  # fmt: skip
        run_subjects(steps.pipeline, one, tmp_path, worker="cf",
                     resources={"brain_mask": {"mem": "1G"}}, pending_timeout=5)  # fmt: skip
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
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode:
        pytest.skip(f"cannot mount a read-only file system here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_cache_root_that_cannot_be_written_is_refused(read_only: Path) -> None:
    with pytest.raises(ValueError, match=f"cache root {read_only / 'derivatives'} is not "
                       r"writable: \[Errno (30|13)\]"):  # fmt: skip
        run_subjects(steps.pipeline, {"sub-01": {"dwi": "a"}}, read_only / "derivatives")


def test_the_file_system_of_a_path_is_read_from_the_mount_table(tmp_path: Path) -> None:
    mount, kind = file_system_of(tmp_path)
    assert Path(mount) == tmp_path or Path(mount) in tmp_path.parents
    found = subprocess.run(["findmnt", "-n", "-o", "TARGET,FSTYPE", "-T", str(tmp_path)],
                           capture_output=True, text=True)  # fmt: skip
    if found.returncode == 0:
        assert found.stdout.split() == [mount, kind]
    assert file_system_of(Path("/proc/self"))[1] == "proc" not in LOCAL_FILE_SYSTEMS

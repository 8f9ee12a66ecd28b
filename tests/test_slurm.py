"""`run_subjects` on a real Slurm (``.ci/slurm/start.sh``): requests, granularity, failures.

Without a usable Slurm these tests skip, unless ``CI`` is set: then they fail. Select them
with ``-m slurm``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pydra")

from kwneuro_pydra.pydra import ClusterWarning, SchedulerError, SlurmWorker, run_subjects, to_task
from kwneuro_pydra.pydra._preflight import (
    LOCAL_FILE_SYSTEMS,
    check_slurm,
    file_system_of,
    slurm_unavailable,
)
from kwneuro_pydra.pydra._resources import Request
from tests import _pydra_steps as steps
from tests import _scheduler_steps

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm
FAST: dict[str, Any] = {"poll_delay": 0.2}


PRIVATE_CONF = Path(
    os.environ.get("KWNEURO_SLURM_STATE", "/var/tmp/kwneuro-slurm"), "etc", "slurm.conf"
)
"""Where ``.ci/slurm/start.sh`` writes its cluster's configuration."""


@pytest.fixture(autouse=True)
def slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip (fail with CI set) without Slurm; make the tests' steps importable on the node.

    The cluster is the one ``SLURM_CONF`` names, else ``.ci/slurm/start.sh``'s if it made one.
    """
    if "SLURM_CONF" not in os.environ and PRIVATE_CONF.exists():
        monkeypatch.setenv("SLURM_CONF", str(PRIVATE_CONF))
    missing = slurm_unavailable()
    deadline = time.monotonic() + 60
    while missing and re.search(r"\bcomp\b", missing) and time.monotonic() < deadline:
        time.sleep(0.5)  # the node still completes the jobs of the test before
        missing = slurm_unavailable()
    if missing:
        message = f"{missing}; start one with .ci/slurm/start.sh (as root)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and Slurm is not usable: {message}")
        pytest.skip(message)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("PYDRA_HASH_CACHE", raising=False)


def submitted(root: Path, subject: str) -> dict[str, str]:
    """Job id -> step of every job submitted for ``subject`` (read from its log); an array
    task's id is ``<array>_<index>``."""
    log = root / ".logs" / f"{subject}.log"
    text = log.read_text() if log.exists() else ""
    return dict(re.findall(r"\[scheduler\] slurm job ([\d_]+): (.+?) submitted", text))


def accounting(job_ids: list[str], *more: str) -> dict[str, dict[str, str]]:
    """sacct's record of each job: name, state, memory, CPUs and time limit asked for, and
    the fields ``more`` names.

    slurmdbd fills a job's record in shortly after the job ends: wait for every job's record
    with its CPUs, time limit and ``more`` (10 s at most).
    """
    fields = ["JobID", "JobName", "State", "ReqMem", "ReqCPUS", "Timelimit", *more]
    for _ in range(50):
        done = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", ",".join(fields)],
            capture_output=True,
            text=True,
            check=True,
        )
        lines = done.stdout.splitlines()
        rows = {
            r["JobID"]: r
            for r in (dict(zip(fields, line.split("|"), strict=True)) for line in lines)
        }
        filled = (r["ReqCPUS"] != "0" and all(r[f] for f in fields) for r in rows.values())
        if set(rows) >= set(job_ids) and all(filled):
            break
        time.sleep(0.2)
    return rows


def asked(job_ids: dict[str, str]) -> dict[str, tuple[str, str, str]]:
    """(memory, CPUs, time limit) each step's job asked for, by step, from sacct."""
    rows = accounting(list(job_ids))
    return {
        step: (rows[j]["ReqMem"], rows[j]["ReqCPUS"], rows[j]["Timelimit"])
        for j, step in job_ids.items()
    }


def test_each_step_gets_its_own_request_and_a_rerun_submits_only_what_it_must(
    tmp_path: Path,
) -> None:
    resources: dict[str, dict[str, Any]] = {
        "brain_mask": {"mem": "300M", "time": 5},
        "estimate_dti": {"mem": "2G", "cpus": 2, "time": "00:30:00"},
    }
    root = tmp_path / "slurm"
    results = run_subjects(
        steps.pipeline3,
        {"sub-01": {"dwi": "a"}},
        root,
        worker="slurm",
        resources=resources,
        **FAST,
    )
    reference = run_subjects(
        steps.pipeline3, {"sub-01": {"dwi": "a"}}, tmp_path / "debug", worker="debug"
    )
    assert results["sub-01"].ok and results["sub-01"].outputs == reference["sub-01"].outputs
    for name in ("brain_mask", "estimate_dti", "fa_map"):  # the entries, byte for byte
        ours = sorted(p for p in (root / "sub-01").rglob(f"{name}.json"))
        theirs = sorted(p for p in (tmp_path / "debug" / "sub-01").rglob(f"{name}.json"))
        assert [p.read_bytes() for p in ours] == [p.read_bytes() for p in theirs] != []

    jobs = submitted(root, "sub-01")
    assert sorted(jobs.values()) == ["brain_mask", "estimate_dti", "fa_map"]
    assert asked(jobs) == {
        "brain_mask": ("300M", "1", "00:05:00"),
        "estimate_dti": ("2G", "2", "00:30:00"),
        "fa_map": ("1G", "1", "UNLIMITED"),  # the cluster's defaults
    }
    dti = next(j for j, step in jobs.items() if step == "estimate_dti")
    shown = subprocess.run(["scontrol", "show", "job", dti], capture_output=True, text=True)
    if shown.returncode == 0:  # the controller forgets jobs MinJobAge after they end
        assert {"MinMemoryNode=2G", "NumCPUs=2", "TimeLimit=00:30:00"} <= set(shown.stdout.split())

    log = (root / ".logs" / "sub-01.log").read_text()
    for job, step in jobs.items():  # the node's own log records, tagged with its job
        assert f"[job {job} {step}] kwneuro_pydra.pydra INFO: [sub-01] {step}: done" in log

    again = run_subjects(
        steps.pipeline3,
        {"sub-01": {"dwi": "a"}},
        root,
        worker="slurm",
        resources=resources,
        **FAST,
    )
    assert again["sub-01"].outputs == results["sub-01"].outputs
    assert submitted(root, "sub-01") == jobs

    forced = run_subjects(
        steps.pipeline3,
        {"sub-01": {"dwi": "a"}},
        root,
        worker="slurm",
        force={"estimate_dti"},
        **FAST,
    )
    assert forced["sub-01"].outputs == results["sub-01"].outputs
    log = (root / ".logs" / "sub-01.log").read_text()
    computed = {step: log.count(f"INFO: {step}: computing") for step in jobs.values()}
    assert computed == {"brain_mask": 1, "estimate_dti": 2, "fa_map": 2}  # forced and after
    new = {job: step for job, step in submitted(root, "sub-01").items() if job not in jobs}
    assert sorted(new.values()) == ["estimate_dti", "fa_map"]  # brain_mask: from the cache


def test_one_job_per_subject_runs_its_steps_inside(tmp_path: Path) -> None:
    resources: dict[str, dict[str, Any]] = {
        "brain_mask": {"mem": "300M", "time": 5},
        "estimate_dti": {"mem": "2G", "cpus": 2, "time": "00:30:00"},
        "fa_map": {"time": "1:00"},
    }
    subjects = {"sub-01": {"dwi": "a"}, "sub-02": {"dwi": "bad"}, "sub-03": {"dwi": "c"}}
    root = tmp_path / "slurm"
    results = run_subjects(
        steps.pipeline3,
        subjects,
        root,
        worker="slurm",
        granularity="subject",
        resources=resources,
        **FAST,
    )
    reference = run_subjects(steps.pipeline3, subjects, tmp_path / "debug", worker="debug")
    assert {s: r.outputs for s, r in results.items()} == {
        s: r.outputs for s, r in reference.items()
    }
    bad = results["sub-02"].failure
    assert bad is not None and bad.step == "brain_mask"  # the step's own failure
    assert isinstance(bad.exception, ValueError) and "cannot mask bad" in str(bad.exception)
    tasks = {}
    for subject in subjects:
        jobs = submitted(root, subject)
        assert list(jobs.values()) == ["all steps"]
        # the largest memory and CPUs, the sum of the times: 5 + 30 + 1 minutes
        assert asked(jobs) == {"all steps": ("2G", "2", "00:36:00")}
        tasks.update(dict.fromkeys(jobs, subject))
    # one sbatch call: a job array, a task per subject
    assert {job.split("_")[0] for job in tasks} == {next(iter(tasks)).split("_")[0]}
    assert sorted(job.split("_")[1] for job in tasks) == ["0", "1", "2"]
    names = {row["JobName"] for row in accounting(list(tasks)).values()}
    assert names == {"kwneuro-pydra:sub-01..sub-03"}
    log = (root / ".logs" / "sub-01.log").read_text()
    (task,) = submitted(root, "sub-01")  # the job's own lines say the array task, too
    assert f"[job {task} all steps] kwneuro_pydra.pydra INFO: [sub-01] brain_mask: done" in log


def block_the_node(tmp_path: Path) -> str:
    """Submit a job holding both CPUs of the default partition's node; return its id."""
    return subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--cpus-per-task=2",
            "--job-name=kwneuro-test-blocker",
            f"--output={tmp_path / 'blocker.out'}",
            "--wrap",
            "sleep 300",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_a_job_pending_on_resources_is_never_cancelled(tmp_path: Path) -> None:
    """Resources (the cluster is busy) resolves by waiting: pending_timeout does not count it."""
    blocker = block_the_node(tmp_path)
    threading.Timer(6, subprocess.run, (["scancel", blocker],)).start()
    root = tmp_path / "slurm"
    results = run_subjects(
        steps.pipeline,
        {"sub-01": {"dwi": "a"}},
        root,
        worker="slurm",
        pending_timeout=1,
        max_poll_delay=0.5,
        **FAST,
    )
    assert results["sub-01"].outputs == "dti(a,mask(a,0.5))"
    jobs = submitted(root, "sub-01")
    assert sorted(jobs.values()) == ["brain_mask", "estimate_dti"]  # each once
    first = min(jobs, key=int)
    started = accounting([first], "Start", "Submit")[first]
    assert started["State"] == "COMPLETED"
    assert _seconds(started["Start"]) - _seconds(started["Submit"]) >= 4  # it did wait


def _seconds(stamp: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(stamp).timestamp()


def test_a_job_pending_on_a_dependency_never_satisfied_is_cancelled(tmp_path: Path) -> None:
    failed = subprocess.run(
        ["sbatch", "--parsable", f"--output={tmp_path / 'failed.out'}", "--wrap", "false"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    while accounting([failed])[failed]["State"] != "FAILED":
        time.sleep(0.2)
    root = tmp_path / "slurm"
    results = run_subjects(
        steps.pipeline,
        {"sub-01": {"dwi": "a"}},
        root,
        worker="slurm",
        sbatch_args=f"--dependency=afterok:{failed}",
        pending_timeout=2,
        **FAST,
    )
    failure = results["sub-01"].failure
    assert failure is not None and isinstance(failure.exception, SchedulerError)
    jobs = submitted(root, "sub-01")
    assert list(jobs.values()) == ["brain_mask"]  # not resubmitted, nothing after it
    (job,) = jobs
    error = failure.exception
    assert (error.job_id, error.state, failure.step) == (job, "PENDING", "brain_mask")
    assert f"Slurm job {job} (brain_mask for sub-01) was pending for " in str(error)
    assert "for a reason waiting does not resolve (Slurm's reason: Dependency" in str(error)
    assert accounting([job])[job]["State"].startswith("CANCELLED")


def test_a_cancelled_job_is_said_plainly_and_not_resubmitted(tmp_path: Path) -> None:
    root = tmp_path / "slurm"
    results = run_subjects(
        _scheduler_steps.cancelled, {"sub-01": {"x": 1.0}}, root, worker="slurm", **FAST
    )
    failure = results["sub-01"].failure
    assert failure is not None and isinstance(failure.exception, SchedulerError)
    jobs = submitted(root, "sub-01")
    (job,) = jobs  # --no-requeue, and no second submission
    assert (failure.exception.job_id, failure.exception.state) == (job, "CANCELLED")
    assert str(failure) == (
        f"sub-01: step 'cancel_self' failed: SchedulerError: Slurm job {job} (cancel_self for "
        "sub-01) ended CANCELLED: the job was cancelled (scancel, or by an administrator)"
    )
    assert accounting([job])[job]["State"].startswith("CANCELLED")


@pytest.mark.slow
def test_a_job_over_its_time_limit_is_said_plainly(tmp_path: Path) -> None:
    root = tmp_path / "slurm"
    results = run_subjects(
        _scheduler_steps.overrunning,
        {"sub-01": {"x": 1.0}},
        root,
        worker="slurm",
        resources={"overrun": {"time": 1}},
        **FAST,
    )
    failure = results["sub-01"].failure
    assert failure is not None and isinstance(failure.exception, SchedulerError)
    assert failure.exception.state == "TIMEOUT"
    assert "reached its time limit: raise 'time' for this step" in str(failure.exception)
    assert len(submitted(root, "sub-01")) == 1


def test_a_job_out_of_memory_is_said_plainly(tmp_path: Path) -> None:
    root = tmp_path / "slurm"
    resources = {"hungry": {"mem": "300M"}}
    results = run_subjects(
        _scheduler_steps.starving,
        {"sub-01": {"x": 1.0}},
        root,
        worker="slurm",
        resources=resources,
        **FAST,
    )
    failure = results["sub-01"].failure
    assert failure is not None and isinstance(failure.exception, SchedulerError)
    assert failure.exception.state == "OUT_OF_MEMORY"
    assert "ran out of memory: raise 'mem' for this step" in str(failure.exception)
    assert len(submitted(root, "sub-01")) == 1  # not resubmitted


def test_a_node_failing_under_a_job_is_said_plainly(tmp_path: Path) -> None:
    root = tmp_path / "slurm"
    try:
        results = run_subjects(
            _scheduler_steps.failing_node, {"sub-01": {"x": 1.0}}, root, worker="slurm", **FAST
        )
    finally:  # bring the node back (ReturnToService may already have)
        nodes = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, check=True
        ).stdout.split()
        for node in set(nodes):  # resuming a node that is up only makes scontrol complain
            subprocess.run(
                ["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True
            )
        for _ in range(100):
            if slurm_unavailable() is None:
                break
            time.sleep(0.2)
    failure = results["sub-01"].failure
    assert failure is not None and isinstance(failure.exception, SchedulerError)
    assert failure.exception.state == "NODE_FAIL"
    assert "the node running the job failed" in str(failure.exception)
    assert len(submitted(root, "sub-01")) == 1  # not resubmitted
    assert slurm_unavailable() is None  # the node is back for the other tests


def test_without_accounting_jobs_are_still_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pydra's worker raises 'Job information not found' after each job without sacct."""
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
    lines = [line for line in conf.splitlines() if not line.startswith("AccountingStorage")]
    (tmp_path / "slurm.conf").write_text(
        "\n".join([*lines, "AccountingStorageType=accounting_storage/none", ""])
    )
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    assert subprocess.run(["sacct", "-n"], capture_output=True).returncode != 0
    with pytest.warns(ClusterWarning, match="Slurm accounting unavailable"):
        results = run_subjects(
            steps.pipeline, {"sub-01": {"dwi": "a"}}, tmp_path / "c", worker="slurm", **FAST
        )
    assert results["sub-01"].outputs == "dti(a,mask(a,0.5))"


def test_a_cache_root_on_a_local_file_system_is_warned_about_where_jobs_see_two_nodes(
    tmp_path: Path,
) -> None:
    """The test cluster's partition ``two`` has two nodes (a second slurmd, see start.sh);
    its default partition one. tmp_path is on this machine's disk: not shared."""
    mount, kind = file_system_of(tmp_path)
    assert kind in LOCAL_FILE_SYSTEMS
    nodes = subprocess.run(
        ["sinfo", "-h", "-N", "-p", "two", "-o", "%N %t"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert len({line.split()[0] for line in nodes.splitlines()}) == 2
    root = tmp_path / "slurm"
    local = (
        f"cache root {root} is on a local file system ({kind} mounted at {mount}) but the "
        "jobs may run on any of the 2 nodes of partition two: jobs on other nodes will not see it"
    )
    with pytest.warns(ClusterWarning) as caught:
        results = run_subjects(
            steps.pipeline,
            {"sub-01": {"dwi": "a"}},
            root,
            worker="slurm",
            sbatch_args="--partition=two",
            **FAST,
        )
    assert any(str(w.message).startswith(local) for w in caught), [str(w.message) for w in caught]
    assert results["sub-01"].outputs == "dti(a,mask(a,0.5))"  # both nodes see this machine's disk
    jobs = submitted(root, "sub-01")
    assert {row["Partition"] for row in accounting(list(jobs), "Partition").values()} == {"two"}

    places = {"cache root": root}
    with pytest.warns(ClusterWarning, match="any of the 2 nodes of partitions debug, two: "):
        check_slurm(places, {}, "", {"estimate_dti": Request(options=("--partition=two",))})
    with warnings.catch_warnings():  # the default partition has one node: nothing to say
        warnings.simplefilter("error")
        check_slurm(places, {}, "", {"estimate_dti": Request(mem_mb=300)})


class PrivateCluster:
    """A second Slurm cluster on this machine, private to a test, without accounting, whose
    controller forgets a job 2 s after it ends (MinJobAge=2; it purges every 10 s), whose
    commands give up on an unreachable controller after 1 s (MessageTimeout) and whose job
    arrays hold two tasks at most (MaxArraySize=2). Its own
    slurmctld and slurmd, in the foreground, on their own ports and state directory, leave
    the shared cluster alone."""

    def __init__(self, where: Path) -> None:
        host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
        hardware = subprocess.run(["slurmd", "-C"], capture_output=True, text=True).stdout
        hardware = hardware.splitlines()[0].split(" ", 1)[1]  # without NodeName=<host>
        self.where = where
        self.conf = where / "slurm.conf"
        (where / "state").mkdir()
        (where / "spool").mkdir()
        self.conf.write_text(f"""\
ClusterName=kwneuro-forgetful
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort=6917
SlurmUser=root
AuthType=auth/munge
StateSaveLocation={where}/state
SlurmdSpoolDir={where}/spool
SlurmctldPidFile={where}/slurmctld.pid
SlurmdPidFile={where}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerParameters=sched_min_interval=0,batch_sched_delay=0
MailProg=/bin/true
MinJobAge=2
MessageTimeout=1
MaxArraySize=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=forgetful NodeHostname={host} NodeAddr=127.0.0.1 Port=6921 {hardware}
PartitionName=forgetful Nodes=forgetful Default=YES MaxTime=INFINITE State=UP
""")
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, daemon: str) -> None:
        """Start ``slurmctld`` (it recovers its saved state) or ``slurmd``; wait for the node."""
        command = ["slurmd", "-D", "-N", "forgetful"] if daemon == "slurmd" else [daemon, "-D"]
        command += ["-f", str(self.conf)]
        with open(self.where / f"{daemon}.log", "a") as log:
            self.daemons[daemon] = subprocess.Popen(command, env=self.env, stdout=log, stderr=log)
        for _ in range(150):
            up = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True
            ).stdout.split()
            if up and (daemon == "slurmctld" or up[0] in ("idle", "mix", "alloc")):
                return
            time.sleep(0.2)
        pytest.fail(f"{daemon} did not come up: {(self.where / f'{daemon}.log').read_text()}")

    def stop(self, daemon: str) -> None:
        """Stop a daemon this cluster started (SIGTERM: slurmctld saves its state)."""
        process = self.daemons.pop(daemon)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def forgetful() -> Iterator[PrivateCluster]:
    """A `PrivateCluster`, up, and stopped afterwards whatever happens."""
    import shutil
    import tempfile

    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI is set: this test starts Slurm daemons, which needs root")
        pytest.skip("starting Slurm daemons needs root")
    cluster = PrivateCluster(Path(tempfile.mkdtemp(prefix="kwneuro-forgetful-")))  # short
    try:
        cluster.start("slurmctld")
        cluster.start("slurmd")
        yield cluster
    finally:
        for daemon in reversed(list(cluster.daemons)):
            cluster.stop(daemon)
        shutil.rmtree(cluster.where, ignore_errors=True)


def submitter(code: str, cluster: PrivateCluster, *args: Path | str) -> subprocess.Popen[str]:
    """Run ``code`` in a fresh interpreter that submits to ``cluster`` (argv: ``args``)."""
    import sys

    from tests._children import child_env

    env = child_env(SLURM_CONF=str(cluster.conf))
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def first_job(root: Path, process: subprocess.Popen[str]) -> str:
    """The id of the first job ``process`` submitted for sub-01 (once it has)."""
    for _ in range(300):
        if submitted(root, "sub-01") or process.poll() is not None:
            break
        time.sleep(0.1)
    return next(iter(submitted(root, "sub-01")))


SUBMIT = (
    "import json, sys\n"
    "from kwneuro_pydra.pydra import run_subjects\n"
    "from tests import _scheduler_steps\n"
    "pipeline = getattr(_scheduler_steps, sys.argv[3])\n"
    "result = run_subjects(pipeline, {'sub-01': {'x': 1.0}}, sys.argv[1], worker='slurm',"
    " job_cache=sys.argv[2], poll_delay=0.2)['sub-01']\n"
    "error = result.failure and result.failure.exception\n"
    "print(json.dumps([result.outputs] if error is None else\n"
    "                 [result.failure.step, error.state, error.job_id, str(error)]))\n"
)
"""Runs a pipeline of `_scheduler_steps` (argv: root, job cache, name) for sub-01 on Slurm;
prints its outputs or failure."""


def test_a_job_neither_the_controller_nor_accounting_knows_is_said_unknown(
    forgetful: PrivateCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without accounting, a job's outcome is known only while the controller remembers it.
    A submitter suspended (Ctrl-Z, a laptop asleep) until the controller has forgotten its
    finished job finds nobody to ask: the subject fails saying so, and is not resubmitted."""
    import json
    import signal

    root, jobs = tmp_path / "slurm", tmp_path / "jobs"
    process = submitter(SUBMIT, forgetful, root, jobs, "lingering")
    try:
        job = first_job(root, process)  # it lingers 3 s
        process.send_signal(signal.SIGSTOP)
        for _ in range(300):  # until the controller has forgotten the job
            said = subprocess.run(
                ["squeue", "-h", "-t", "all", "-j", job],
                env=forgetful.env,
                capture_output=True,
                text=True,
            )
            if "Invalid job id" in said.stderr:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the controller still knows job {job}: {said.stdout}")
        process.send_signal(signal.SIGCONT)
        out, err = process.communicate(timeout=60)
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait()
    assert process.returncode == 0, err
    step, state, job_id, message = json.loads(out.splitlines()[-1])
    assert (step, state, job_id) == ("linger", "UNKNOWN", job)
    assert message.startswith(
        f"Slurm job {job} (linger for sub-01): the controller no longer knows it and accounting "
        "has no record of it (accounting unavailable? sacct said: Slurm accounting storage is "
        "disabled); its outcome is unknown. Start slurmdbd"
    )
    assert list(submitted(root, "sub-01").values()) == ["linger"]  # not resubmitted

    # The job did complete: its step is cached, and a rerun submits only the next step.
    monkeypatch.setenv("SLURM_CONF", str(forgetful.conf))
    with pytest.warns(ClusterWarning, match="Slurm accounting unavailable"):
        again = run_subjects(
            _scheduler_steps.lingering,
            {"sub-01": {"x": 1.0}},
            root,
            worker="slurm",
            job_cache=jobs,
            **FAST,
        )
    assert again["sub-01"].outputs == 2.0
    assert list(submitted(root, "sub-01").values()) == ["linger", "double"]


def test_subjects_beyond_the_largest_job_array_go_to_another_array(
    forgetful: PrivateCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(forgetful.conf))
    subjects = {f"sub-0{i}": {"x": float(i)} for i in (1, 2, 3)}
    root, jobs = tmp_path / "slurm", tmp_path / "jobs"
    with pytest.warns(ClusterWarning, match="Slurm accounting unavailable"):
        results = run_subjects(
            steps.chain4,
            subjects,
            root,
            worker="slurm",
            granularity="subject",
            job_cache=jobs,
            **FAST,
        )
    outputs = {s: r.outputs for s, r in results.items()}
    assert outputs == {"sub-01": 10.0, "sub-02": 14.0, "sub-03": 18.0}
    tasks = sorted(job.split("_") for s in subjects for job in submitted(root, s))
    arrays = sorted({array for array, _ in tasks})
    assert len(arrays) == 2  # MaxArraySize=2: two sbatch calls for three subjects
    assert tasks == [[arrays[0], "0"], [arrays[0], "1"], [arrays[1], "0"]]


def test_jobs_are_followed_through_a_controller_restart(
    forgetful: PrivateCluster, tmp_path: Path
) -> None:
    """While slurmctld restarts, squeue cannot reach it (and there is no accounting): the
    worker waits for it instead of giving the job up."""
    import json

    root, jobs = tmp_path / "slurm", tmp_path / "jobs"
    process = submitter(SUBMIT, forgetful, root, jobs, "lingering")
    try:
        first_job(root, process)
        forgetful.stop("slurmctld")
        time.sleep(10)  # squeue fails after 1 s each time: more than 5 polls without an answer
        forgetful.start("slurmctld")
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == [2.0]
    assert list(submitted(root, "sub-01").values()) == ["linger", "double"]


def test_a_controller_that_stops_answering_is_given_up_on(
    forgetful: PrivateCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from pydra.engine.submitter import Submitter  # type: ignore[import-untyped]

    from kwneuro_pydra.pydra import SlurmWorker

    monkeypatch.setenv("SLURM_CONF", str(forgetful.conf))
    worker = SlurmWorker(poll_delay=0.2, controller_timeout=2)  # type: ignore[call-arg]
    task = to_task(_scheduler_steps.linger)(x=1.0, cache_dir=str(tmp_path / "sub-01"))

    raised: list[BaseException] = []

    def run() -> None:
        with Submitter(cache_root=tmp_path / "jobs", worker=worker) as submitter:
            try:
                submitter(task, raise_errors=True)
            except SchedulerError as error:
                raised.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        for _ in range(300):
            if worker.job_ids or not thread.is_alive():
                break
            time.sleep(0.1)
        forgetful.stop("slurmctld")
    finally:
        thread.join(timeout=60)
    assert not thread.is_alive()
    error = worker.failures["sub-01"]
    assert raised == [error]
    (job,) = worker.job_ids
    assert (error.job_id, error.state, error.step) == (job, "UNKNOWN", "linger")
    assert re.match(
        rf"Slurm job {job} \(linger for sub-01\): the controller has not answered for \d+ s "
        r"\(squeue said: slurm_load_jobs error: Unable to contact slurm controller .*\) and "
        r"accounting has no record of the job; its outcome is unknown\. Check slurmctld ",
        str(error),
    ), str(error)


@pytest.fixture
def outsider(tmp_path: Path) -> Iterator[object]:
    """A pipeline whose step imports here (via sys.path) but not in a fresh interpreter."""
    import importlib
    import sys

    where = tmp_path / "elsewhere"
    where.mkdir()
    (where / "outside_steps.py").write_text(
        "from kwneuro_pydra import cacheable\n"
        "from tests._pydra_steps import json_spec\n\n"
        "@cacheable(json_spec('outside'))\n"
        "def outside(x: float) -> float:\n    return x\n\n"
        "def pipeline(x: float) -> float:\n    return outside(x)\n"
    )
    sys.path.insert(0, str(where))
    try:
        yield importlib.import_module("outside_steps").pipeline
    finally:
        sys.path.remove(str(where))
        sys.modules.pop("outside_steps", None)


def test_what_cannot_work_is_refused_before_submitting(tmp_path: Path, outsider: object) -> None:
    root = tmp_path / "slurm"
    one = {"sub-01": {"dwi": "a"}}
    with pytest.raises(ValueError, match=r"sbatch_args: '-e' is not accepted: .*Pydra 1.0a12"):
        run_subjects(steps.pipeline, one, root, worker="slurm", sbatch_args="-e /tmp/err")
    with pytest.raises(
        ValueError,
        match=r"Slurm refuses the options of every job "
        r"\(--bogus --no-requeue\): sbatch: unrecognized option '--bogus'",
    ):
        run_subjects(steps.pipeline, one, root, worker="slurm", sbatch_args="--bogus")
    with pytest.raises(
        ValueError,
        match=r"Slurm refuses the options of estimate_dti \(.*"
        r"--cpus-per-task=64\): .*Requested node configuration is not available",
    ):
        run_subjects(
            steps.pipeline, one, root, worker="slurm", resources={"estimate_dti": {"cpus": 64}}
        )
    with pytest.raises(
        ValueError,
        match=r"step 'outside' \(outside_steps.outside\): "
        r"ModuleNotFoundError: No module named 'outside_steps'",
    ):
        run_subjects(outsider, {"sub-01": {"x": 1.0}}, root, worker="slurm")  # type: ignore[arg-type]
    assert not (root / ".logs").exists()  # nothing was submitted


def test_upstream_slurm_worker_still_crashes_on_dash_e(tmp_path: Path) -> None:
    """Why `_workarounds.sbatch_args` refuses -e: when this fails, upstream fixed it."""
    from pydra.engine.submitter import Submitter

    task = to_task(steps.add_one)(x=1.0, cache_dir=str(tmp_path / "s"))
    crashing = {"worker": "slurm", "sbatch_args": f"-e {tmp_path}/e"}
    with (
        Submitter(cache_root=tmp_path / "p", **crashing) as sub,
        pytest.raises(AttributeError, match="'NoneType' object has no attribute 'replace'"),
    ):
        sub(task, raise_errors=True)


def test_every_command_of_the_cluster_page_runs(tmp_path: Path) -> None:
    """docs/cluster.md: its bash and python blocks, in order, in one directory."""
    import sys
    import tomllib

    page = (ROOT / "docs" / "cluster.md").read_text()
    blocks = re.findall(r"```(bash|python|toml)\n(.*?)```", page, re.S)
    assert [kind for kind, _ in blocks] == ["bash", "python", "bash", "toml", "python", "python"]
    (tmp_path / ".ci").symlink_to(ROOT / ".ci")
    outputs = []
    for kind, code in blocks:
        if kind == "toml":
            written = tomllib.loads(code)
            continue
        if kind == "bash" and "start.sh" in code:  # Slurm is up, the test points at it
            code = re.sub(r"\.ci/slurm/start.sh\n|export SLURM_CONF=.*\n", "", code)
        command = (
            ["bash", "-euo", "pipefail", "-c", code]
            if kind == "bash"
            else [sys.executable, "-c", code]
        )
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, f"{code}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    start, run, logs, loaded, by_hand = outputs
    assert start.startswith("NODELIST CPUS MEMORY STATE\n")
    assert run.splitlines() == ["sub-01 ok", "sub-02 ok"]
    assert "kwneuro-pydra:sub-01:estimate_dti  COMPLETED         2G        2   00:30:00" in logs
    assert "[job " in logs and "estimate_dti: done" in logs
    assert loaded.strip() == str(written)
    assert re.fullmatch(r"FA in \S+\.nii\.gz - jobs \['\d+', '\d+'\]\n", by_hand)
    assert (tmp_path / "by-hand" / "sub-01").is_dir()


@pytest.mark.parametrize("granularity", ["node", "subject"])
def test_steps_defined_in_a_script_run_on_slurm(granularity: str, tmp_path: Path) -> None:
    """A job per subject builds the workflow in the job: the steps travel with the pipeline."""
    import textwrap

    from tests.test_pydra_main import EXPECTED, STEPS, run_script

    script = tmp_path / "analysis.py"
    script.write_text(
        textwrap.dedent(STEPS)
        + textwrap.dedent(f"""
        if __name__ == "__main__":
            import sys
            results = run_subjects(pipeline, {{"a": {{"x": 1.0}}, "b": {{"x": 2.0}}}},
                                   sys.argv[1], worker="slurm", granularity={granularity!r},
                                   poll_delay=0.2)
            print(json.dumps({{s: [r.outputs, str(r.failure) if r.failure else None]
                              for s, r in results.items()}}))
    """)
    )
    assert run_script(script, tmp_path / "derivatives") == EXPECTED
    assert len(submitted(tmp_path / "derivatives", "a")) == (2 if granularity == "node" else 1)


def test_the_bids_app_runs_on_slurm_with_per_step_requests(tmp_path: Path) -> None:
    from kwneuro_pydra.cli import main
    from tests.bids_data import MASK, good_dataset

    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    resources = tmp_path / "resources.toml"
    resources.write_text('[estimate_dti]\nmem = "700M"\ncpus = 2\ntime = "00:20:00"\n')
    out = tmp_path / "out"
    args = [
        "run",
        str(bids_dir),
        str(out),
        "participant",
        "--worker",
        "slurm",
        *MASK,
        "--resources",
        str(resources),
        "--poll-delay",
        "0.2",
    ]
    assert main(args) == 0
    assert (out / "sub-01/dwi/sub-01_model-tensor_param-fa_dwimap.nii.gz").is_file()
    jobs = submitted(out / ".kwneuro-cache", "sub-01")
    assert "estimate_dti" in jobs.values() and "brain_mask" in jobs.values()
    requests = asked(jobs)
    assert requests["estimate_dti"] == ("700M", "2", "00:20:00")
    assert requests["brain_mask"] != requests["estimate_dti"]
    assert main(args) == 0  # a rerun is served from the cache: nothing more is submitted
    assert submitted(out / ".kwneuro-cache", "sub-01") == jobs


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Wrappers of sbatch, squeue and sacct first on PATH, logging each call (time, command,
    arguments) to the file returned."""
    where, log = tmp_path / "wrappers", tmp_path / "calls.log"
    where.mkdir()
    for command in ("sbatch", "squeue", "sacct"):
        real = shutil.which(command)
        wrapper = where / command
        wrapper.write_text(
            f'#!/bin/sh\necho "$(date +%s.%N) {command} $*" >> {log}\nexec {real} "$@"\n'
        )
        wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{where}:{os.environ['PATH']}")
    return log


def logged(log: Path) -> list[tuple[float, str, str]]:
    """The calls a `calls` log holds: (time, command, arguments)."""
    found = []
    for line in log.read_text().splitlines():
        stamp, command, args = [*line.split(" ", 2), ""][:3]
        found.append((float(stamp), command, args))
    return found


def test_all_jobs_are_followed_with_one_query_a_look_backing_off_while_nothing_changes(
    tmp_path: Path, calls: Path
) -> None:
    """20 subjects pending behind a busy node: one squeue a look for all their array tasks,
    no sacct while none left the queue, and the looks thin out (0.2 s doubling to 1 s)."""
    subjects = {f"sub-{i:02d}": {"dwi": f"s{i}"} for i in range(20)}
    blocker = block_the_node(tmp_path)
    cancelled: list[float] = []

    def unblock() -> None:
        cancelled.append(time.time())
        subprocess.run(["scancel", blocker], check=True)

    threading.Timer(10, unblock).start()
    root = tmp_path / "slurm"
    results = run_subjects(
        steps.pipeline,
        subjects,
        root,
        worker="slurm",
        granularity="subject",
        max_poll_delay=1,
        **FAST,
    )
    outputs = {s: r.outputs for s, r in results.items()}
    assert outputs == {s: f"dti({v['dwi']},mask({v['dwi']},0.5))" for s, v in subjects.items()}
    found = logged(calls)
    (submission,) = [t for t, command, args in found if command == "sbatch" and "--array" in args]
    waiting = [(command, args) for t, command, args in found if submission < t < cancelled[0]]
    looks = [args for command, args in waiting if command == "squeue"]
    times = [round(t - submission, 2) for t, command, _ in found if command == "squeue"]
    seconds = cancelled[0] - submission
    # without backing off: seconds / 0.2 looks (about 45); with it: 0.2, 0.4, 0.8, then
    # 1 s apart (about 12), give or take a reason changing and a busy machine
    assert 3 <= len(looks) <= seconds + 5, (times, seconds)
    assert [command for command, _ in waiting].count("sacct") == 0  # nobody left the queue
    array = next(iter(submitted(root, "sub-00"))).split("_")[0]
    assert all(f"-j {array} " in args for args in looks)  # one id for the 20 tasks
    follow = [command for t, command, _ in found if t > submission]
    assert follow.count("sacct") <= follow.count("squeue")


SUBJECTS = (
    "import sys\n"
    "from kwneuro_pydra.pydra import run_subjects\n"
    "from tests import _pydra_steps as steps\n"
    "subjects = {f'sub-{i:02d}': {'dwi': f's{i}'} for i in range(int(sys.argv[3]))}\n"
    "results = run_subjects(steps.pipeline, subjects, sys.argv[1], worker='slurm',"
    " granularity='subject', job_cache=sys.argv[2], poll_delay=0.2, max_poll_delay=0.5)\n"
    "print(sum(r.ok for r in results.values()))\n"
)
"""Runs `steps.pipeline` for N subjects a job each (argv: root, job cache, N) on Slurm."""


def tasks_of(root: Path, subjects: list[str]) -> dict[str, list[str]]:
    """The array tasks submitted for each subject, from the subjects' logs."""
    return {s: list(submitted(root, s)) for s in subjects}


@pytest.mark.parametrize("how", ["kill -9", "SIGINT", "SIGTERM"])
def test_a_rerun_after_the_submitter_died_follows_its_jobs_or_it_cancelled_them(
    how: str, tmp_path: Path
) -> None:
    """A submitter killed with jobs queued: a rerun follows them (no subject gets a second
    array task). Ctrl-C and SIGTERM cancel what the run submitted, saying so in one line."""
    from tests._children import child_env

    root, jobs, n = tmp_path / "slurm", tmp_path / "jobs", 4
    names = [f"sub-{i:02d}" for i in range(n)]
    blocker = block_the_node(tmp_path)
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", SUBJECTS, str(root), str(jobs), str(n)],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(300):
            if all(tasks_of(root, names).values()) or process.poll() is not None:
                break
            time.sleep(0.1)
        first = tasks_of(root, names)
        assert all(len(t) == 1 for t in first.values()), first
        time.sleep(1)  # the submitter follows them now
        signals = {"kill -9": signal.SIGKILL, "SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}
        process.send_signal(signals[how])
        _, err = process.communicate(timeout=60)
        ids = sorted(t for tasks in first.values() for t in tasks)
        if how == "kill -9":
            assert process.returncode == -signal.SIGKILL
            array = ids[0].split("_")[0]
            states = subprocess.run(
                ["squeue", "-h", "-r", "-j", array, "-o", "%T"], capture_output=True, text=True
            ).stdout.split()
            assert states == ["PENDING"] * n  # still queued
        else:
            said = [line for line in err.splitlines() if line.startswith("kwneuro-pydra:")]
            what = "interrupted" if how == "SIGINT" else "SIGTERM"
            assert said == [
                f"kwneuro-pydra: {what}: cancelled {n} Slurm job(s) this run "
                f"submitted: {' '.join(sorted(ids, key=lambda j: int(j.split('_')[1])))}"
            ]
            assert "Task was destroyed" not in err
            assert process.returncode == (-signal.SIGINT if how == "SIGINT" else 143), err
        # the jobs stay queued while the rerun starts
        threading.Timer(8, subprocess.run, (["scancel", blocker],)).start()
        again = run_subjects(
            steps.pipeline,
            {s: {"dwi": f"s{int(s[4:])}"} for s in names},
            root,
            worker="slurm",
            granularity="subject",
            job_cache=jobs,
            max_poll_delay=0.5,
            **FAST,
        )
    finally:
        subprocess.run(["scancel", blocker], check=True)
    assert all(r.ok for r in again.values()), again
    after = tasks_of(root, names)
    if how == "kill -9":  # followed: still one array task a subject
        assert after == first
        log = (root / ".logs" / "sub-00.log").read_text()
        assert f"slurm job {first['sub-00'][0]}: all steps followed" in log
    else:  # cancelled: one new task each, the old ones never ran
        assert all(len(after[s]) == 2 and after[s][0] == first[s][0] for s in names)
        array = ids[0].split("_")[0]
        rows = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,State"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert not set(ids) & {line.split("|")[0] for line in rows.splitlines()}  # none ran
        assert "CANCELLED" in rows


def test_a_job_limits_threads_to_its_cpus_and_keeps_caches_in_the_job_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # set by the user: kept
    root, jobs = tmp_path / "slurm", tmp_path / "jobs"
    results = run_subjects(
        _scheduler_steps.environmental,
        {"sub-01": {"x": 1.0}},
        root,
        worker="slurm",
        job_cache=jobs,
        resources={"environment": {"cpus": 2}},
        **FAST,
    )
    seen = json.loads(results["sub-01"].outputs)
    (run,) = jobs.glob("run-*")  # this run's directory of the job cache
    assert seen == {
        "MPLCONFIGDIR": str(run / "config" / "matplotlib"),
        "OMP_NUM_THREADS": "2",
        "OPENBLAS_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "3",
    }


@pytest.mark.parametrize("granularity", ["node", "subject"])
def test_completed_jobs_leave_nothing_in_the_job_cache(granularity: str, tmp_path: Path) -> None:
    """A completed job's script, pickle and output files go; a failed job's stay."""
    root, jobs = tmp_path / "slurm", tmp_path / "jobs"
    subjects = {"sub-01": {"x": 1.0}, "sub-02": {"x": 2.0}}
    results = run_subjects(
        steps.chain4,
        subjects,
        root,
        worker="slurm",
        job_cache=jobs,
        granularity=granularity,
        **FAST,
    )
    assert all(r.ok for r in results.values())
    (first,) = jobs.glob("run-*")  # this run's directory of the job cache
    assert not list((first / "slurm_scripts").iterdir())
    failed = run_subjects(
        _scheduler_steps.cancelled,
        {"sub-01": {"x": 1.0}},
        root,
        worker="slurm",
        job_cache=jobs,
        granularity=granularity,
        **FAST,
    )
    assert not failed["sub-01"].ok
    (second,) = set(jobs.glob("run-*")) - {first}
    kept = sorted(p.name.startswith("array-") for p in (second / "slurm_scripts").iterdir())
    assert kept == ([False, True] if granularity == "subject" else [False])  # its script (array)


def test_a_second_test_cluster_runs_beside_this_one(tmp_path: Path) -> None:
    """.ci/slurm/start.sh with another state directory, ports and name: a second cluster on
    this machine, with accounting; the first one goes on as before; /etc/slurm is untouched."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI is set: this test starts Slurm daemons, which needs root")
        pytest.skip("starting Slurm daemons needs root")
    etc = {p: p.stat().st_mtime_ns for p in Path("/etc/slurm").glob("*")}
    state = tmp_path / "second"
    env = dict(
        os.environ,
        KWNEURO_SLURM_STATE=str(state),
        KWNEURO_SLURM_PORT="7200",
        KWNEURO_SLURM_CLUSTER="kwsecond",
    )
    env.pop("SLURM_CONF", None)
    try:
        started = subprocess.run(
            [str(ROOT / ".ci/slurm/start.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert started.returncode == 0, started.stderr
        assert started.stdout.splitlines()[-1] == f"export SLURM_CONF={state}/etc/slurm.conf"
        second = dict(os.environ, SLURM_CONF=f"{state}/etc/slurm.conf")
        config = subprocess.run(
            ["scontrol", "show", "config"], env=second, capture_output=True, text=True, check=True
        ).stdout
        assert re.search(r"^ClusterName\s*=\s*kwsecond$", config, re.M)
        script = (
            "import sys\nfrom kwneuro_pydra.pydra import run_subjects\n"
            "from tests import _pydra_steps as steps\n"
            "r = run_subjects(steps.pipeline, {'sub-01': {'dwi': 'a'}}, sys.argv[1],"
            " worker='slurm', poll_delay=0.2)\nprint(r['sub-01'].outputs)\n"
        )
        from tests._children import child_env

        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "c2")],
            env=child_env(SLURM_CONF=second["SLURM_CONF"]),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.stdout.strip() == "dti(a,mask(a,0.5))", done.stderr
        jobs = list(submitted(tmp_path / "c2", "sub-01"))
        rows = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", ",".join(jobs), "-o", "JobID,Cluster,State"],
            env=second,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert {line.split("|")[1] for line in rows.splitlines()} == {"kwsecond"}
        # meanwhile this one answers as before
        results = run_subjects(
            steps.pipeline, {"sub-01": {"dwi": "b"}}, tmp_path / "c1", worker="slurm", **FAST
        )
        assert results["sub-01"].outputs == "dti(b,mask(b,0.5))"
        ours = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, check=True
        ).stdout
        assert not re.search(r"^ClusterName\s*=\s*kwsecond$", ours, re.M)
    finally:
        subprocess.run([str(ROOT / ".ci/slurm/stop.sh")], env=env, capture_output=True)
    assert not list((state / "started").iterdir())  # it stopped what it started
    assert {p: p.stat().st_mtime_ns for p in Path("/etc/slurm").glob("*")} == etc


@pytest.mark.parametrize("granularity", ["node", "subject"])
def test_max_running_throttles_the_jobs(granularity: str, tmp_path: Path) -> None:
    """max_running=1: a job array's %1, or one job a time from the submitter; the jobs run
    one after the other."""
    subjects = {f"sub-0{i}": {"x": float(i)} for i in (1, 2, 3)}
    root = tmp_path / "slurm"
    results = run_subjects(
        _scheduler_steps.lingering,
        subjects,
        root,
        worker="slurm",
        granularity=granularity,
        max_running=1,
        **FAST,
    )
    assert {s: r.outputs for s, r in results.items()} == {
        "sub-01": 2.0,
        "sub-02": 4.0,
        "sub-03": 6.0,
    }
    tasks = [job for s in subjects for job in submitted(root, s)]
    rows = accounting(tasks, "Start", "End")
    spans = sorted((_seconds(rows[j]["Start"]), _seconds(rows[j]["End"])) for j in tasks)
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans)), spans


def test_a_detached_run_leaves_its_jobs_which_can_be_seen_cancelled_or_collected(
    tmp_path: Path,
) -> None:
    from kwneuro_pydra.pydra._slurm import cancel_recorded, recorded_states

    subjects = {f"sub-0{i}": {"dwi": f"s{i}"} for i in (1, 2, 3)}
    root = tmp_path / "slurm"
    record = root / ".logs" / "slurm-jobs.tsv"
    blocker = block_the_node(tmp_path)
    try:
        start = time.monotonic()
        left = run_subjects(
            steps.pipeline,
            subjects,
            root,
            worker="slurm",
            granularity="subject",
            detach=True,
            **FAST,
        )
        assert time.monotonic() - start < 60  # the node is held for 300 s: nothing waited
        errors = {s: r.failure.exception for s, r in left.items() if r.failure}
        assert {s: e.state for s, e in errors.items()} == dict.fromkeys(subjects, "DETACHED")
        first = {s: e.job_id for s, e in errors.items()}
        pending = {s: (j, "all steps", "PENDING") for s, j in first.items()}
        assert recorded_states(record) == pending
        assert cancel_recorded(record) == sorted(first.values())
        deadline = time.monotonic() + 60  # a cancelled pending task reaches sacct a little later
        while "UNKNOWN" in {state for _, _, state in recorded_states(record).values()}:
            assert time.monotonic() < deadline, "accounting never recorded the cancellation"
            time.sleep(1)
        assert {state for _, _, state in recorded_states(record).values()} == {"CANCELLED"}
        again = run_subjects(
            steps.pipeline,
            subjects,
            root,
            worker="slurm",
            granularity="subject",
            detach=True,
            **FAST,
        )
        second = {s: r.failure.exception.job_id for s, r in again.items() if r.failure}
        assert set(second) == set(subjects) and not set(second.values()) & set(first.values())
    finally:
        subprocess.run(["scancel", blocker], check=True)
    collected = run_subjects(
        steps.pipeline, subjects, root, worker="slurm", granularity="subject", **FAST
    )
    assert {s: r.outputs for s, r in collected.items()} == {
        s: f"dti({v['dwi']},mask({v['dwi']},0.5))" for s, v in subjects.items()
    }
    assert tasks_of(root, list(subjects)) == {s: [first[s], second[s]] for s in subjects}


def kwneuro_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the command in a fresh process, as a user does (the cluster of ``SLURM_CONF``)."""
    return subprocess.run(
        [sys.executable, "-m", "kwneuro_pydra.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def job_states(out: Path) -> dict[str, tuple[str, str]]:
    """Series -> (job id, state) as ``status OUTPUT_DIR --json`` shows them."""
    shown = kwneuro_cli("status", out, "--json")
    assert shown.returncode == 0, shown.stderr
    return {j["name"]: (j["job_id"], j["state"]) for j in json.loads(shown.stdout)["jobs"]}


def wait_for_states(out: Path, wanted: set[str], seconds: float = 240) -> dict[str, str]:
    """Poll ``status OUTPUT_DIR`` until every series' job is in one of ``wanted``."""
    deadline = time.monotonic() + seconds
    while True:
        states = {name: state for name, (_, state) in job_states(out).items()}
        if set(states.values()) <= wanted:
            return states
        assert time.monotonic() < deadline, states
        time.sleep(2)


def test_the_bids_app_detaches_status_follows_and_a_later_run_collects(tmp_path: Path) -> None:
    """``run --detach`` submits (a job per series, implied) and exits 0 saying how to follow;
    ``status OUTPUT_DIR`` shows the jobs queued, then running or completed; the same ``run``
    without ``--detach`` follows them (submitting nothing) and writes the derivatives."""
    from tests.bids_data import MASK, good_dataset

    bids_dir = good_dataset(tmp_path / "bids", subjects=2)
    out = tmp_path / "out"
    args = ["run", bids_dir, out, "participant", "--worker", "slurm", *MASK, "--poll-delay", "0.2"]
    blocker = block_the_node(tmp_path)
    try:
        start = time.monotonic()
        detached = kwneuro_cli(*args, "--detach")
        assert detached.returncode == 0, detached.stderr
        assert time.monotonic() - start < 120  # the node is held: nothing waited for the jobs
        assert "Submitted 3 series as Slurm jobs and detached" in detached.stdout
        assert f"kwneuro-pydra status {out}" in detached.stdout
        assert f"kwneuro-pydra cancel {out}" in detached.stdout
        assert "without --detach" in detached.stdout
        assert not (out / "report.html").exists() and not (out / "sub-01").exists()
        queued = job_states(out)
        assert set(queued) == {"sub-01", "sub-02_ses-1", "sub-02_ses-2"}
        assert {state for _, state in queued.values()} == {"queued"}
        shown = kwneuro_cli("status", out)
        assert shown.returncode == 0, shown.stderr
        assert "3 queued" in shown.stdout and f"kwneuro-pydra cancel {out}" in shown.stdout
        for name, (job, _) in queued.items():
            assert re.search(rf"{name}\s+job {job}\s+queued \(PENDING\)", shown.stdout)
        cache_table = kwneuro_cli("status", bids_dir, out, "--json")  # says jobs were sent
        jobs = {name: job for name, (job, _) in queued.items()}
        assert json.loads(cache_table.stdout)["jobs"] == jobs, cache_table.stderr
        said = kwneuro_cli("status", bids_dir, out).stdout
        assert "Slurm jobs were submitted for 3 series not complete in the cache" in said
        assert all(f"{name} (job {job})" in said for name, job in jobs.items()), said
        again = kwneuro_cli(*args, "--detach")  # still queued: followed, never submitted again
        assert again.returncode == 0, again.stderr
        assert job_states(out) == queued
    finally:
        subprocess.run(["scancel", blocker], check=True)
    wait_for_states(out, {"running", "completed"})
    collected = kwneuro_cli(*args)
    assert collected.returncode == 0, collected.stderr
    for name in queued:
        subject, _, session = name.partition("_")
        folder = out / subject / session / "dwi" if session else out / subject / "dwi"
        assert (folder / f"{name}_model-tensor_param-fa_dwimap.nii.gz").is_file()
    assert (out / "report.html").is_file()
    work = out / ".kwneuro-cache"
    assert tasks_of(work, list(queued)) == {name: [job] for name, (job, _) in queued.items()}
    assert wait_for_states(out, {"completed"}) == dict.fromkeys(queued, "completed")
    assert "Collect the results" in kwneuro_cli("status", out).stdout
    assert json.loads(kwneuro_cli("status", bids_dir, out, "--json").stdout)["jobs"] == {}


def test_a_detached_run_is_cancelled_from_the_command_line(tmp_path: Path) -> None:
    """``cancel OUTPUT_DIR`` cancels the detached run's jobs, naming each; ``status`` then
    shows them cancelled, and squeue has none of them."""
    from tests.bids_data import MASK, good_dataset

    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    out = tmp_path / "out"
    args = ["run", bids_dir, out, "participant", "--worker", "slurm", *MASK, "--detach"]
    blocker = block_the_node(tmp_path)
    try:
        assert kwneuro_cli(*args).returncode == 0
        (name, (job, state)), *_ = job_states(out).items()
        assert (name, state) == ("sub-01", "queued")
        cancelled = kwneuro_cli("cancel", out)
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.splitlines() == [
            f"cancelled Slurm job {job} (all steps for sub-01)",
            "1 Slurm job cancelled",
        ]
        assert wait_for_states(out, {"cancelled"}, seconds=60) == {"sub-01": "cancelled"}
        live = subprocess.run(
            ["squeue", "--me", "-h", "-r", "-o", "%i"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert job not in live
        nothing = kwneuro_cli("cancel", out)
        assert nothing.stdout.splitlines()[-1].startswith("0 Slurm jobs cancelled (none")
    finally:
        subprocess.run(["scancel", blocker], check=True)


@pytest.fixture
def drained() -> Iterator[str]:
    """Partition ``two``'s second node (``<host>-2``), drained; resumed afterwards."""
    nodes = subprocess.run(
        ["sinfo", "-h", "-N", "-p", "two", "-o", "%N"], capture_output=True, text=True, check=True
    ).stdout.split()
    node = next(n for n in nodes if n.endswith("-2"))
    subprocess.run(
        ["scontrol", "update", f"nodename={node}", "state=drain", "reason=kwneuro-test"],
        check=True,
    )
    try:
        yield node
    finally:  # (an error when the test resumed it already)
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=False)


def _run_on(node: str, tmp_path: Path, **options: Any) -> tuple[SlurmWorker, bool | None, float]:
    """Run one `add_one` node as a job pinned to ``node`` (past `run_subjects`' checks, which
    refuse a drained node); return the worker, what ``run`` returned (None: it raised a
    SchedulerError, in ``failures``) and the seconds it took."""
    from pydra.engine.job import Job  # type: ignore[import-untyped]
    from pydra.engine.submitter import Submitter  # type: ignore[import-untyped]

    worker = SlurmWorker(log_dir=str(tmp_path / "logs"), **options)
    worker.poll_delay, worker.max_poll_delay = 0.2, 0.5  # poll_delay: Pydra's, untyped
    worker.sbatch_args = f"--partition=two --nodelist={node}"
    task = to_task(steps.add_one)(x=1.0, cache_dir=str(tmp_path / "sub-01"))
    start = time.monotonic()
    with Submitter(cache_root=tmp_path / "p", worker="debug") as submitter:
        job = Job(task, submitter=submitter, name="n")
        try:
            done = submitter.loop.run_until_complete(worker.run(job))
        except SchedulerError:
            done = None
        seconds = time.monotonic() - start
        left = [task for task in asyncio.all_tasks(submitter.loop) if not task.done()]
        for task in left:  # the worker's look at the queue, between two looks
            task.cancel()
        submitter.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
    return worker, done, seconds


def test_a_job_pending_on_a_drained_node_waits_node_grace(drained: str, tmp_path: Path) -> None:
    """ReqNodeNotAvail (a node drained for maintenance) counts towards pending_timeout only
    after node_grace: a node back within the grace runs the job; one that stays drained has
    the job cancelled once grace and timeout have passed, with Slurm's reason."""
    threading.Timer(
        4, subprocess.run, (["scontrol", "update", f"nodename={drained}", "state=resume"],)
    ).start()
    worker, done, _ = _run_on(drained, tmp_path / "back", pending_timeout=1, node_grace=20)
    assert done is True and worker.failures == {}
    (job,) = worker.job_ids
    log = (tmp_path / "back" / "logs" / "sub-01.log").read_text()
    assert f"slurm job {job}: add_one ended COMPLETED" in log
    subprocess.run(
        ["scontrol", "update", f"nodename={drained}", "state=drain", "reason=kwneuro-test"],
        check=True,
    )
    worker, done, seconds = _run_on(drained, tmp_path / "gone", pending_timeout=1, node_grace=4)
    assert done is None
    error = worker.failures["sub-01"]
    assert error.state == "PENDING"
    assert "Slurm's reason: ReqNodeNotAvail" in str(error)
    assert 5 <= seconds < 60  # the grace, then the timeout
    (job,) = worker.job_ids
    assert accounting([job])[job]["State"].startswith("CANCELLED")


@pytest.mark.parametrize("granularity", ["node", "subject"])
def test_a_result_a_job_cannot_store_is_returned_and_warned_about_once(
    granularity: str, tmp_path: Path
) -> None:
    """Two step folders of one subject's cache planted as links (refused, never followed):
    the jobs compute the steps, keep their file-backed results in the job cache (shared with
    the node) for the step after them, and each step's warning reaches this process, once."""
    from kwneuro_pydra.cache import NotStoredWarning

    root, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "s1").mkdir(parents=True)
    unstored = ["make_volume", "scale_volume"]
    for step in unstored:
        (root / "s1" / step).symlink_to(elsewhere, target_is_directory=True)
    with pytest.warns(NotStoredWarning) as caught:
        results = run_subjects(
            steps.volumes,
            {"s1": {"n": 6}, "s2": {"n": 6}},
            root,
            worker="slurm",
            granularity=granularity,
            job_cache=tmp_path / "jobs",
            **FAST,
        )
    said = sorted(str(w.message) for w in caught if w.category is NotStoredWarning)
    assert len(said) == len(unstored), said
    for step, warning in zip(unstored, said, strict=True):
        assert warning.startswith(f"s1: step '{step}': cannot store results in"), warning
        assert "symbolic link" in warning and str(root / "s1" / step) in warning, warning
    assert results["s1"].ok and results["s2"].ok
    assert results["s1"].outputs == pytest.approx(results["s2"].outputs)
    assert sorted(results["s1"].not_stored) == unstored and not results["s2"].not_stored
    assert list(elsewhere.iterdir()) == [], "nothing written through the links"
    assert (root / "s1" / "volume_mean").is_dir(), "the step after them is stored"
    kept = (tmp_path / "jobs").rglob("kwneuro-not-stored.json")  # written on the node
    assert sorted(s for p in kept for s in json.loads(p.read_text())["steps"]) == unstored
    assert len(submitted(root, "s1")) == (3 if granularity == "node" else 1)


@pytest.mark.parametrize("granularity", ["node", "subject"])
def test_the_bids_app_on_slurm_writes_a_series_its_cache_cannot_store(
    granularity: str, tmp_path: Path
) -> None:
    """Every step folder of the series' cache a planted link: the series succeeds on Slurm,
    its derivatives as a normal run's, each step's warning given once in this process."""
    from kwneuro_pydra.app import run_bids_app
    from kwneuro_pydra.app._series import pipeline
    from kwneuro_pydra.cache import NotStoredWarning
    from tests.bids_data import good_dataset
    from tests.reliability.test_not_stored import PARAMETERS, _derivatives

    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    reference = run_bids_app(
        bids_dir, tmp_path / "reference", worker="debug", parameters=PARAMETERS
    )
    assert reference.ok
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    work = out / ".kwneuro-cache" / "sub-01"
    work.mkdir(parents=True)
    names = [step.__name__ for step in pipeline().STEPS]
    for name in names:
        (work / name).symlink_to(elsewhere, target_is_directory=True)
    with pytest.warns(NotStoredWarning) as caught:
        result = run_bids_app(
            bids_dir,
            out,
            worker="slurm",
            parameters=PARAMETERS,
            granularity=granularity,
            **FAST,
        )
    assert result.ok, [s.failure for s in result.series]
    said = [str(w.message) for w in caught if w.category is NotStoredWarning]
    assert len(said) == len(names), said
    for name in names:  # once each
        assert sum(w.startswith(f"sub-01: step '{name}': cannot store") for w in said) == 1
    assert list(elsewhere.iterdir()) == [], "nothing written through the links"
    written = _derivatives(out)
    assert written == _derivatives(tmp_path / "reference"), "as a normal run writes them"
    assert len([n for n in written if n.endswith(".nii.gz")]) == 10
    assert (out / "sub-01.html").is_file()
    assert len(submitted(out / ".kwneuro-cache", "sub-01")) == (
        len(names) if granularity == "node" else 1
    )

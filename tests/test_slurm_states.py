"""How `SlurmWorker` reads each final Slurm state, without a cluster.

``sbatch`` and ``squeue`` are stand-in executables first on ``PATH``: sbatch accepts the job,
squeue reports the state under test. The worker runs everything else for real (the job's
script and pickle, the per-subject log, `SlurmWorker.failures`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

pytest.importorskip("pydra")

from pydra.engine.job import Job  # type: ignore[import-untyped]
from pydra.engine.submitter import Submitter  # type: ignore[import-untyped]

from kwneuro_pydra.pydra import SchedulerError, SlurmWorker, to_task
from kwneuro_pydra.pydra._slurm import FINAL_STATE_MEANINGS
from tests import _pydra_steps as steps


def _stand_ins(where: Path, state: str) -> None:
    where.mkdir()
    scripts = {
        "sbatch": "echo 'Submitted batch job 4242'",
        "squeue": f"echo '4242|{state}|None'",  # %i|%T|%r of the one query for all jobs
    }
    for name, body in scripts.items():
        path = where / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _worker(tmp_path: Path) -> SlurmWorker:
    worker = SlurmWorker(log_dir=str(tmp_path / "logs"))
    worker.poll_delay = 0  # Pydra's field: its class is untyped
    return worker


def _run_one_job(
    worker: SlurmWorker, state: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run one node of `add_one` for subject ``sub-01`` under a Slurm that reports ``state``."""
    _stand_ins(tmp_path / "bin", state)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    task = to_task(steps.add_one)(x=1.0, cache_dir=str(tmp_path / "sub-01"))
    with Submitter(cache_root=tmp_path / "p", worker="debug") as submitter:
        job = Job(task, submitter=submitter, name="n")
        assert submitter.loop.run_until_complete(worker.run(job)) is True


def test_a_completed_job_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = _worker(tmp_path)
    _run_one_job(worker, "COMPLETED", tmp_path, monkeypatch)
    assert worker.failures == {} and worker.job_ids == ["4242"]
    assert "add_one ended COMPLETED" in (tmp_path / "logs" / "sub-01.log").read_text()


@pytest.mark.parametrize("state", sorted(FINAL_STATE_MEANINGS))
def test_every_other_final_state_is_a_scheduler_error_saying_what_it_means(
    state: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = _worker(tmp_path)
    with pytest.raises(SchedulerError) as raised:
        _run_one_job(worker, state, tmp_path, monkeypatch)
    error = raised.value
    assert (error.state, error.job_id, error.step) == (state, "4242", "add_one")
    expected = f"Slurm job 4242 (add_one for sub-01) ended {state}: {FINAL_STATE_MEANINGS[state]}"
    assert str(error) == expected
    assert worker.failures == {"sub-01": error}  # what run_subjects reports the subject by
    log = (tmp_path / "logs" / "sub-01.log").read_text()
    assert log.rstrip().endswith(expected)


def test_a_link_planted_at_a_subject_log_is_refused_before_submitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever can write the cache root could plant a link at a subject's log to make the
    scheduler append to a file of their choosing: refused, naming the log, nothing written."""
    from kwneuro_pydra._files import UnsafeFileError

    target = tmp_path / "someone-elses-file"
    target.write_text("theirs\n")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "sub-01.log").symlink_to(target)
    worker = _worker(tmp_path)
    with pytest.raises(UnsafeFileError) as raised:
        _run_one_job(worker, "COMPLETED", tmp_path, monkeypatch)
    assert raised.value.filename == str(tmp_path / "logs" / "sub-01.log")
    assert "symbolic link" in str(raised.value)
    assert target.read_text() == "theirs\n"
    assert worker.job_ids == []  # refused before sbatch


def test_a_link_planted_at_the_job_record_is_refused(tmp_path: Path) -> None:
    from kwneuro_pydra._files import UnsafeFileError
    from kwneuro_pydra.pydra._slurm import _append_line

    target = tmp_path / "someone-elses-file"
    target.write_text("theirs\n")
    record = tmp_path / "slurm-jobs.tsv"
    record.symlink_to(target)
    with pytest.raises(UnsafeFileError, match="symbolic link") as raised:
        _append_line(record, "checksum\t1_0\tsub-01\tall steps\terr\n")
    assert raised.value.filename == str(record)
    assert target.read_text() == "theirs\n"
    _append_line(tmp_path / "log", "one\n")
    _append_line(tmp_path / "log", "two\n")  # appends
    assert (tmp_path / "log").read_text() == "one\ntwo\n"


def test_a_line_appended_while_the_record_is_compacted_lands_in_the_new_record(
    tmp_path: Path,
) -> None:
    """`compact_record` replaces the record under an exclusive lock: a submitter appending
    meanwhile waits, then appends to the new file (never to the replaced one, lost)."""
    import fcntl
    import threading
    import time

    from kwneuro_pydra._files import open_shared, write_atomic
    from kwneuro_pydra.pydra._slurm import _append_line, compact_record

    record = tmp_path / "slurm-jobs.tsv"
    old = f"c1\t1_0\tsub-01\tall steps\t{tmp_path}/jobs/run-1/array/slurm-1_0.err\n"
    new = f"c1\t2_0\tsub-01\tall steps\t{tmp_path}/jobs/run-2/array/slurm-2_0.err\n"
    record.write_text(old + new)
    (tmp_path / "jobs" / "run-2").mkdir(parents=True)  # run-1 is gone: its line goes too
    fd = open_shared(record)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as compact_record holds it while it rewrites
    late = "c2\t3_0\tsub-02\tall steps\terr\n"
    appender = threading.Thread(target=_append_line, args=(record, late))
    appender.start()
    time.sleep(0.5)
    assert appender.is_alive()  # waits for the lock
    write_atomic(record, new.encode())
    os.close(fd)
    appender.join(10)
    assert record.read_text() == new + late
    record.write_text(old + new + late)
    assert compact_record(record, dry_run=True) == 1
    assert record.read_text() == old + new + late
    assert compact_record(record) == 1
    assert record.read_text() == new + late

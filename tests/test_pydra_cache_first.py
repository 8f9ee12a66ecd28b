"""`run_subjects` asks the subjects' caches first, and returns what they hold."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("pydra")

from kwneuro_pydra import Cache
from kwneuro_pydra.pydra import run_subjects
from kwneuro_pydra.pydra._jobs import job_cache
from tests import _pydra_steps as steps
from tests._children import jobs_run

SUBJECTS = {f"sub-{i:02d}": {"x": float(i)} for i in range(1, 4)}


@pytest.fixture
def counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "counts"
    where.mkdir()
    monkeypatch.setenv("KWNEURO_TEST_COUNTS", str(where))
    return where


def test_a_cached_rerun_submits_nothing_with_or_without_pydras_job_cache(
    counts: Path, tmp_path: Path
) -> None:
    root, jobs = tmp_path / "derivatives", tmp_path / "jobs"
    first = run_subjects(steps.chain4, SUBJECTS, root, worker="cf", n_procs=2, job_cache=jobs)
    assert all(r.ok for r in first.values())
    computed = steps.executions(counts)
    assert computed == 4 * len(SUBJECTS) and len(jobs_run(jobs)) > 4 * len(SUBJECTS)

    shutil.rmtree(jobs)  # Pydra's job cache is gone; the subjects' caches are intact
    again = run_subjects(steps.chain4, SUBJECTS, root, worker="cf", n_procs=2, job_cache=jobs)
    assert {s: r.outputs for s, r in again.items()} == {s: r.outputs for s, r in first.items()}
    assert jobs_run(jobs) == []  # no node and no workflow ran
    assert steps.executions(counts) == computed

    # one new subject: only its nodes are submitted, in a real worker process
    more = {**SUBJECTS, "sub-09": {"x": 9.0}}
    third = run_subjects(steps.chain4, more, root, worker="cf", n_procs=2, job_cache=jobs)
    assert third["sub-09"].outputs == 42.0
    assert sum(name.startswith("python-") for name in jobs_run(jobs)) == 4
    assert steps.executions(counts) == computed + 4


def test_the_result_comes_from_the_subjects_cache_not_from_pydras_job_cache(
    counts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After Pydra stored its job result, an eager forced recompute replaces an entry: the
    next `run_subjects` returns the cache's result, not the one Pydra stored."""
    from pydra.engine.result import load_result  # type: ignore[import-untyped]

    root, jobs = tmp_path / "derivatives", tmp_path / "jobs"
    subjects = {"sub-01": {"x": 1.0}}
    monkeypatch.setenv("KWNEURO_TEST_STAMP", "pydra")
    first = run_subjects(steps.stamped, subjects, root, worker="debug", job_cache=jobs)
    assert first["sub-01"].outputs == ("1.0:pydra", 4.0)
    stored = [load_result(p.name, [p.parent]) for p in jobs.glob("run-*/python-*")]
    assert "1.0:pydra" in [r.outputs.out for r in stored if r is not None]

    monkeypatch.setenv("KWNEURO_TEST_STAMP", "eager")
    with Cache(root / "sub-01", force={"stamp"}):
        assert steps.stamp(1.0) == "1.0:eager"
    again = run_subjects(steps.stamped, subjects, root, worker="debug", job_cache=jobs)
    assert again["sub-01"].outputs == ("1.0:eager", 4.0)
    assert steps.executions(counts, "stamp") == 2  # the node did not run again

    # a subject that must be submitted (an entry lost) still returns what its cache holds
    for entry in Cache(root / "sub-01").entries("double"):
        shutil.rmtree(entry.path)
    third = run_subjects(steps.stamped, subjects, root, worker="debug", job_cache=jobs)
    assert third["sub-01"].outputs == ("1.0:eager", 4.0)
    assert steps.executions(counts, "double") == 2


@pytest.mark.parametrize("worker", ["debug", "cf"])
def test_force_schedules_only_the_forced_steps_and_what_depends_on_them(
    worker: str, counts: Path, tmp_path: Path
) -> None:
    """stamped(x) = stamp(x), double(add_one(x)); forcing add_one recomputes add_one and
    double; stamp, cached and not forced, is served from the cache and never scheduled."""
    root, jobs = tmp_path / "derivatives", tmp_path / "jobs"
    first = run_subjects(steps.stamped, SUBJECTS, root, worker=worker, job_cache=jobs)
    before = {s: steps.executions(counts, s) for s in ("stamp", "add_one", "double")}
    shutil.rmtree(jobs)  # what is left in it afterwards is what the forced run scheduled
    forced = run_subjects(
        steps.stamped, SUBJECTS, root, worker=worker, job_cache=jobs, force={"add_one"}
    )
    assert {s: r.outputs for s, r in forced.items()} == {s: r.outputs for s, r in first.items()}
    after = {s: steps.executions(counts, s) for s in ("stamp", "add_one", "double")}
    n = len(SUBJECTS)
    assert after == {
        "stamp": before["stamp"],
        "add_one": before["add_one"] + n,
        "double": before["double"] + n,
    }
    assert sum(name.startswith("python-") for name in jobs_run(jobs)) == 2 * n


def test_the_job_cache_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "derivatives"
    default = job_cache(root, None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    moved = job_cache(root, None)
    assert moved.parent == tmp_path / "xdg" / "kwneuro-pydra" / "jobs" and moved != default
    assert moved.stat().st_mode & 0o777 == 0o700
    assert job_cache(tmp_path / "other", None) != moved
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match="chmod go-w"):
        run_subjects(steps.chain4, SUBJECTS, root, worker="debug", job_cache=shared)
    assert not root.exists() or not any(root.iterdir())


@pytest.mark.parametrize("worker", ["debug", "cf"])
def test_steps_their_cache_answers_are_not_scheduled(
    worker: str, counts: Path, tmp_path: Path
) -> None:
    """A subject with some entries cached: only the missing steps become jobs."""
    root, jobs = tmp_path / "derivatives", tmp_path / "jobs"
    with Cache(root / "sub-01"):
        assert steps.add_one(1.0) == 2.0  # the first step of chain4, cached eagerly
    results = run_subjects(
        steps.chain4, {"sub-01": {"x": 1.0}}, root, worker=worker, job_cache=jobs
    )
    assert results["sub-01"].outputs == 10.0
    assert sum(name.startswith("python-") for name in jobs_run(jobs)) == 3
    assert steps.executions(counts) == 4  # add_one eagerly once, then three nodes

    # the served entry removed since Pydra last built this workflow: it is scheduled again
    for step in ("add_one", "double"):
        for entry in Cache(root / "sub-01").entries(step):
            shutil.rmtree(entry.path)
    shutil.rmtree(jobs)
    again = run_subjects(steps.chain4, {"sub-01": {"x": 1.0}}, root, worker=worker, job_cache=jobs)
    assert again["sub-01"].outputs == 10.0
    assert steps.executions(counts) == 8


def test_each_run_submits_into_its_own_job_directory_and_the_job_cache_stays_bounded(
    counts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import time

    from kwneuro_pydra.pydra._jobs import MAX_AGE, run_directory

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "derivatives"
    jobs = job_cache(root, None)
    for x in (1.0, 2.0, 3.0):
        run_subjects(steps.chain4, {"sub-01": {"x": x}}, root, worker="debug")
        (run,) = jobs.glob("run-*")  # the last run's directory only
        assert run.stat().st_mode & 0o777 == 0o700 and any(run.glob("python-*"))
    with run_directory(jobs) as held:  # a run going on: its directory stays
        run_subjects(steps.chain4, {"sub-01": {"x": 4.0}}, root, worker="debug")
        assert held.is_dir() and len(list(jobs.glob("run-*"))) == 2
    memo = jobs / "hash-memo" / "old"
    memo.write_text("")
    os.utime(memo, (time.time() - MAX_AGE - 60,) * 2)

    # the job caches of other cache roots: their old run directories go, recent ones stay
    other = job_cache(tmp_path / "elsewhere", None)
    with run_directory(other) as old, run_directory(other) as recent:
        pass
    os.utime(old, (time.time() - MAX_AGE - 60,) * 2)
    run_subjects(steps.chain4, {"sub-01": {"x": 5.0}}, root, worker="debug")
    assert not old.exists() and recent.is_dir() and not memo.exists()
    assert len(list(jobs.glob("run-*"))) == 1

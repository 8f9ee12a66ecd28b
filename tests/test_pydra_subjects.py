"""Tests of `run_subjects`, workers, pickled jobs, pins and where Pydra writes."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash

pytest.importorskip("pydra")

from kwneuro_pydra import Cache
from kwneuro_pydra._filedigest import RACY_WINDOW_NS
from kwneuro_pydra.app import run_bids_app
from kwneuro_pydra.pydra import SubjectResult, run_subjects, to_task
from kwneuro_pydra.resources import _gzip
from tests import _pydra_steps as steps
from tests._children import child_env, python
from tests.bids_data import good_dataset

SUBJECTS = {"sub-01": {"dwi": "a"}, "sub-02": {"dwi": "bad"}, "sub-03": {"dwi": "c"}}


@pytest.fixture
def counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "counts"
    where.mkdir()
    monkeypatch.setenv("KWNEURO_TEST_COUNTS", str(where))
    monkeypatch.delenv("PYDRA_HASH_CACHE", raising=False)
    return where


def tally(counts: Path) -> dict[str, int]:
    return {f.name: steps.executions(counts, f.name) for f in sorted(counts.iterdir())}


WORKERS = pytest.mark.parametrize(
    ("worker", "options"),
    [("debug", {}), ("cf", {"n_procs": 2}), ("cf", {"n_procs": 2, "granularity": "subject"})],
    ids=["debug", "cf", "cf-by-subject"],
)
MASK_PARAMETERS = {"median_radius": 1, "numpass": 1}
"""The app's parameters for its small test phantoms (as in tests/test_app.py)."""
FIXED = dict(SUBJECTS, **{"sub-02": {"dwi": "b"}})


@WORKERS
def test_a_failing_subject_is_reported_and_the_others_complete(
    worker: str, options: dict[str, Any], counts: Path, tmp_path: Path
) -> None:
    """Pydra's result for sub-02 is errored: read as a success, it has no outputs to read."""
    root = tmp_path / "derivatives"
    try:
        results = run_subjects(steps.pipeline3, SUBJECTS, root, worker=worker, **options)
    except Exception as exc:
        pytest.fail(f"run_subjects raised {exc!r} instead of reporting sub-02's failure")
    assert list(results) == list(SUBJECTS)
    ok = results["sub-01"]
    assert ok.ok and ok.outputs == ("dti(a,mask(a,0.5))", "fa(dti(a,mask(a,0.5)))")
    assert ok.cache_dir == root / "sub-01" and results["sub-03"].ok
    bad = results["sub-02"]
    assert not bad.ok and bad.outputs is None and bad.failure is not None
    assert (bad.failure.subject, bad.failure.step) == ("sub-02", "brain_mask")
    assert isinstance(bad.failure.exception, ValueError)
    assert "cannot mask bad" in str(bad.failure.exception)
    assert 'in brain_mask\n    raise ValueError(f"cannot mask {dwi}")' in bad.failure.traceback
    assert tally(counts) == {"brain_mask": 3, "estimate_dti": 2, "fa_map": 2}
    assert {p.name for p in root.iterdir()} == set(SUBJECTS)


@WORKERS
def test_a_rerun_after_a_fix_computes_only_what_failed(
    worker: str, options: dict[str, Any], counts: Path, tmp_path: Path
) -> None:
    root = tmp_path / "derivatives"
    run_subjects(steps.pipeline3, SUBJECTS, root, worker=worker, **options)
    again = run_subjects(steps.pipeline3, FIXED, root, worker=worker, **options)
    assert all(r.ok for r in again.values())
    assert again["sub-02"].outputs == ("dti(b,mask(b,0.5))", "fa(dti(b,mask(b,0.5)))")
    assert tally(counts) == {"brain_mask": 4, "estimate_dti": 3, "fa_map": 3}


@WORKERS
def test_forcing_a_step_recomputes_it_and_its_dependents_only(
    worker: str, options: dict[str, Any], counts: Path, tmp_path: Path
) -> None:
    root = tmp_path / "derivatives"
    done = run_subjects(steps.pipeline3, FIXED, root, worker=worker, **options)
    assert tally(counts) == {"brain_mask": 3, "estimate_dti": 3, "fa_map": 3}
    forced = run_subjects(steps.pipeline3, FIXED, root, worker=worker, force={"estimate_dti"})
    assert {s: r.outputs for s, r in forced.items()} == {s: r.outputs for s, r in done.items()}
    assert tally(counts) == {"brain_mask": 3, "estimate_dti": 6, "fa_map": 6}
    run_subjects(steps.pipeline3, FIXED, root, worker=worker, force={"fa_map"})
    assert tally(counts) == {"brain_mask": 3, "estimate_dti": 6, "fa_map": 9}


def test_forcing_a_step_the_pipeline_does_not_call_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="force names steps pipeline3 does not call: nope"):
        run_subjects(steps.pipeline3, FIXED, tmp_path, force={"nope"})
    assert list(tmp_path.iterdir()) == []


def test_the_workflows_entries_serve_eager_calls(counts: Path, tmp_path: Path) -> None:
    done = run_subjects(steps.pipeline3, FIXED, tmp_path, worker="debug")
    with Cache(tmp_path / "sub-02"):
        assert steps.pipeline3("b") == done["sub-02"].outputs
    assert tally(counts) == {"brain_mask": 3, "estimate_dti": 3, "fa_map": 3}


def test_eager_entries_are_reused_by_run_subjects(counts: Path, tmp_path: Path) -> None:
    with Cache(tmp_path / "sub-01"):
        steps.chain4(1.0)
    results = run_subjects(steps.chain4, {"sub-01": {"x": 1}}, tmp_path, worker="debug")
    assert results["sub-01"].outputs == 10.0
    assert tally(counts) == {"add_one": 2, "double": 2}


def test_progress_is_visible(
    counts: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: Any
) -> None:
    with caplog.at_level(logging.INFO, logger="kwneuro_pydra"):
        run_subjects(steps.pipeline, SUBJECTS, tmp_path, worker="debug", progress=True)
    err = capfd.readouterr().err
    assert "[kwneuro-pydra] 4/6 nodes computed, 1 failed" in err
    messages = [r.getMessage() for r in caplog.records]
    assert "[sub-01] brain_mask: done in" in "\n".join(messages)
    assert any(
        "2 subject(s) done, 1 failed" in m and "sub-02: step 'brain_mask' failed" in m
        for m in messages
    )


def test_inputs_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a safe directory name"):
        run_subjects(steps.pipeline, {"../x": {"dwi": "a"}}, tmp_path)
    with pytest.raises(ValueError, match="unknown inputs dwj; missing inputs dwi"):
        run_subjects(steps.pipeline, {"s": {"dwj": "a"}}, tmp_path)


def test_a_pickled_job_runs_in_a_fresh_interpreter(
    counts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydra.engine.job import Job  # type: ignore[import-untyped]
    from pydra.engine.result import load_result, save  # type: ignore[import-untyped]
    from pydra.engine.submitter import Submitter  # type: ignore[import-untyped]

    monkeypatch.setenv("PYDRA_HASH_CACHE", str(tmp_path / "h"))
    task = to_task(steps.describe)(a=np.arange(6.0).reshape(2, 3), cache_dir=str(tmp_path / "s"))
    job = Job(task, submitter=Submitter(cache_root=tmp_path / "p", worker="debug"), name="d")
    scripts = tmp_path / "p" / "slurm_scripts" / job.uid
    save(scripts, job=job)  # what SlurmWorker._prepare_runscripts does
    python(
        f"""
        import sys
        from pydra.engine.job import load_and_run
        load_and_run({str(scripts / "_job.pklz")!r})
        assert "kwneuro_pydra.pydra._hash" in sys.modules
        """,
        child_env(KWNEURO_TEST_COUNTS=str(counts), PYDRA_HASH_CACHE=str(tmp_path / "h")),
        cwd=Path("/"),
    )
    result = load_result(job.checksum, [tmp_path / "p"])
    assert result is not None and result.outputs.out == "float64[2, 3]:15.0"
    assert tally(counts) == {"describe": 1}


def test_pins_checksums_agree_across_processes(tmp_path: Path) -> None:
    """Pydra 1.0a12 with cloudpickle < 3.1.3: a task built in one process, or unpickled in
    another (as every worker does), has the same checksum there."""
    from importlib.metadata import version

    import cloudpickle  # type: ignore[import-untyped]

    assert version("pydra") == "1.0a12"
    assert tuple(int(p) for p in cloudpickle.__version__.split(".")[:3]) < (3, 1, 3)
    code = """
        import sys
        import cloudpickle
        import numpy as np
        from kwneuro_pydra.pydra import to_task, to_workflow
        from tests import _pydra_steps as s
        tasks = [
            to_task(s.describe)(a=np.arange(6).reshape(2, 3)),
            to_task(s.make_volume)(n=3, cache_dir="/x"),
            to_workflow(s.pipeline3)(dwi="a", cache_dir="/x"),
        ]
        if len(sys.argv) > 1:
            with open(sys.argv[1], "wb") as f:
                cloudpickle.dump(tasks, f)
        print(*[t._checksum for t in tasks])
    """
    env = child_env(PYDRA_HASH_CACHE=str(tmp_path / "h"))
    pickled = tmp_path / "tasks.pkl"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(pickled)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    built_here = done.stdout.split()
    built_again = python(code, env, tmp_path).split()
    unpickled = python(
        f"""
        import cloudpickle
        with open({str(pickled)!r}, "rb") as f:
            print(*[t._checksum for t in cloudpickle.load(f)])
        """,
        env,
        tmp_path,
    ).split()
    assert len(built_here) == 3 and built_here == built_again == unpickled


def test_nothing_is_written_outside_the_cache_root_and_the_private_job_cache(
    tmp_path: Path,
) -> None:
    home, root = tmp_path / "home", tmp_path / "root"
    home.mkdir()
    out = python(
        f"""
        import os
        from kwneuro_pydra.pydra import run_subjects
        from tests import _pydra_steps as s
        r = run_subjects(s.pipeline, {{"s1": {{"dwi": "a"}}, "s2": {{"dwi": "b"}}}},
                         {str(root)!r}, worker="cf", n_procs=2)
        assert all(x.ok for x in r.values())
        print(os.environ.get("NO_ET"), os.environ.get("PYDRA_HASH_CACHE"))
        """,
        child_env(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache")),
        cwd=tmp_path,
    )
    assert out.split() == ["1", "None"]
    assert {p.name for p in root.iterdir()} == {"s1", "s2"}
    assert {p.name for p in tmp_path.iterdir()} == {"home", "root"}
    (jobs,) = (home / ".cache" / "kwneuro-pydra" / "jobs").iterdir()
    assert all(p in jobs.parents or p == jobs or jobs in p.parents for p in home.rglob("*"))
    assert stat.S_IMODE(jobs.stat().st_mode) == 0o700
    assert any(jobs.glob("run-*/python-*/_result.pklz")) and (jobs / "hash-memo").is_dir()


def test_importing_the_package_does_not_import_pydra(tmp_path: Path) -> None:
    out = python(
        """
        import sys
        import kwneuro_pydra
        print(sorted(m for m in sys.modules if m == "pydra" or m.startswith("pydra.")))
        """,
        child_env(),
        cwd=tmp_path,
    )
    assert out.strip() == "[]"


def test_subject_result_is_a_small_value() -> None:
    result = SubjectResult("s", 1, None, Path("/x"))
    assert result.ok and result.outputs == 1


def test_a_step_that_runs_uncached_still_returns_its_result(counts: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="cannot be fingerprinted"):
        results = run_subjects(
            steps.shouting, {"s": {"thing": steps.Unhashable("hi")}}, tmp_path, worker="debug"
        )
    assert results["s"].ok, results["s"].failure
    assert results["s"].outputs == "HI"


@pytest.mark.parametrize(("worker", "options"), [("debug", {}), ("cf", {"n_procs": 2})])
def test_a_forced_step_that_raises_fails_its_subject_whatever_an_older_entry_holds(
    worker: str, options: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, jobs = tmp_path / "derivatives", tmp_path / "jobs"
    subjects = {"sub-01": {"x": 1.0}, "sub-02": {"x": 2.0}}
    monkeypatch.setenv("KWNEURO_TEST_STAMP", "old")
    first = run_subjects(steps.stamped, subjects, root, worker=worker, job_cache=jobs, **options)
    assert first["sub-01"].outputs == ("1.0:old", 4.0)

    monkeypatch.setenv("KWNEURO_TEST_STAMP", "raise")
    with Cache(root / "sub-01", force={"stamp"}), pytest.raises(ValueError, match="told to"):
        steps.stamp(1.0)  # eagerly: the forced call raises, the old entry notwithstanding
    forced = run_subjects(
        steps.stamped, subjects, root, worker=worker, job_cache=jobs, force={"stamp"}, **options
    )
    for subject, result in forced.items():
        assert not result.ok and result.outputs is None, subject
        assert result.failure is not None and result.failure.step == "stamp"
        assert isinstance(result.failure.exception, ValueError)
        assert "told to raise" in str(result.failure)
    assert Cache(root / "sub-01").load(steps.stamp, 1.0) == "1.0:old"  # kept, not served

    monkeypatch.setenv("KWNEURO_TEST_STAMP", "new")  # fixed: the forced rerun succeeds
    again = run_subjects(
        steps.stamped, subjects, root, worker=worker, job_cache=jobs, force={"stamp"}, **options
    )
    assert again["sub-02"].outputs == ("2.0:new", 6.0)


def test_a_cold_cf_run_of_the_app_decompresses_each_dwi_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step reading a series' DWI (mean b0, mask, fit, statistics) is served by the
    memo of the one process its series runs in; counted in the workers (forked: the patch
    of the test's process is theirs), each line appended at once (O_APPEND)."""
    bids_dir = good_dataset(tmp_path / "bids", subjects=2)
    dwis = {_digest(p.read_bytes()): p.name for p in sorted(bids_dir.rglob("*_dwi.nii.gz"))}
    assert len(dwis) == 3
    time.sleep(RACY_WINDOW_NS / 1e9)  # a file changed within it is never memoised
    counted = tmp_path / "decompressions"
    real = _gzip.gunzip

    def gunzip(data: bytes, size: int) -> bytes:
        line = f"{os.getpid()} {_digest(data)}\n".encode()
        fd = os.open(counted, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return real(data, size)

    monkeypatch.setattr(_gzip, "gunzip", gunzip)
    result = run_bids_app(bids_dir, tmp_path / "out", worker="cf", parameters=MASK_PARAMETERS)
    assert result.ok and all(o.state == "computed" for s in result.series for o in s.steps)
    lines = [line.split() for line in counted.read_text().splitlines()]
    per_dwi = Counter(dwis[digest] for _, digest in lines if digest in dwis)
    assert per_dwi == dict.fromkeys(dwis.values(), 1), per_dwi
    assert str(os.getpid()) not in {pid for pid, _ in lines}  # decoded in the workers


def test_a_cf_job_per_subject_makes_the_entries_a_job_per_step_makes(
    counts: Path, tmp_path: Path
) -> None:
    """Each step of a subject's job is cached on its own, under the same entries; a run by
    steps finds them all (nothing runs again), and so do eager calls."""
    by_subject = run_subjects(
        steps.pipeline3, FIXED, tmp_path / "a", worker="cf", n_procs=2, granularity="subject"
    )
    by_step = run_subjects(steps.pipeline3, FIXED, tmp_path / "b", worker="cf", n_procs=2)
    assert {s: r.outputs for s, r in by_subject.items()} == {
        s: r.outputs for s, r in by_step.items()
    }

    def entries(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.glob("sub-*/*/*") if p.is_dir()}

    assert entries(tmp_path / "a") == entries(tmp_path / "b")
    assert len(entries(tmp_path / "a")) == 9  # three subjects x three steps
    run_subjects(steps.pipeline3, FIXED, tmp_path / "a", worker="cf", n_procs=2)
    with Cache(tmp_path / "a" / "sub-02"):
        assert steps.pipeline3("b") == by_subject["sub-02"].outputs
    assert tally(counts) == {"brain_mask": 6, "estimate_dti": 6, "fa_map": 6}


def test_a_job_per_subject_needs_cf_or_slurm(tmp_path: Path) -> None:
    one = {"sub-01": {"dwi": "a"}}
    with pytest.raises(ValueError, match=r"granularity need worker='slurm' or 'cf' \(worker"):
        run_subjects(steps.pipeline, one, tmp_path, worker="debug", granularity="subject")
    with pytest.raises(ValueError, match=r"unknown option\(s\) for worker='cf': max_running"):
        run_subjects(steps.pipeline, one, tmp_path, granularity="subject", max_running=2)
    assert not any(tmp_path.iterdir())


def _digest(data: bytes) -> str:
    return xxhash.xxh3_64_hexdigest(data)

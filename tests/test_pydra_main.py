"""Steps and pipelines defined where the user runs them: in a script or a notebook."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("pydra")

from tests._children import child_env, jobs_run, python

STEPS = """
    import json
    from kwneuro_pydra import CacheSpec, cacheable
    from kwneuro_pydra.pydra import run_subjects, to_task

    SCALE = 3


    def _save(result, directory):
        (directory / "out.json").write_text(json.dumps(result))


    def _load(directory):
        return json.loads((directory / "out.json").read_text())


    @cacheable(CacheSpec(files=["out.json"], save=_save, load=_load))
    def scale(x: float) -> float:
        return x * SCALE


    @cacheable(CacheSpec(files=["out.json"], save=_save, load=_load))
    def shift(x: float, by: float = 1.0) -> float:
        return x + by


    def pipeline(x: float) -> float:
        return shift(scale(x))
"""

RUN = """
    def run(worker, root, jobs):
        results = run_subjects(pipeline, {"a": {"x": 1.0}, "b": {"x": 2.0}}, root,
                               worker=worker, job_cache=jobs)
        return {s: [r.outputs, str(r.failure) if r.failure else None]
                for s, r in results.items()}
"""

SCRIPT = (
    STEPS
    + RUN
    + """
    if __name__ == "__main__":
        import sys
        print(json.dumps(run(sys.argv[1], sys.argv[2], sys.argv[3])))
"""
)

EXPECTED = {"a": [4.0, None], "b": [7.0, None]}


def run_script(script: Path, *args: str | Path) -> object:
    done = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=script.parent,
        env=child_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize(("worker"), ["debug", "cf"])
def test_steps_defined_in_a_script_run_as_nodes(worker: str, tmp_path: Path) -> None:
    script = tmp_path / "analysis.py"
    script.write_text(textwrap.dedent(SCRIPT))
    root, jobs = tmp_path / "derivatives", tmp_path / "jobs"
    assert run_script(script, worker, root, jobs) == EXPECTED
    assert len([name for name in jobs_run(jobs) if name.startswith("python-")]) == 4
    shutil.rmtree(jobs)
    assert run_script(script, worker, root, jobs) == EXPECTED  # a new process: cache hits
    assert jobs_run(jobs) == []


def test_a_job_of_a_script_runs_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """What a Slurm job does: the pickled job, loaded by an interpreter whose ``__main__`` is
    not the script, writes its result where the submitting script looks for it."""
    script = tmp_path / "analysis.py"
    script.write_text(
        textwrap.dedent(STEPS)
        + textwrap.dedent("""
        if __name__ == "__main__":
            import sys
            from pathlib import Path
            from pydra.engine.job import Job
            from pydra.engine.result import save
            from pydra.engine.submitter import Submitter
            task = to_task(scale)(x=2.0, cache_dir=sys.argv[1])
            job = Job(task, submitter=Submitter(cache_root=sys.argv[2], worker="debug"),
                      name="scale")
            scripts = Path(sys.argv[2]) / "slurm_scripts" / job.uid
            save(scripts, job=job)  # what SlurmWorker._prepare_runscripts does
            print(scripts / "_job.pklz", job.checksum)
        """)
    )
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "s"), str(tmp_path / "p")],
        capture_output=True,
        text=True,
        env=child_env(),
        check=True,
    )
    pickled, checksum = done.stdout.split()
    python(
        f"""
        from pydra.engine.job import load_and_run
        load_and_run({pickled!r})
        """,
        child_env(),
        cwd=Path("/"),
    )
    out = python(
        f"""
        from pathlib import Path
        from pydra.engine.result import load_result
        print(load_result({checksum!r}, [Path({str(tmp_path / "p")!r})]).outputs.out)
        """,
        child_env(),
        cwd=tmp_path,
    )
    assert out.split() == ["6.0"]
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["scale"]


def test_a_pipeline_workers_cannot_receive_is_refused_before_submitting(tmp_path: Path) -> None:
    script = tmp_path / "analysis.py"
    script.write_text(
        textwrap.dedent(SCRIPT)
        .replace("SCALE = 3", "import threading\nSCALE = 3\nLOCK = threading.Lock()")
        .replace("    return x * SCALE", "    with LOCK:\n        return x * SCALE")
    )
    jobs = tmp_path / "jobs"
    done = subprocess.run(
        [sys.executable, str(script), "debug", str(tmp_path / "d"), str(jobs)],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: pipeline pipeline cannot be sent to Pydra's workers")
    assert "_thread.lock" in last and "importable module" in last
    assert jobs_run(jobs) == []


@pytest.mark.slow
def test_steps_defined_in_a_notebook_run_as_nodes(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cells = [
        textwrap.dedent(STEPS),
        textwrap.dedent(RUN),
        f"print(json.dumps([run(w, {str(tmp_path / 'd')!r}, {str(tmp_path / 'j')!r})"
        " for w in ('cf', 'debug')]))",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    outputs = notebook.cells[-1].outputs
    printed = [o["text"] for o in outputs if o.get("name") == "stdout"]
    assert json.loads(printed[-1].strip().splitlines()[-1]) == [EXPECTED, EXPECTED], outputs

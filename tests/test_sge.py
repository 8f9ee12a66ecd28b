"""Grid Engine: Pydra 1.0a12's ``sge`` worker is refused at once, with the reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pydra")

from kwneuro_pydra.pydra import run_subjects
from kwneuro_pydra.pydra._workarounds import SGE_PROBLEMS
from tests import _pydra_steps as steps


def test_sge_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'sge' worker cannot run our workflows") as refused:
        run_subjects(steps.pipeline, {"sub-01": {"dwi": "a"}}, tmp_path / "d", worker="sge")
    assert str(refused.value) == SGE_PROBLEMS
    assert "sge.py:225" in SGE_PROBLEMS and "get_runnable_tasks" in SGE_PROBLEMS
    assert not (tmp_path / "d").exists()


def test_upstream_sge_worker_still_has_the_bug_we_refuse_it_for() -> None:
    """When this fails, Pydra changed its SGE worker: try it again (docs/cluster.md)."""
    import inspect

    from pydra.workers.sge import Worker as SGEWorker  # type: ignore[import-untyped]

    assert isinstance(SGEWorker().threads_used, dict)  # sge.py:225 adds an int to it
    assert "self.threads_used += threads_requested" in inspect.getsource(SGEWorker)


def test_the_app_and_the_command_line_refuse_sge_as_a_usage_error(tmp_path: Path) -> None:
    """`sge` is not a worker of the app: AppError from Python, exit 2 (not 1) from the CLI."""
    import subprocess
    import sys

    from kwneuro_pydra.app import AppError, run_bids_app
    from tests.bids_data import good_dataset

    bids_dir = good_dataset(tmp_path / "bids", subjects=1)
    with pytest.raises(AppError, match="SGE worker is broken"):
        run_bids_app(bids_dir, tmp_path / "out", worker="sge")
    for command in (
        ["run", str(bids_dir), str(tmp_path / "out"), "participant"],
        ["demo", str(tmp_path / "demo")],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "kwneuro_pydra.cli", *command, "--worker", "sge"],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and "invalid choice: 'sge'" in done.stderr, done.stderr
        assert len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "demo").exists()

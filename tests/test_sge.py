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

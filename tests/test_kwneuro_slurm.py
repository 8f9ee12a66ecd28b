"""kwneuro 1.0's pipeline on the CI's Slurm (``.ci/slurm/start.sh``): three subjects, equal to
kwneuro's plain calls, and a rerun that submits nothing.

Without a usable Slurm these tests skip, unless ``CI`` is set: then they fail (as in
``tests/test_slurm.py``, whose fixture this module uses).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_kwneuro import OPTIONS, _check, _entries, _phantom  # first: skips without kwneuro

from tests.test_kwneuro import pytestmark as _kwneuro_marks  # isort: skip

from kwneuro_pydra.pydra import run_subjects  # isort: skip
from kwneuro_pydra.workflows.kwneuro_pipeline import kwneuro_pipeline  # isort: skip
from tests.test_slurm import FAST, slurm  # noqa: F401  (the fixture: skips or fails, PYTHONPATH)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, *_kwneuro_marks]


def test_kwneuro_pipeline_on_slurm_equals_kwneuro_and_reruns_nothing(tmp_path: Path) -> None:
    subjects = {
        f"sub-0{i}": {"dwi": _phantom(tmp_path / "in" / f"{i}", seed=i), **OPTIONS}
        for i in range(1, 4)
    }
    root = tmp_path / "slurm"
    resources = {"denoise": {"mem": "1G"}, "compute_csd_peaks": {"mem": "1G"}}
    first = run_subjects(
        kwneuro_pipeline, subjects, root, worker="slurm", resources=resources, **FAST
    )
    assert all(r.ok for r in first.values()), first
    for result in first.values():
        _check(result.outputs)
    made = {s: _entries(root / s) for s in subjects}
    assert all(len(entries) == 5 for entries in made.values())
    again = run_subjects(kwneuro_pipeline, subjects, root, worker="slurm", **FAST)
    assert all(r.ok for r in again.values())
    assert {s: _entries(root / s) for s in subjects} == made  # nothing computed again

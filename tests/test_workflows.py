"""Tests of the ready DTI workflow, eagerly and in Pydra (the commands: test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kwneuro_pydra import Cache
from kwneuro_pydra.resources import Dwi
from kwneuro_pydra.workflows import brain_mask, dti_pipeline, estimate_dti, mean_b0
from kwneuro_pydra.workflows.demo import make_demo_subject


@pytest.fixture(scope="module")
def subjects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Dwi]]:
    root = tmp_path_factory.mktemp("data")
    return {
        f"sub-{i}": {"dwi": make_demo_subject(root / f"sub-{i}", i, shape=(16, 16, 10))}
        for i in (1, 2)
    }


def test_dti_of_the_phantom_is_anisotropic_inside_and_empty_outside(
    subjects: dict[str, dict[str, Dwi]], tmp_path: Path
) -> None:
    dwi = subjects["sub-1"]["dwi"]
    with Cache(tmp_path):
        mask = brain_mask(dwi).get_array()
        fa, md = (v.get_array() for v in dti_pipeline(dwi))
        b0 = mean_b0(dwi).get_array()
    inside = mask != 0
    assert 0.1 < inside.mean() < 0.5
    assert 0.6 < np.median(fa[inside]) < 0.9  # prolate tensor, eigenvalues ~1.6e-3, ~3.5e-4
    assert 6e-4 < np.median(md[inside]) < 9e-4
    assert (fa[~inside] == 0).all()
    assert b0[inside].mean() > 10 * b0[~inside].mean()


def test_estimate_dti_rejects_a_mask_of_another_shape(
    subjects: dict[str, dict[str, Dwi]], tmp_path: Path
) -> None:
    from kwneuro_pydra.resources import InMemoryVolumeResource

    with pytest.raises(ValueError, match=r"estimate_dti: mask shape \(2, 2, 2\)"):
        estimate_dti(subjects["sub-1"]["dwi"], InMemoryVolumeResource(np.ones((2, 2, 2))))


def test_workflow_run_reuses_the_eager_entries(
    subjects: dict[str, dict[str, Dwi]], tmp_path: Path
) -> None:
    from kwneuro_pydra.pydra import run_subjects

    with Cache(tmp_path / "sub-1"):
        eager_fa, _ = dti_pipeline(subjects["sub-1"]["dwi"])
    results = run_subjects(dti_pipeline, subjects, tmp_path, worker="debug")
    assert all(r.ok for r in results.values())
    fa, _ = results["sub-1"].outputs
    assert fa.path == eager_fa.path  # the same cache entry served both
    for subject in subjects:
        entries = Cache(tmp_path / subject).entries("estimate_dti")
        assert len(entries) == 1


@pytest.mark.parametrize("worker", ["debug", "cf"])
def test_a_cleared_subject_cache_is_recomputed_not_served_from_pydras_job_cache(
    subjects: dict[str, dict[str, Dwi]], tmp_path: Path, worker: str
) -> None:
    from kwneuro_pydra.pydra import run_subjects

    first = run_subjects(dti_pipeline, subjects, tmp_path, worker=worker)
    assert Cache(tmp_path / "sub-1").clear() == 2
    again = run_subjects(dti_pipeline, subjects, tmp_path, worker=worker)
    assert all(r.ok for r in again.values())
    fa, _ = again["sub-1"].outputs
    np.testing.assert_array_equal(fa.get_array(), first["sub-1"].outputs[0].get_array())
    assert len(Cache(tmp_path / "sub-1").entries("estimate_dti")) == 1

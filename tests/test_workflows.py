"""Tests of the ready DTI workflow, eagerly and in Pydra (the commands: test_cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kwneuro_pydra import Cache
from kwneuro_pydra.workflows import DtiResult, brain_mask, dti_pipeline, estimate_dti, mean_b0
from kwneuro_pydra.workflows.demo import DEMO_MASK_OPTIONS, make_demo_subject
from tests._volumes import path_of

MASK_OPTIONS: dict[str, Any] = DEMO_MASK_OPTIONS
"""The demo's mask options, as keyword arguments of any step."""


@pytest.fixture(scope="module")
def subjects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("data")
    return {
        f"sub-{i}": {
            "dwi": make_demo_subject(root / f"sub-{i}", i, shape=(24, 24, 16)),
            **MASK_OPTIONS,
        }
        for i in (1, 2)
    }


def test_dti_of_the_phantom_is_anisotropic_inside_and_empty_outside(
    subjects: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    dwi = subjects["sub-1"]["dwi"]
    with Cache(tmp_path):
        mask = brain_mask(dwi, **MASK_OPTIONS).get_array()
        result = dti_pipeline(dwi, **MASK_OPTIONS)
        b0 = mean_b0(dwi).get_array()
    fa, md = result.fa.get_array(), result.md.get_array()
    inside = mask != 0
    assert 0.1 < inside.mean() < 0.5
    assert 0.4 < np.median(fa[inside]) < 0.6  # mostly deep white matter, FA ~0.46
    assert 6e-4 < np.median(md[inside]) < 9e-4
    assert (fa[~inside] == 0).all()
    assert b0[inside].mean() > 10 * np.median(b0[~inside])  # background: noise only


def test_estimate_dti_rejects_a_mask_of_another_shape(
    subjects: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    from kwneuro_pydra.resources import InMemoryVolumeResource

    with pytest.raises(ValueError, match=r"estimate_dti: mask shape \(2, 2, 2\)"):
        estimate_dti(subjects["sub-1"]["dwi"], InMemoryVolumeResource(np.ones((2, 2, 2))))


def test_workflow_run_reuses_the_eager_entries(
    subjects: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    from kwneuro_pydra.pydra import run_subjects

    with Cache(tmp_path / "sub-1"):
        eager = dti_pipeline(**subjects["sub-1"])
    results = run_subjects(dti_pipeline, subjects, tmp_path, worker="debug")
    assert all(r.ok for r in results.values())
    result = results["sub-1"].outputs
    assert isinstance(result, DtiResult)
    assert path_of(result.fa) == path_of(eager.fa)  # the same cache entry served both
    for subject in subjects:
        entries = Cache(tmp_path / subject).entries("estimate_dti")
        assert len(entries) == 1


@pytest.mark.parametrize("worker", ["debug", "cf"])
def test_a_cleared_subject_cache_is_recomputed_not_served_from_pydras_job_cache(
    subjects: dict[str, dict[str, Any]], tmp_path: Path, worker: str
) -> None:
    from kwneuro_pydra.pydra import run_subjects

    first = run_subjects(dti_pipeline, subjects, tmp_path, worker=worker)
    assert Cache(tmp_path / "sub-1").clear() == 2
    again = run_subjects(dti_pipeline, subjects, tmp_path, worker=worker)
    assert all(r.ok for r in again.values())
    fa = again["sub-1"].outputs.fa
    np.testing.assert_array_equal(fa.get_array(), first["sub-1"].outputs.fa.get_array())
    assert len(Cache(tmp_path / "sub-1").entries("estimate_dti")) == 1


@pytest.mark.parametrize("worker", ["debug", "cf"])
def test_a_dti_result_flows_between_pydra_nodes_with_keyword_inputs(
    subjects: dict[str, dict[str, Any]], tmp_path: Path, worker: str
) -> None:
    """A `DtiResult` is a node's output and another node's input; the pipeline's keyword
    parameters (with defaults) are workflow inputs, and an eager run shares the entries."""
    from kwneuro_pydra.pydra import run_subjects
    from tests._dti_steps import white_matter, white_matter_pipeline

    inputs = {s: {"dwi": v["dwi"], "fit_method": "OLS"} for s, v in subjects.items()}
    results = run_subjects(white_matter_pipeline, inputs, tmp_path, worker=worker)
    assert all(r.ok for r in results.values()), results
    result, wm = results["sub-2"].outputs
    assert isinstance(result, DtiResult)
    np.testing.assert_array_equal(wm.get_array(), result.fa.get_array() > 0.3)
    with Cache(tmp_path / "sub-2") as cache:
        assert path_of(white_matter(result)) == path_of(wm)  # the Pydra run's entry, reused
        eager = estimate_dti(
            subjects["sub-2"]["dwi"],
            brain_mask(subjects["sub-2"]["dwi"], **MASK_OPTIONS),
            fit_method="OLS",
        )
        assert path_of(eager.fa) == path_of(result.fa)
    (entry,) = cache.entries("estimate_dti")
    assert entry.scalars["fit_method"] == "OLS"


@pytest.mark.parametrize("start_over", ["rm -rf", "clear", "one subject"])
def test_starting_over_recomputes_and_never_meets_pydras_old_results(
    subjects: dict[str, dict[str, Any]], tmp_path: Path, start_over: str
) -> None:
    """The app's pipeline (several steps take one step's result) with the cf worker, run
    again after its cache root is removed, cleared, or one subject's folder removed."""
    import shutil

    from kwneuro_pydra.pydra import run_subjects
    from kwneuro_pydra.workflows.bids_app import bids_dti

    root = tmp_path / "cache"
    first = run_subjects(bids_dti, subjects, root, worker="cf", n_procs=2)
    assert all(r.ok for r in first.values()), first
    if start_over == "rm -rf":
        shutil.rmtree(root)
    elif start_over == "clear":
        assert all(Cache(root / s).clear() > 0 for s in subjects)
    else:
        shutil.rmtree(root / "sub-1")
    again = run_subjects(bids_dti, subjects, root, worker="cf", n_procs=2)
    assert all(r.ok for r in again.values()), [str(r.failure) for r in again.values()]
    for subject in subjects:
        fa = again[subject].outputs[2].fa
        assert fa.path.is_relative_to(root / subject) and fa.path.exists()
        np.testing.assert_array_equal(fa.get_array(), first[subject].outputs[2].fa.get_array())

"""DTI science against dipy and MRtrix3: shells as scanners write them, b-vectors as files
round them, frames (FSL's b-vectors, world eigenvectors), and the fit's record."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.reconst.dti import TensorModel
from numpy.typing import NDArray

from kwneuro_pydra import Cache
from kwneuro_pydra.resources import (
    Dwi,
    FslBvalResource,
    FslBvecResource,
    InMemoryBvalResource,
    InMemoryBvecResource,
    InMemoryVolumeResource,
    NiftiVolumeResource,
)
from kwneuro_pydra.workflows import estimate_dti
from kwneuro_pydra.workflows._scheme import fitted_scheme, shells
from kwneuro_pydra.workflows.phantom import fsl_bvecs, make_phantom, write_phantom
from tests.test_dti_dipy import dipy_dwi

SMALL = (16, 16, 8)


def in_memory(
    signal: NDArray[np.floating], bvals: NDArray[np.floating], bvecs: NDArray[np.floating]
) -> Dwi:
    """A DWI with an identity affine (voxel axes are world axes, no FSL flip needed...)."""
    return Dwi(
        InMemoryVolumeResource(np.asarray(signal, np.float32)),
        InMemoryBvalResource(np.asarray(bvals, np.float64)),
        InMemoryBvecResource(np.asarray(bvecs, np.float64)),
    )


def dipy_fit(
    signal: NDArray[np.floating],
    bvals: NDArray[np.floating],
    bvecs: NDArray[np.floating],
    method: str = "WLS",
) -> object:
    table = gradient_table(np.asarray(bvals), bvecs=np.asarray(bvecs))
    return TensorModel(table, fit_method=method).fit(np.asarray(signal, np.float64))


# --- shells ---------------------------------------------------------------------------------


def test_a_jittered_shell_is_fitted_whole_and_equals_dipy_on_all_volumes() -> None:
    """1470-1530 for a nominal 1500: fixed 40 s/mm² windows split it and left a third out."""
    phantom = make_phantom(SMALL, seed=11, shells=(1500.0,), jitter=30.0)
    assert phantom.bvals.max() > 1525 and phantom.bvals[2:].min() < 1475
    dwi = in_memory(phantom.signal, phantom.bvals, phantom.bvecs)
    result = estimate_dti(dwi)  # no warning: nothing is left out
    assert result.fit is not None
    assert result.fit.shells == ((pytest.approx(1500.0, abs=5), 30),)
    assert result.fit.left_out == ()
    theirs = dipy_fit(phantom.signal, phantom.bvals, phantom.bvecs)
    brain = phantom.truth.labels > 0
    d_fa = np.abs(result.fa.get_array()[brain] - theirs.fa[brain])  # type: ignore[attr-defined]
    assert np.median(d_fa) < 1e-4


def test_the_shell_tolerance_is_an_option_and_splits_a_shell_when_small() -> None:
    phantom = make_phantom(SMALL, seed=11, shells=(1500.0,), jitter=30.0)
    dwi = in_memory(phantom.signal, phantom.bvals, phantom.bvecs)
    with pytest.warns(UserWarning, match=r"leaving out \d+ volumes of \d+ shells from b=150"):
        split = estimate_dti(dwi, shell_tolerance=0.5)
    assert split.fit is not None and split.fit.left_out and split.fit.shell_tolerance == 0.5
    with pytest.raises(ValueError, match=r"shell_tolerance must be >= 0"):
        estimate_dti(dwi, shell_tolerance=-1)


def test_shells_group_by_gaps_and_keep_small_101d_shells_whole() -> None:
    bvals = np.array([0, 5, 990, 1010, 1030, 1470, 1485, 1500, 1515, 1530, 2000, 3000], float)
    groups = [sorted(bvals[g]) for g in shells(bvals)]
    assert groups == [[990, 1010, 1030], [1470, 1485, 1500, 1515, 1530], [2000], [3000]]
    assert [sorted(bvals[g]) for g in shells(bvals, 10)][:2] == [[990], [1010]]
    dwi = dipy_dwi("small_101D")  # b=1495 was fitted apart from its shell (1495-1585)
    small = np.asarray(dwi.bval.get())
    with pytest.warns(UserWarning, match="leaving out"):
        keep = fitted_scheme(dwi, bmax=1500, step="test").keep
    assert any(small[g].min() == 1495 and small[g].max() == 1585 for g in shells(small))
    for group in shells(small):
        assert keep[group].all() or not keep[group].any(), small[group]


def test_two_decimal_b_vectors_fit_and_match_dipy(tmp_path: Path) -> None:
    """Norms 0.993-1.006 were refused (tolerance 1e-3); dipy accepts 1e-2."""
    dwi = dipy_dwi("small_64D")
    bvals = np.asarray(dwi.bval.get())
    rounded = np.round(np.nan_to_num(np.asarray(dwi.bvec.get())), 2)
    norms = np.linalg.norm(rounded[bvals > 50], axis=1)
    assert np.abs(norms - 1).max() > 3e-3
    np.savetxt(tmp_path / "dwi.bvec", rounded.T, fmt="%.2f")
    shutil.copy(str(dipy_dwi("small_64D").bval.path), tmp_path / "dwi.bval")  # type: ignore[attr-defined]
    ours = Dwi(
        dwi.volume, FslBvalResource(tmp_path / "dwi.bval"), FslBvecResource(tmp_path / "dwi.bvec")
    )
    with pytest.warns(
        UserWarning,
        match=r"b-vectors of .*dwi\.bvec are not of unit length .*"
        r"normalised",
    ):
        result = estimate_dti(ours)
    data = np.asarray(dwi.volume.get_array(), np.float64)
    fitted = np.isfinite(result.fa.get_array()) & (data.min(axis=-1) > 0)
    unit = rounded / np.maximum(np.linalg.norm(rounded, axis=1, keepdims=True), 1e-12)
    unit[bvals <= 50] = 0
    theirs = dipy_fit(data, bvals, unit)  # the table we fit: the same vectors, normalised
    d_fa = np.abs(result.fa.get_array() - theirs.fa)[fitted]  # type: ignore[attr-defined]
    assert np.median(d_fa) < 1e-4
    raw = dipy_fit(data, bvals, rounded)  # dipy's reading of the file: b scaled by |g|^2
    assert np.median(np.abs(result.fa.get_array() - raw.fa)[fitted]) < 2e-3  # type: ignore[attr-defined]


def test_a_single_b3000_shell_warns_that_dti_is_biased() -> None:
    phantom = make_phantom(SMALL, seed=12, shells=(3000.0,))
    with pytest.warns(UserWarning, match=r"no shell .* at most bmax=1500 .*b=3000 .*biased"):
        result = estimate_dti(in_memory(phantom.signal, phantom.bvals, phantom.bvecs))
    assert result.fit is not None and any("biased" in note for note in result.fit.notes)


def test_a_lowest_b_of_60_is_fitted_as_dipy_with_a_warning() -> None:
    """No volume at or below b=50: dipy fits the table as it is (S0 extrapolated)."""
    phantom = make_phantom(SMALL, seed=13, b0_volumes=0, shells=(60.0, 1000.0))
    dwi = in_memory(phantom.signal, phantom.bvals, phantom.bvecs)
    with pytest.warns(UserWarning, match=r"no b=0 volume .*smallest b-value 60 .* as dipy"):
        result = estimate_dti(dwi)
    theirs = dipy_fit(phantom.signal, phantom.bvals, phantom.bvecs)
    brain = phantom.truth.labels > 0
    assert np.median(np.abs(result.fa.get_array() - theirs.fa)[brain]) < 1e-4  # type: ignore[attr-defined]


def test_the_fit_record_survives_the_cache(tmp_path: Path) -> None:
    phantom = make_phantom(SMALL, seed=3, shells=(1000.0, 2000.0))
    dwi = in_memory(phantom.signal, phantom.bvals, phantom.bvecs)
    with Cache(tmp_path), pytest.warns(UserWarning, match="leaving out"):
        computed = estimate_dti(dwi)
    with Cache(tmp_path):
        cached = estimate_dti(dwi)  # served from the cache: no warning, same record
    assert cached.fit == computed.fit
    assert cached.fit is not None and cached.fit.left_out == ((2000.0, 30),)


# --- frames ---------------------------------------------------------------------------------

CI = bool(os.environ.get("CI"))


def mrtrix() -> None:
    """MRtrix3 must be installed on CI (``.ci/run`` installs Debian's ``mrtrix3``)."""
    if shutil.which("dwi2tensor") is None or shutil.which("tensor2metric") is None:
        if CI:
            pytest.fail("MRtrix3 (dwi2tensor, tensor2metric) is not installed on CI")
        pytest.skip("MRtrix3 is not installed")


def mrtrix_vector(directory: Path, dwi: Path, bval: Path, bvec: Path) -> NDArray[np.float32]:
    """MRtrix's principal eigenvector (OLS fit, world coordinates) of a NIfTI + FSL table."""
    clean = directory / "clean.bvec"  # MRtrix carries dipy's nan b=0 rows into every voxel
    np.savetxt(clean, np.nan_to_num(np.loadtxt(bvec)))
    tensor, vector = directory / "tensor.nii", directory / "vector.nii"
    run = {"check": True, "capture_output": True}
    subprocess.run(
        [
            "dwi2tensor",
            "-quiet",
            "-force",
            "-ols",
            "-iter",
            "0",
            "-fslgrad",
            str(clean),
            str(bval),
            str(dwi),
            str(tensor),
        ],
        **run,
    )  # type: ignore[call-overload]
    subprocess.run(
        [
            "tensor2metric",
            "-quiet",
            "-force",
            "-modulate",
            "none",
            "-vector",
            str(vector),
            str(tensor),
        ],
        **run,
    )  # type: ignore[call-overload]
    return np.asarray(nib.load(vector).dataobj, np.float32)  # type: ignore[attr-defined]


def angles(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float64]:
    """Angles in degrees between axes (sign ignored)."""
    cosine = np.abs((np.asarray(a, np.float64) * b).sum(axis=-1))
    return np.degrees(np.arccos(np.clip(cosine, 0.0, 1.0)))


def test_world_eigenvectors_agree_with_mrtrix_within_a_tenth_of_a_degree(
    tmp_path: Path,
) -> None:
    """dipy's small_64D is stored P-L-S with an oblique affine: the b-vector frame is 60
    degrees from MRtrix's scanner frame, ``frame="world"`` within 0.1 degree of it."""
    mrtrix()
    dwi = dipy_dwi("small_64D")
    paths = [Path(str(r.path)) for r in (dwi.volume, dwi.bval, dwi.bvec)]  # type: ignore[attr-defined]
    theirs = mrtrix_vector(tmp_path, *paths)
    world = estimate_dti(dwi, fit_method="OLS", frame="world")
    bvec = estimate_dti(dwi, fit_method="OLS")
    data = np.asarray(dwi.volume.get_array())
    evals = world.evals.get_array()
    # voxels MRtrix and dipy fit alike: every sample above 0, eigenvalues above dipy's floor
    usable = (data.min(axis=-1) > 0) & (evals[..., 2] > 1e-5)
    assert usable.sum() > 900
    assert angles(world.evecs.get_array()[..., :, 0], theirs)[usable].max() < 0.1
    assert np.median(angles(bvec.evecs.get_array()[..., :, 0], theirs)[usable]) > 10


def test_the_phantom_writes_fsl_b_vectors_that_mrtrix_reads_as_its_truth(tmp_path: Path) -> None:
    """A positive-determinant affine: FSL's b-vectors mirror x. Voxel-frame vectors in the
    file made MRtrix read mirrored bundles (33.6 degrees median error)."""
    mrtrix()
    paths = [tmp_path / name for name in ("dwi.nii.gz", "dwi.bval", "dwi.bvec")]
    truth = write_phantom(*paths, shape=(24, 24, 16), seed=6, snr=float("inf"))
    theirs = mrtrix_vector(tmp_path, *paths)
    bundles = np.isin(truth.labels, [3, 4])  # curved: x and another component
    assert np.median(angles(theirs, truth.direction)[bundles]) < 0.5
    dwi = Dwi(NiftiVolumeResource(paths[0]), FslBvalResource(paths[1]), FslBvecResource(paths[2]))
    ours = estimate_dti(dwi, frame="world").evecs.get_array()[..., :, 0]
    assert np.median(angles(ours, truth.direction)[bundles]) < 0.5


def test_fsl_bvecs_mirror_x_only_for_a_positive_determinant() -> None:
    vectors = np.array([[0.6, 0.8, 0.0]])
    np.testing.assert_array_equal(fsl_bvecs(vectors, np.diag([2.0, 2, 2, 1])), [[-0.6, 0.8, 0]])
    np.testing.assert_array_equal(fsl_bvecs(vectors, np.diag([-2.0, 2, 2, 1])), vectors)

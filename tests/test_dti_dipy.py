"""The DTI workflow gives dipy's numbers on dipy's shipped datasets (no download).

dipy is the field's reference: ``TensorModel(fit_method="WLS")`` (its default) for our WLS,
``"LS"`` for our OLS, ``median_otsu`` for the brain mask. Same volumes (our shell selection
applied to both sides: ``small_101D`` goes up to b=4065) and the same mask on both sides.
"""

from __future__ import annotations

import contextlib
from typing import Any

import dipy.segment.mask
import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.data import get_fnames
from dipy.reconst.dti import TensorModel
from dipy.segment.threshold import otsu as dipy_otsu
from numpy.typing import NDArray
from scipy import ndimage  # type: ignore[import-untyped]

from kwneuro_pydra.resources import (
    Dwi,
    FslBvalResource,
    FslBvecResource,
    InMemoryVolumeResource,
    NiftiVolumeResource,
)
from kwneuro_pydra.workflows import DtiResult, brain_mask, estimate_dti
from kwneuro_pydra.workflows._mask import median_filter, median_otsu, otsu_threshold
from kwneuro_pydra.workflows._scheme import fitted_scheme
from kwneuro_pydra.workflows._tensor import world_rotation
from kwneuro_pydra.workflows.phantom import make_phantom

DATASETS = ["small_101D", "small_64D", "small_25"]
METHODS = {"WLS": "WLS", "OLS": "LS"}  # ours -> dipy's name


def dipy_dwi(name: str) -> Dwi:
    """A dipy dataset as a file-backed `Dwi`."""
    volume, bval, bvec = get_fnames(name=name)
    return Dwi(NiftiVolumeResource(volume), FslBvalResource(bval), FslBvecResource(bvec))


def shell_warning(name: str) -> contextlib.AbstractContextManager[Any]:
    """``small_101D`` has b-values up to 4065: the fit warns about the volumes left out;
    ``small_25`` is a single shell at b=2000: the fit warns that the tensor is biased."""
    if name == "small_101D":
        return pytest.warns(UserWarning, match=r"leaving out \d+ volumes")
    if name == "small_25":
        return pytest.warns(UserWarning, match=r"fitting the lowest, b=2000 .* biased")
    return contextlib.nullcontext()


Fit = tuple[DtiResult, Any, NDArray[np.bool_]]


@pytest.fixture(scope="module")
def fits() -> dict[tuple[str, str], Fit]:
    """Ours and dipy's fit of each dataset by each method, and the voxels fitted."""
    out = {}
    for name in DATASETS:
        dwi = dipy_dwi(name)
        with shell_warning(name):
            scheme = fitted_scheme(dwi, bmax=1500.0, step="test")
        data = np.asarray(dwi.volume.get_array())[..., scheme.keep]
        mask = data[..., scheme.bvals <= 50].mean(axis=-1) > 0  # every voxel with signal
        table = gradient_table(scheme.bvals, bvecs=np.asarray(dwi.bvec.get())[scheme.keep])
        for ours_method, dipy_method in METHODS.items():
            with shell_warning(name):
                ours = estimate_dti(
                    dwi, InMemoryVolumeResource(mask.astype(np.uint8)), fit_method=ours_method
                )
            model = TensorModel(table, fit_method=dipy_method, return_S0_hat=True)  # type: ignore[no-untyped-call]
            out[name, ours_method] = (ours, model.fit(data, mask=mask), mask)
    return out


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", DATASETS)
def test_fa_md_ad_rd_match_dipy_within_the_issue_bounds(
    fits: dict[tuple[str, str], Fit], name: str, method: str
) -> None:
    ours, theirs, mask = fits[name, method]
    assert mask.sum() >= 100
    d_fa = np.abs(ours.fa.get_array()[mask] - theirs.fa[mask])
    assert np.median(d_fa) < 1e-4
    assert np.percentile(d_fa, 99) < 1e-3
    for label in ("md", "ad", "rd"):
        reference = getattr(theirs, label)[mask]
        relative = np.abs(getattr(ours, label).get_array()[mask] - reference) / reference
        assert np.median(relative) < 1e-4, label
        assert np.percentile(relative, 99) < 1e-3, label


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", DATASETS)
def test_evals_evecs_tensor_s0_and_color_fa_match_dipy(
    fits: dict[tuple[str, str], Fit], name: str, method: str
) -> None:
    ours, theirs, mask = fits[name, method]
    evals = theirs.evals[mask]
    np.testing.assert_allclose(ours.evals.get_array()[mask], evals, rtol=1e-5, atol=1e-9)
    scale = np.abs(theirs.lower_triangular()[mask]).max(axis=1, keepdims=True)
    d_tensor = np.abs(ours.tensor.get_array()[mask] - theirs.lower_triangular()[mask]) / scale
    assert d_tensor.max() < 1e-5
    np.testing.assert_allclose(ours.s0.get_array()[mask], theirs.S0_hat[mask], rtol=1e-5)
    # eigenvectors: same axis up to sign, where the eigenvalues are distinct
    distinct = np.diff(-evals, axis=1).min(axis=1) > 1e-3 * evals[:, 0]
    cosines = np.abs(np.einsum("nik,nik->nk", ours.evecs.get_array()[mask], theirs.evecs[mask]))
    assert distinct.sum() > 0.5 * mask.sum()
    np.testing.assert_allclose(cosines[distinct], 1, atol=1e-4)
    # colour FA: dipy's principal eigenvector taken to world axes (ours is in world axes)
    rotation = world_rotation(ours.fa.get_affine())
    world = np.abs(theirs.evecs[mask][:, :, 0] @ rotation.T) * theirs.fa[mask][:, None]
    np.testing.assert_allclose(ours.color_fa.get_array()[mask], world, atol=1e-5)


def test_fa_is_sqrt_one_half_of_the_eigenvalue_spread_as_dipy(
    fits: dict[tuple[str, str], Fit],
) -> None:
    """Pins the FA formula: sqrt(2) instead of sqrt(1.5) in front of |l - mean| / |l|
    would be 15 % off; dipy's fractional_anisotropy is the reference."""
    from dipy.reconst.dti import fractional_anisotropy

    ours, _, mask = fits["small_64D", "WLS"]
    evals = ours.evals.get_array()[mask].astype(np.float64)
    fa = ours.fa.get_array()[mask]
    np.testing.assert_allclose(fa, fractional_anisotropy(evals), atol=1e-6)
    spread = np.linalg.norm(evals - evals.mean(axis=1, keepdims=True), axis=1)
    np.testing.assert_allclose(
        fa, np.sqrt(1.5) * spread / np.linalg.norm(evals, axis=1), atol=1e-6
    )
    assert 0.2 < np.median(fa) < 0.9  # anisotropic enough for the factor to matter


# --- the mask --------------------------------------------------------------------------


def _b0_and_dipy_inputs(name: str) -> tuple[NDArray[Any], NDArray[np.intp], NDArray[Any]]:
    dwi = dipy_dwi(name)
    data = np.asarray(dwi.volume.get_array())
    b0 = np.flatnonzero(np.asarray(dwi.bval.get()) <= 50)
    return data, b0, data[..., b0].mean(axis=-1)


def dice(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


@pytest.mark.parametrize("finalize", [False, True])
@pytest.mark.parametrize(("radius", "numpass"), [(4, 4), (2, 2), (1, 1)])
@pytest.mark.parametrize("name", DATASETS)
def test_median_otsu_is_dipys_algorithm(
    name: str, radius: int, numpass: int, finalize: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the same Otsu threshold (dipy falls back to its own variant when scikit-image
    is missing), the masks are identical; with dipy's own, nearly so."""
    data, b0, mean = _b0_and_dipy_inputs(name)
    ours = median_otsu(mean, median_radius=radius, numpass=numpass, dilate=0, finalize=finalize)
    _, as_is = dipy.segment.mask.median_otsu(
        data, vol_idx=b0, median_radius=radius, numpass=numpass, finalize_mask=finalize
    )
    assert dice(ours, as_is) > 0.95
    monkeypatch.setattr(dipy.segment.mask, "otsu", otsu_threshold)
    _, same_threshold = dipy.segment.mask.median_otsu(
        data, vol_idx=b0, median_radius=radius, numpass=numpass, finalize_mask=finalize
    )
    np.testing.assert_array_equal(ours, same_threshold)


def test_brain_mask_matches_dipy_on_a_phantom_and_finds_the_brain() -> None:
    phantom = make_phantom((40, 40, 24), seed=5)
    volume = brain_mask(phantom.dwi(), mask_method="median-otsu", median_radius=2, numpass=2)
    mask = volume.get_array() != 0
    _, theirs = dipy.segment.mask.median_otsu(
        phantom.signal,
        vol_idx=np.flatnonzero(phantom.bvals == 0),
        median_radius=2,
        numpass=2,
        finalize_mask=True,
    )
    assert dice(mask, theirs) > 0.999
    assert dice(mask, phantom.truth.labels > 0) > 0.9


@pytest.mark.parametrize("radius", [0, 1, 2, 4])
def test_median_filter_equals_scipys(radius: int) -> None:
    _, _, mean = _b0_and_dipy_inputs("small_64D")
    expected = ndimage.median_filter(mean, size=2 * radius + 1, mode="reflect")
    np.testing.assert_array_equal(median_filter(mean, radius), expected)


@pytest.mark.parametrize("name", DATASETS)
def test_otsu_threshold_is_within_a_histogram_bin_of_dipys(name: str) -> None:
    _, _, mean = _b0_and_dipy_inputs(name)
    width = (mean.max() - mean.min()) / 256
    assert abs(otsu_threshold(mean) - dipy_otsu(mean)) <= width

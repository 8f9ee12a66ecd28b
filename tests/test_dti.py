"""The DTI steps on real-data troubles, on phantoms with known tensors, and in the cache."""

from __future__ import annotations

import re
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from dipy.reconst.dti import wls_fit_tensor
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from kwneuro_pydra import Cache, fingerprint
from kwneuro_pydra.resources import (
    Dwi,
    FslBvalResource,
    FslBvecResource,
    InMemoryBvalResource,
    InMemoryBvecResource,
    InMemoryVolumeResource,
    NiftiVolumeResource,
)
from kwneuro_pydra.workflows import DtiResult, brain_mask, dti_pipeline, estimate_dti, mean_b0
from kwneuro_pydra.workflows._linalg import eigh3, solve_spd
from kwneuro_pydra.workflows._tensor import (
    MAP_SHAPES,
    design_matrix,
    fit_volume,
)
from kwneuro_pydra.workflows.phantom import (
    TISSUES,
    gradient_scheme,
    make_phantom,
    write_phantom,
)
from tests.strategies import symmetric_3x3
from tests.test_dti_dipy import dipy_dwi

SMALL = (16, 16, 8)


def write_dwi(
    directory: Path,
    data: NDArray[np.floating],
    bvals: NDArray[np.floating],
    bvecs: NDArray[np.floating],
) -> Dwi:
    """Write a DWI as NIfTI + FSL text, bypassing `Dwi`'s validation, and open it."""
    directory.mkdir(parents=True, exist_ok=True)
    NiftiVolumeResource.save(
        InMemoryVolumeResource(data.astype(np.float32)), directory / "dwi.nii"
    )
    (directory / "dwi.bval").write_text(" ".join(map(str, bvals)) + "\n")
    (directory / "dwi.bvec").write_text(
        "\n".join(" ".join(map(str, row)) for row in np.asarray(bvecs).T) + "\n"
    )
    return Dwi(
        NiftiVolumeResource(directory / "dwi.nii"),
        FslBvalResource(directory / "dwi.bval"),
        FslBvecResource(directory / "dwi.bvec"),
    )


def phantom_dwi(**options: object) -> Dwi:
    return make_phantom(SMALL, seed=2, **options).dwi()  # type: ignore[arg-type]


def arrays(result: DtiResult) -> dict[str, NDArray[np.float32]]:
    return {name: volume.get_array() for name, volume in result.maps().items()}


# --- real-data robustness ------------------------------------------------------------------


def test_nan_bvecs_on_b0_rows_are_accepted() -> None:
    dwi = dipy_dwi("small_64D")  # NaN b-vectors on its b=0 row
    assert np.isnan(dwi.bvec.get()[dwi.b0_mask()]).all()
    fa = estimate_dti(dwi).fa.get_array()
    assert np.isfinite(fa).all() and fa.max() > 0.3


def test_nan_bvec_of_a_low_nonzero_b0_row_is_accepted(tmp_path: Path) -> None:
    phantom = make_phantom(SMALL, seed=1)
    bvals, bvecs = phantom.bvals.copy(), phantom.bvecs.copy()
    bvals[0], bvecs[0] = 5.0, np.nan  # b=5 counts as b=0, like dipy's threshold of 50
    dwi = write_dwi(tmp_path, phantom.signal, bvals, bvecs)
    np.testing.assert_allclose(
        estimate_dti(dwi).md.get_array(), estimate_dti(phantom.dwi()).md.get_array(), rtol=1e-3
    )


def test_a_nan_bvec_of_a_weighted_volume_names_the_file(tmp_path: Path) -> None:
    phantom = make_phantom(SMALL, seed=1)
    bvecs = phantom.bvecs.copy()
    bvecs[5] = np.nan
    with pytest.raises(
        ValueError, match=r"unit vectors: 1 are not, first at volume 5 .*dwi\.bvec"
    ):
        write_dwi(tmp_path, phantom.signal, phantom.bvals, bvecs)


def test_no_b0_volume_and_a_single_shell_fitted_is_refused_naming_the_file(
    tmp_path: Path,
) -> None:
    bvals, bvecs = gradient_scheme(b0_volumes=0, shells=(1000.0, 2000.0))
    dwi = write_dwi(tmp_path, np.ones((*SMALL, len(bvals))), bvals, bvecs)
    with pytest.raises(
        ValueError, match=r"no b=0 volume in .*dwi\.bval .*single shell fitted.*add the b=0"
    ):
        estimate_dti(dwi)
    with pytest.raises(ValueError, match=r"mean_b0: no b=0 volume .*dwi\.bval"):
        mean_b0(dwi)


def test_fewer_than_six_directions_are_refused_naming_the_file(tmp_path: Path) -> None:
    bvals, bvecs = gradient_scheme(directions=5)
    bvals, bvecs = np.r_[bvals, bvals[2:]], np.r_[bvecs, -bvecs[2:]]  # repeats, flipped
    dwi = write_dwi(tmp_path, np.ones((*SMALL, len(bvals))), bvals, bvecs)
    with pytest.raises(ValueError, match=r"6 non-collinear .* span only 5 \(.*dwi\.bvec\)"):
        estimate_dti(dwi)


@pytest.mark.parametrize(
    ("scale", "advice"),
    [(1e-3, "multiply them by 1000"), (1e6, "divide them by 1e6"), (0.0, "no volume is")],
)
def test_b_values_in_another_unit_are_refused_naming_the_file(
    tmp_path: Path, scale: float, advice: str
) -> None:
    bvals, bvecs = gradient_scheme()
    dwi = write_dwi(tmp_path, np.ones((*SMALL, len(bvals))), bvals * scale, bvecs)
    with pytest.raises(ValueError, match=rf"largest b-value in .*dwi\.bval .*{advice}"):
        estimate_dti(dwi)


def test_count_mismatch_names_the_three_files(tmp_path: Path) -> None:
    phantom = make_phantom(SMALL, seed=1)
    with pytest.raises(ValueError, match=r"DWI counts disagree") as caught:
        write_dwi(tmp_path, phantom.signal, phantom.bvals[:-1], phantom.bvecs)
    message = str(caught.value)
    for suffix in ("dwi.nii", "dwi.bval", "dwi.bvec"):
        assert f"{tmp_path / suffix}" in message
    assert "32 diffusion volumes" in message and "31 b-values" in message


def _check_fits_only_up_to(
    tmp_path: Path, shells: tuple[float, ...], up_to: float, *left_out: str, bmax: float = 1500
) -> Dwi:
    """Fitting a phantom of ``shells`` warns each of ``left_out`` (and nothing else) and
    equals fitting b <= ``up_to``."""
    phantom = make_phantom(SMALL, seed=3, shells=shells)
    dwi = write_dwi(tmp_path, phantom.signal, phantom.bvals, phantom.bvecs)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        fitted = estimate_dti(dwi, bmax=bmax)
    messages = [str(w.message) for w in warned]
    assert len(messages) == len(left_out), messages
    for pattern, message in zip(left_out, messages, strict=True):
        assert re.search(pattern, message), (pattern, message)
    low = phantom.bvals <= up_to
    alone = Dwi(
        InMemoryVolumeResource(phantom.signal[..., low]),
        InMemoryBvalResource(phantom.bvals[low]),
        InMemoryBvecResource(phantom.bvecs[low]),
    )
    for name, values in arrays(estimate_dti(alone, bmax=max(bmax, up_to))).items():
        np.testing.assert_array_equal(arrays(fitted)[name], values, err_msg=name)
    return dwi


def test_multi_shell_fits_shells_up_to_bmax_and_names_those_left_out(tmp_path: Path) -> None:
    left_out = (
        r"leaving out 60 volumes of b=2000 \(30 volumes\), b=3000 \(30 volumes\) "
        r"\(.*dwi\.bval\), whose nominal b-value is above bmax=1500"
    )
    dwi = _check_fits_only_up_to(tmp_path, (1000.0, 2000.0, 3000.0), 1000, left_out)
    with pytest.warns(UserWarning, match=left_out):
        multi = estimate_dti(dwi)
    assert multi.fit is not None
    assert multi.fit.shells == ((1000.0, 30),)
    assert multi.fit.left_out == ((2000.0, 30), (3000.0, 30))
    assert any("leaving out 60 volumes" in note for note in multi.fit.notes)
    with pytest.warns(UserWarning, match=r"leaving out 30 volumes of b=3000 \(30 volumes\)"):
        estimate_dti(dwi, bmax=2500)


def test_only_shells_above_bmax_fit_the_lowest_and_name_the_others(tmp_path: Path) -> None:
    lowest = r"no shell .* is at most bmax=1500 s/mm²; fitting the lowest, b=2000 .*biased"
    left_out = r"fitting the tensor to b=2000 .*leaving out 30 volumes of b=3000 \(30 volumes\)"
    _check_fits_only_up_to(tmp_path, (2000.0, 3000.0), 2000, lowest, left_out, bmax=1500)


def test_a_shell_beyond_bmax_and_its_tolerance_is_left_out(tmp_path: Path) -> None:
    # A shell is in when its nominal b-value is within SHELL_TOLERANCE (20) of bmax.
    left_out = r"fitting the tensor to b=500 .*leaving out 30 volumes of b=1021 \(30 volumes\)"
    _check_fits_only_up_to(tmp_path, (500.0, 1021.0), 1000, left_out, bmax=1000)


def test_a_single_shell_above_bmax_is_fitted_with_a_warning_that_it_is_biased() -> None:
    dwi = dipy_dwi("small_25")  # b=2000 only
    assert np.asarray(dwi.bval.get()).max() == 2000
    with pytest.warns(UserWarning, match=r"fitting the lowest, b=2000 .*biased at high b"):
        result = estimate_dti(dwi)
    assert 3e-4 < np.nanmedian(result.md.get_array()) < 3e-3
    assert result.fit is not None and result.fit.shells == ((2000.0, 25),)


def test_nan_and_infinite_samples_leave_their_voxels_nan_with_a_warning() -> None:
    phantom = make_phantom(SMALL, seed=4)
    table = (InMemoryBvalResource(phantom.bvals), InMemoryBvecResource(phantom.bvecs))
    clean = arrays(estimate_dti(Dwi(InMemoryVolumeResource(phantom.signal), *table)))
    signal = phantom.signal.copy()
    signal[8, 8, 4, 3] = np.nan
    signal[9, 8, 4, 0] = np.inf
    signal[10, 8, 4, :] = np.nan
    dwi = Dwi(InMemoryVolumeResource(signal), *table)
    with pytest.warns(UserWarning, match=r"3 voxels of in memory have NaN or infinite samples"):
        fitted = estimate_dti(dwi)
    assert fitted.fit is not None and fitted.fit.unfitted == 3
    result = arrays(fitted)
    bad = np.zeros(SMALL, bool)
    bad[8:11, 8, 4] = True
    for name, values in result.items():
        assert np.isnan(values[bad]).all(), name
        np.testing.assert_array_equal(values[~bad], clean[name][~bad], err_msg=name)


def test_negative_samples_are_clipped_like_dipy_with_a_warning() -> None:
    phantom = make_phantom(SMALL, seed=4)
    signal = phantom.signal.copy()
    signal[4:8, 8, 4, 5] = -20.0
    dwi = Dwi(
        InMemoryVolumeResource(signal),
        InMemoryBvalResource(phantom.bvals),
        InMemoryBvecResource(phantom.bvecs),
    )
    with pytest.warns(UserWarning, match=r"4 voxels of in memory have negative samples"):
        result = estimate_dti(dwi)
    clipped = np.maximum(signal, 1e-4)
    dipy_fit = wls_fit_tensor(
        design_matrix(phantom.bvals, phantom.bvecs), clipped[4:8, 8, 4].astype(np.float64)
    )[0]
    np.testing.assert_allclose(result.evals.get_array()[4:8, 8, 4], dipy_fit[:, :3], rtol=1e-5)


def test_all_zero_voxels_of_the_mask_are_nan_and_counted_and_outside_it_0() -> None:
    phantom = make_phantom(SMALL, seed=4, snr=float("inf"))  # background exactly 0
    background = phantom.truth.labels == 0
    fitted = estimate_dti(phantom.dwi())  # no mask: every voxel is tried, none warns
    assert fitted.fit is not None and fitted.fit.unfitted == background.sum() > 100
    result = arrays(fitted)
    for name, values in result.items():
        assert np.isnan(values[background]).all(), name
    assert (result["fa"][~background] > 0).all()
    inside = InMemoryVolumeResource((~background).astype(np.uint8))
    masked = arrays(estimate_dti(phantom.dwi(), inside))  # none in the mask: no warning
    for name, values in masked.items():
        assert (values[background] == 0).all(), name
    inside = InMemoryVolumeResource(np.ones(SMALL, np.uint8))
    with pytest.warns(UserWarning, match=rf"{background.sum()} voxels .* no sample above 0"):
        estimate_dti(phantom.dwi(), inside)


def test_bad_parameters_are_refused_naming_them() -> None:
    dwi = phantom_dwi()
    with pytest.raises(ValueError, match=r"fit_method must be one of WLS, OLS, got 'LS'"):
        estimate_dti(dwi, fit_method="LS")
    with pytest.raises(ValueError, match=r"bmax must be above the b=0 threshold"):
        estimate_dti(dwi, bmax=10)
    with pytest.raises(ValueError, match=r"estimate_dti: mask shape \(2, 2, 2\) \(in memory\)"):
        estimate_dti(dwi, InMemoryVolumeResource(np.ones((2, 2, 2))))
    with pytest.raises(ValueError, match=r"brain_mask: median_radius must be a whole number"):
        brain_mask(dwi, median_radius=-1)
    with pytest.raises(ValueError, match=r"brain_mask: numpass must be a whole number"):
        brain_mask(dwi, numpass=1.5)  # type: ignore[arg-type]


# --- phantoms with known tensors --------------------------------------------------------------


def test_noise_free_phantom_gives_its_true_fa_md_and_directions() -> None:
    """Pins the fit and the FA formula against known tensors: sqrt(2) for sqrt(1.5) would
    put FA 15 % off, a wrong design matrix or eigenvector order the directions."""
    phantom = make_phantom((24, 24, 16), seed=6, snr=float("inf"))
    result = arrays(estimate_dti(phantom.dwi()))
    labels, truth = phantom.truth.labels, phantom.truth
    assert set(np.unique(labels)) == set(range(len(TISSUES)))
    brain = labels > 0
    np.testing.assert_allclose(result["fa"][brain], truth.fa[brain], atol=1e-5)
    np.testing.assert_allclose(result["md"][brain], truth.md[brain], rtol=1e-5)
    bundles = np.isin(labels, [3, 4, 5])
    # the b-vectors are FSL's for a positive-determinant affine: x mirrored (dipy's frame)
    mirrored = truth.direction * np.array([-1, 1, 1], np.float32)
    cosines = np.abs((result["evecs"][..., 0] * mirrored).sum(axis=-1))
    np.testing.assert_allclose(cosines[bundles], 1, atol=1e-5)
    world = arrays(estimate_dti(phantom.dwi(), frame="world"))
    cosines = np.abs((world["evecs"][..., 0] * truth.direction).sum(axis=-1))
    np.testing.assert_allclose(cosines[bundles], 1, atol=1e-5)
    for name in ("fa", "md", "evals", "s0", "color_fa"):
        np.testing.assert_array_equal(world[name], result[name], err_msg=name)
    s0 = np.array([0, 1200, 1000, 1000, 1000, 1000, 2000])[labels]
    np.testing.assert_allclose(result["s0"][brain], s0[brain], rtol=1e-5)


def test_noisy_phantom_is_close_to_its_truth_and_seeds_give_other_subjects() -> None:
    phantom = make_phantom((24, 24, 16), seed=7, snr=30)
    result = arrays(estimate_dti(phantom.dwi()))
    wm = np.isin(phantom.truth.labels, [2, 3, 4, 5])
    assert np.median(np.abs(result["fa"][wm] - phantom.truth.fa[wm])) < 0.05
    assert np.median(np.abs(result["md"][wm] / phantom.truth.md[wm] - 1)) < 0.05
    other = make_phantom((24, 24, 16), seed=8, snr=30)
    assert not np.array_equal(other.truth.md, phantom.truth.md)
    np.testing.assert_array_equal(make_phantom((24, 24, 16), seed=7).signal, phantom.signal)


def test_write_phantom_writes_a_dwi_and_returns_its_truth(tmp_path: Path) -> None:
    paths = [tmp_path / name for name in ("dwi.nii.gz", "dwi.bval", "dwi.bvec")]
    truth = write_phantom(*paths, shape=SMALL, seed=1, shells=(1000.0, 2000.0), directions=12)
    dwi = Dwi(NiftiVolumeResource(paths[0]), FslBvalResource(paths[1]), FslBvecResource(paths[2]))
    assert dwi.volume.get_shape() == (*SMALL, 2 + 24)
    assert truth.labels.shape == truth.fa.shape == truth.md.shape == SMALL
    assert truth.direction.shape == (*SMALL, 3)
    assert sorted(set(dwi.bval.get())) == [0, 1000, 2000]


# --- the mask's parameters ------------------------------------------------------------------


def _gradual_dwi() -> Dwi:
    """A b=0 image whose intensity falls off gradually from a bright core, with a thin rod
    and a separate blob: each mask parameter changes what is kept."""
    u, v, w = np.meshgrid(*[np.linspace(-1, 1, n) for n in (32, 32, 24)], indexing="ij")
    b0 = 1000 * np.exp(-2.5 * (u**2 + v**2 + w**2))
    b0[14:17, 14:17, :] = 700  # a rod 3 voxels thick through the volume
    b0[1:9, 1:9, 1:9] = 900  # an island
    b0 += np.random.default_rng(0).normal(0, 20, b0.shape)
    bvals, bvecs = gradient_scheme(b0_volumes=1, directions=6)
    signal = np.repeat(np.abs(b0)[..., None], len(bvals), axis=-1)
    return Dwi(
        InMemoryVolumeResource(signal.astype(np.float32)),
        InMemoryBvalResource(bvals),
        InMemoryBvecResource(bvecs),
    )


@pytest.mark.parametrize(
    ("changed", "option"),
    [
        ({"median_radius": 1}, {"median_radius": 3}),
        ({"numpass": 1}, {"numpass": 4}),
        ({"dilate": 0}, {"dilate": 2}),
        ({"finalize_mask": False}, {"finalize_mask": True}),
    ],
)
def test_every_mask_parameter_changes_the_mask(
    changed: dict[str, object], option: dict[str, object]
) -> None:
    dwi = _gradual_dwi()
    base = {"mask_method": "median-otsu", "median_radius": 2, "numpass": 2}
    first = brain_mask(dwi, **{**base, **changed}).get_array()  # type: ignore[arg-type]
    second = brain_mask(dwi, **{**base, **option}).get_array()  # type: ignore[arg-type]
    assert 0.01 < first.mean() < 0.9 and 0.01 < second.mean() < 0.9
    assert (first != second).sum() > 10


# --- the result: cache, headers, fingerprint ------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_estimate_dti_caches_every_map_with_units_and_a_description(
    tmp_path: Path, compress: bool
) -> None:
    dwi = phantom_dwi()
    with Cache(tmp_path, nifti_compression=compress):
        computed = estimate_dti(dwi, fit_method="OLS")
        cached = estimate_dti(dwi, fit_method="OLS")
    suffix = ".nii.gz" if compress else ".nii"
    for name, volume in cached.maps().items():
        assert isinstance(volume, NiftiVolumeResource)
        assert volume.path.name == f"estimate_dti_{name}{suffix}"
        array = volume.get_array()
        assert array.dtype == np.float32 and array.shape == (*SMALL, *MAP_SHAPES[name])
        np.testing.assert_array_equal(array, computed.maps()[name].get_array())
        header = volume.get_metadata()
        assert int(header["xyzt_units"]) == 10  # mm and s
        assert bytes(header["descrip"]).startswith(b"kwneuro-pydra DTI OLS ")
        np.testing.assert_array_equal(volume.get_affine(), dwi.volume.get_affine())
    assert b"fractional anisotropy" in bytes(cached.fa.get_metadata()["descrip"])
    assert b"mm2/s" in bytes(cached.md.get_metadata()["descrip"])


def test_dti_result_fingerprints_by_content_and_feeds_a_step(tmp_path: Path) -> None:
    from tests._dti_steps import white_matter

    dwi = phantom_dwi()
    with Cache(tmp_path):
        result = dti_pipeline(dwi, median_radius=1, numpass=1)
        again = dti_pipeline(dwi, median_radius=1, numpass=1)
        wm = white_matter(result).get_array()
    assert fingerprint(result) is not None
    assert fingerprint(result) == fingerprint(again)  # by the files' content
    loaded = result.load()
    assert fingerprint(loaded) == fingerprint(result.load())  # by the arrays
    fa = loaded.fa.get_array().copy()
    fa[0, 0, 0] += 1
    other = DtiResult(
        **{
            **loaded.maps(),
            "fa": InMemoryVolumeResource(fa, loaded.fa.get_affine(), loaded.fa.get_metadata()),
        }
    )
    assert fingerprint(other) != fingerprint(loaded)
    np.testing.assert_array_equal(wm, result.fa.get_array() > 0.3)


# --- the numerics ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(symmetric_3x3(), min_size=1, max_size=8))
def test_eigh3_agrees_with_lapack(matrices: list[NDArray[np.float64]]) -> None:
    stack = np.array(matrices)
    evals, evecs = eigh3(np.ascontiguousarray(stack.transpose(1, 2, 0)))
    expected = np.linalg.eigh(stack)[0][:, ::-1]
    scale = np.abs(stack).max(axis=(1, 2))[:, None] + 1e-300
    np.testing.assert_allclose(evals / scale, expected / scale, atol=1e-12)
    identity = np.broadcast_to(np.eye(3), stack.shape)
    np.testing.assert_allclose(evecs.transpose(0, 2, 1) @ evecs, identity, atol=1e-12)
    rebuilt = evecs @ (evals[:, :, None] * evecs.transpose(0, 2, 1))
    np.testing.assert_allclose(rebuilt / scale[:, :, None], stack / scale[:, :, None], atol=1e-12)


def test_solve_spd_solves_and_flags_singular_systems() -> None:
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(50, 7, 7))
    spd = factors @ factors.transpose(0, 2, 1) + 0.1 * np.eye(7)
    spd[3] = 0  # singular
    rhs = rng.normal(size=(50, 7))
    x, ok = solve_spd(np.ascontiguousarray(spd.transpose(1, 2, 0)), np.ascontiguousarray(rhs.T))
    assert not ok[3] and ok[np.arange(50) != 3].all()
    expected = np.linalg.solve(spd[ok], rhs[ok][..., None])[..., 0]
    np.testing.assert_allclose(x.T[ok], expected, rtol=1e-9, atol=1e-12)


def test_wls_with_vanishing_weights_gives_the_minimum_norm_solution_as_dipys_pinv() -> None:
    """Weights that underflow leave a singular weighted system: dipy's ``pinv`` then gives
    the minimum-norm solution, and so does our fallback."""
    from kwneuro_pydra.workflows._tensor import _weighted

    bvals, bvecs = gradient_scheme(directions=12)
    design = design_matrix(bvals, bvecs)
    log_s = np.log(np.random.default_rng(0).uniform(100, 1000, (len(bvals), 2)))
    beta = np.zeros((7, 2))
    beta[0, 0] = 100.0  # weights vanish wherever the gradient has an x part
    w = np.exp(design @ beta - (design @ beta).max(axis=0))
    assert (w[:, 0] ** 2 == 0).sum() > 6
    expected = np.stack(
        [np.linalg.pinv(design * w[:, i, None]) @ (w[:, i] * log_s[:, i]) for i in range(2)],
        axis=1,
    )
    np.testing.assert_allclose(_weighted(log_s, design, beta), expected, rtol=1e-8, atol=1e-12)


def test_fit_volume_blocks_do_not_change_the_result_and_bound_its_memory() -> None:
    phantom = make_phantom((20, 20, 20), seed=9, b0_volumes=5, directions=60)
    inside = phantom.truth.labels > 0
    keep = np.ones(len(phantom.bvals), bool)
    design = design_matrix(phantom.bvals, phantom.bvecs)
    whole = fit_volume(phantom.signal, inside, keep, design, "WLS", voxels_per_block=10**9)
    tracemalloc.start()
    blocks = fit_volume(phantom.signal, inside, keep, design, "WLS", voxels_per_block=400)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    for name, values in whole.maps.items():  # matrix products round by block size
        np.testing.assert_allclose(blocks.maps[name], values, rtol=1e-5, atol=1e-9, err_msg=name)
    outputs = sum(a.nbytes for a in blocks.maps.values())
    assert peak < outputs + 0.5 * phantom.signal.nbytes  # one block at a time, not the DWI

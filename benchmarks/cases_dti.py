"""The DTI workflow against dipy, the field's reference: tensor fit and brain mask.

Both sides fit the same phantom DWI (``Sizes.array_shape``: 96 x 96 x 60 x 65 float32 at full
size, 5 b=0 and 60 b=1000 volumes, Rician noise at SNR 30) inside the same mask (the
phantom's brain). Figures: time per fit, peak memory traced during the fit (`tracemalloc`)
against the DWI array's size, and how far our maps are from dipy's.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import OURS, Sizes, case
from benchmarks._harness import Row, Section, Timing, format_bytes, measure

DIPY_WLS = "dipy WLS"
DIPY_LS = "dipy LS"
DIPY_MASK = "dipy median_otsu"


def _phantom(sizes: Sizes) -> Any:
    from kwneuro_pydra.workflows.phantom import make_phantom

    volumes = max(sizes.array_shape[3], 7)
    b0 = max(1, volumes // 13)
    shape = tuple(sizes.array_shape[:3])
    return make_phantom(shape, seed=0, b0_volumes=b0, directions=volumes - b0)  # type: ignore[arg-type]


def _peak(fn: Callable[[], object]) -> int:
    """Peak memory traced while ``fn`` runs (numpy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _differences(ours: Any, theirs: Any, inside: np.ndarray) -> str:
    d_fa = np.abs(ours.fa.get_array()[inside] - theirs.fa[inside])
    parts = [f"|dFA| median {np.median(d_fa):.1e}, p99 {np.percentile(d_fa, 99):.1e}"]
    for name in ("md", "ad", "rd"):
        reference = getattr(theirs, name)[inside]
        relative = np.abs(getattr(ours, name).get_array()[inside] - reference) / reference
        parts.append(f"rel |d{name.upper()}| median {np.median(relative):.1e}")
    return "; ".join(parts)


@case("dti-fit")
def dti_fit(sizes: Sizes, workdir: Path) -> Section:
    """Tensor fit of a DWI: ours (WLS, OLS) against dipy's ``TensorModel`` (WLS, LS)."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    from kwneuro_pydra.resources import InMemoryVolumeResource
    from kwneuro_pydra.workflows import estimate_dti

    phantom = _phantom(sizes)
    dwi = phantom.dwi()
    inside = phantom.truth.labels > 0
    mask = InMemoryVolumeResource(inside.astype(np.uint8))
    table = gradient_table(phantom.bvals, bvecs=phantom.bvecs)
    section = Section(
        "dti-fit",
        f"DTI fit of a {format_bytes(phantom.signal.nbytes)} DWI {phantom.signal.shape} "
        f"(float32) in {int(inside.sum())} voxels",
    )
    repeat = sizes.heavy_repeat
    fits: dict[str, Any] = {}
    for ours_method, dipy_method, dipy_label in (("WLS", "WLS", DIPY_WLS), ("OLS", "LS", DIPY_LS)):
        model = TensorModel(table, fit_method=dipy_method)

        def theirs(model: Any = model) -> Any:
            fit = model.fit(phantom.signal, mask=inside)
            fit.fa  # noqa: B018  (dipy computes maps lazily: count them in)
            return fit

        def ours(method: str = ours_method) -> Any:
            return estimate_dti(dwi, mask, fit_method=method)

        section.rows.append(Row(dipy_label, measure(theirs, repeat=repeat)))
        section.rows.append(
            Row(
                f"{OURS} {ours_method}",
                measure(ours, repeat=repeat),
                peers=(dipy_label,),
                note="all nine maps, float32",
            )
        )
        fits[ours_method] = (ours(), theirs())
        for label, fn in ((f"{OURS} {ours_method}", ours), (dipy_label, theirs)):
            peak = _peak(fn)
            ratio = peak / phantom.signal.nbytes
            section.rows.append(
                Row(
                    f"{label}: peak memory",
                    Timing.from_samples([peak]),
                    unit="B",
                    note=f"{ratio:.2f}x the DWI array",
                )
            )
    for method, (ours_fit, dipy_fit) in fits.items():
        section.notes.append(f"{method} vs dipy: {_differences(ours_fit, dipy_fit, inside)}")
    return section


@case("dti-mask")
def dti_mask(sizes: Sizes, workdir: Path) -> Section:
    """Median-Otsu brain mask (radius 4, 4 passes): ours against dipy's ``median_otsu``."""
    from dipy.segment.mask import median_otsu

    from kwneuro_pydra.workflows import brain_mask

    phantom = _phantom(sizes)
    dwi = phantom.dwi()
    b0 = np.flatnonzero(phantom.bvals == 0)
    section = Section(
        "dti-mask", f"median-Otsu mask of a {phantom.signal.shape[:3]} mean b=0 image"
    )
    radius = 4 if min(phantom.signal.shape[:3]) >= 16 else 1  # the smoke run's tiny image

    def theirs() -> Any:
        return median_otsu(
            phantom.signal, vol_idx=b0, median_radius=radius, numpass=radius, finalize_mask=True
        )[1]

    def ours() -> Any:
        mask = brain_mask(dwi, mask_method="median-otsu", median_radius=radius, numpass=radius)
        return mask.get_array() != 0

    section.rows.append(Row(DIPY_MASK, measure(theirs, repeat=1, warmup=0)))
    section.rows.append(
        Row(
            OURS,
            measure(ours, repeat=1, warmup=0),
            peers=(DIPY_MASK,),
            note="same algorithm, median by numpy.partition of ranks",
        )
    )
    a, b = ours(), theirs()
    truth = phantom.truth.labels > 0
    dice = 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)
    dice_truth = 2 * (a & truth).sum() / max(a.sum() + truth.sum(), 1)
    section.notes.append(
        f"Dice ours vs dipy {dice:.4f}; ours vs the phantom's brain {dice_truth:.3f}"
    )
    return section


MRTRIX_IWLS = "MRtrix dwi2tensor (IWLS)"


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles in degrees between axes (sign ignored)."""
    cosine = np.abs((np.asarray(a, np.float64) * b).sum(axis=-1))
    return np.degrees(np.arccos(np.clip(cosine, 0.0, 1.0)))


def _mrtrix(folder: Path, dwi: Path, bval: Path, bvec: Path, *options: str) -> dict[str, Any]:
    """MRtrix's tensor fit of a NIfTI + FSL table: FA, MD (mm²/s) and the principal
    eigenvector in world coordinates (``tensor2metric -vector -modulate none``)."""
    import subprocess

    import nibabel as nib

    clean = folder / "clean.bvec"  # MRtrix carries nan b=0 rows into every voxel
    np.savetxt(clean, np.nan_to_num(np.loadtxt(bvec)))
    names = {key: folder / f"{key}.nii" for key in ("tensor", "fa", "md", "vector")}
    quiet = ("-quiet", "-force")
    subprocess.run(
        [
            "dwi2tensor",
            *quiet,
            *options,
            "-fslgrad",
            str(clean),
            str(bval),
            str(dwi),
            str(names["tensor"]),
        ],
        check=True,
    )
    subprocess.run(
        [
            "tensor2metric",
            *quiet,
            "-modulate",
            "none",
            "-fa",
            str(names["fa"]),
            "-adc",
            str(names["md"]),
            "-vector",
            str(names["vector"]),
            str(names["tensor"]),
        ],
        check=True,
    )
    return {k: np.asarray(nib.load(p).dataobj) for k, p in names.items() if k != "tensor"}  # type: ignore[attr-defined]


@case("dti-mrtrix")
def dti_mrtrix(sizes: Sizes, workdir: Path) -> Section:
    """Accuracy against MRtrix3 (``dwi2tensor``, Debian's package) and dipy: phantoms at SNR
    20, 30 and 50 against their truth, and dipy's three datasets against MRtrix's OLS fit."""
    import shutil

    from dipy.core.gradients import gradient_table
    from dipy.data import get_fnames
    from dipy.reconst.dti import TensorModel

    from kwneuro_pydra.resources import (
        Dwi,
        FslBvalResource,
        FslBvecResource,
        InMemoryVolumeResource,
        NiftiVolumeResource,
    )
    from kwneuro_pydra.workflows import estimate_dti
    from kwneuro_pydra.workflows._scheme import fitted_scheme
    from kwneuro_pydra.workflows.phantom import write_phantom

    shape = tuple(max(16, int(n)) for n in sizes.array_shape[:3])  # bundles need 16 voxels
    volumes = max(sizes.array_shape[3], 7)
    b0 = max(1, volumes // 13)
    section = Section(
        "dti-mrtrix",
        f"DTI accuracy: phantoms {shape} with {b0} b=0 and {volumes - b0} b=1000 volumes; "
        "dipy's small_64D, small_101D (shells up to b=1500), small_25",
    )
    have_mrtrix = shutil.which("dwi2tensor") is not None
    if not have_mrtrix:
        section.notes.append("MRtrix3 is not installed: only ours and dipy are compared")
    for snr in (20.0, 30.0, 50.0):
        folder = workdir / f"snr{snr:g}"
        folder.mkdir()
        paths = [folder / name for name in ("dwi.nii.gz", "dwi.bval", "dwi.bvec")]
        truth = write_phantom(
            *paths,
            shape=shape,
            snr=snr,
            seed=0,
            b0_volumes=b0,  # type: ignore[arg-type]
            directions=volumes - b0,
        )
        dwi = Dwi(
            NiftiVolumeResource(paths[0]), FslBvalResource(paths[1]), FslBvecResource(paths[2])
        )
        white = np.isin(truth.labels, [2, 3, 4, 5])
        bundles = np.isin(truth.labels, [3, 4, 5])
        mask = InMemoryVolumeResource((truth.labels > 0).astype(np.uint8))
        fits: dict[str, tuple[Any, Any, Any]] = {}

        def ours(mask: Any = mask, dwi: Dwi = dwi) -> Any:
            return estimate_dti(dwi, mask, frame="world")

        result = ours()
        fits["ours WLS"] = (
            result.fa.get_array(),
            result.md.get_array(),
            result.evecs.get_array()[..., :, 0],
        )
        table = gradient_table(np.loadtxt(paths[1]), bvecs=np.loadtxt(paths[2]).T)
        signal = np.asarray(dwi.volume.get_array())
        theirs = TensorModel(table, fit_method="WLS").fit(signal, mask=truth.labels > 0)
        flip = np.array([-1.0, 1.0, 1.0])  # dipy's vectors are in the FSL b-vector frame
        fits["dipy WLS"] = (theirs.fa, theirs.md, theirs.evecs[..., :, 0] * flip)
        if have_mrtrix:

            def mrtrix(folder: Path = folder, paths: list[Path] = paths) -> Any:
                return _mrtrix(folder, *paths)

            peer = f"{MRTRIX_IWLS}, SNR {snr:g}"
            note = "a process: reads and writes NIfTI"
            section.rows.append(Row(peer, measure(mrtrix, repeat=1, warmup=0), note=note))
            timing = measure(ours, repeat=1, warmup=0)
            section.rows.append(Row(f"{OURS} WLS, SNR {snr:g}", timing, peers=(peer,)))
            found = mrtrix()
            fits["MRtrix IWLS"] = (found["fa"], found["md"], found["vector"])
        for label, (fa, md, vector) in fits.items():
            d_fa = np.abs(np.asarray(fa)[white] - truth.fa[white])
            d_md = np.abs(np.asarray(md)[white] / truth.md[white] - 1)
            angle = _angles(vector, truth.direction)[bundles]
            section.notes.append(
                f"SNR {snr:g}, {label} vs truth (white matter): |dFA| median {np.median(d_fa):.4f}"
                f", MD rel. error median {np.median(d_md):.4f}, principal direction median "
                f"{np.median(angle):.2f} deg (bundles)"
            )
        shutil.rmtree(folder)
    if have_mrtrix:
        import nibabel as nib

        for name in ("small_64D", "small_101D", "small_25"):
            folder = workdir / name
            folder.mkdir()
            volume, bval, bvec = (Path(str(p)) for p in get_fnames(name=name))
            dwi = Dwi(NiftiVolumeResource(volume), FslBvalResource(bval), FslBvecResource(bvec))
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # shells left out, a single b=2000 shell
                keep = fitted_scheme(dwi, bmax=1500.0, step="benchmark").keep
                ours_ols = estimate_dti(dwi, fit_method="OLS", frame="world")
            image = nib.load(volume)  # type: ignore[attr-defined]
            subset = folder / "dwi.nii"
            nib.save(
                nib.Nifti1Image(np.asarray(image.dataobj)[..., keep], image.affine),  # type: ignore[attr-defined]
                subset,
            )
            np.savetxt(folder / "dwi.bval", np.loadtxt(bval)[keep][None])
            np.savetxt(folder / "dwi.bvec", np.asarray(dwi.bvec.get())[keep].T)
            found = _mrtrix(
                folder, subset, folder / "dwi.bval", folder / "dwi.bvec", "-ols", "-iter", "0"
            )
            data = np.asarray(image.dataobj)[..., keep]
            evals = ours_ols.evals.get_array()
            usable = (data.min(axis=-1) > 0) & (evals[..., 2] > 1e-5)
            angle = _angles(ours_ols.evecs.get_array()[..., :, 0], found["vector"])[usable]
            d_fa = np.abs(ours_ols.fa.get_array() - found["fa"])[usable]
            section.notes.append(
                f"{name}: ours OLS (world frame) vs MRtrix OLS in {int(usable.sum())} voxels: "
                f"|dFA| median {np.median(d_fa):.1e}, principal direction max "
                f"{angle.max(initial=0):.3f} deg, median {np.median(angle):.1e} deg"
            )
            shutil.rmtree(folder)
    return section

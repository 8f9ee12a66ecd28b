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
    from kwneuro_pydra.workflows._mask import b0_average
    from kwneuro_pydra.workflows._mask import median_otsu as ours_median_otsu

    phantom = _phantom(sizes)
    dwi = phantom.dwi()
    b0 = np.flatnonzero(phantom.bvals == 0)
    smoke = sizes.array_shape[0] < 10
    section = Section(
        "dti-mask", f"median-Otsu mask of a {phantom.signal.shape[:3]} mean b=0 image"
    )

    def theirs() -> Any:
        return median_otsu(phantom.signal, vol_idx=b0, median_radius=4, numpass=4,
                           finalize_mask=True)[1]  # fmt: skip

    def ours() -> Any:
        if smoke:  # brain_mask refuses the empty mask of a phantom this small
            return ours_median_otsu(b0_average(dwi, step="smoke"), median_radius=4, numpass=4,
                                    dilate=0, finalize=True)  # fmt: skip
        return brain_mask(dwi, mask_method="median-otsu").get_array() != 0

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

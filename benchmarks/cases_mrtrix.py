"""The main job against what a user would pick instead: MRtrix3 and dipy, mask and fit.

One head phantom (`kwneuro_pydra.workflows.head_phantom`, 2 x 2 x 3 mm, 5 b=0 and 60 b=1000
volumes, SNR 20) written as ``.nii.gz`` in int16 and in float32. Each measurement is a fresh
process timed from outside (reading the DWI, computing, writing the results), one thread
everywhere (``-nthreads 1``, BLAS and OpenMP limited to 1); the participants run in turns
within each round (interleaved), so that the load of a shared machine falls on all of them.

- mask alone: MRtrix3 ``dwi2mask``; ours (`brain_mask`, the default ``shells`` and
  ``median-otsu``); dipy ``median_otsu`` (radius 4, 4 passes, finalized).
- fit alone, in the true mask: MRtrix3 ``dwi2tensor`` + ``tensor2metric`` (FA, MD, AD,
  RD); our `estimate_dti` (WLS); dipy ``TensorModel`` (WLS).
- end to end: the mask, then the fit inside it.

Each row notes the least CPU time (user and system) of the participant's processes, which a
shared host's load changes least.

Run a participant by hand: ``python -m benchmarks.cases_mrtrix ours end-to-end DWI BVAL
BVEC OUT_DIR [TRUE_MASK]``.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import OURS, Sizes, case
from benchmarks._harness import Row, Section, Timing

MRTRIX = "MRtrix3 1 thread"
DIPY = "dipy"
MEDIAN_OTSU = "ours median-otsu"
SCOPES = ("mask", "fit", "end-to-end")
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def _mrtrix(scope: str, dwi: Path, bval: Path, bvec: Path, out: Path, truth: Path) -> None:
    grad = ["-fslgrad", str(bvec), str(bval)]
    common = ["-quiet", "-force", "-nthreads", "1"]
    mask = truth
    if scope != "fit":
        mask = out / "mask.nii.gz"
        subprocess.run(["dwi2mask", *common, *grad, str(dwi), str(mask)], check=True)
    if scope != "mask":
        tensor = out / "tensor.nii.gz"
        subprocess.run(
            ["dwi2tensor", *common, *grad, "-mask", str(mask), str(dwi), str(tensor)], check=True
        )
        metrics = [f"-{m}" for m in ("fa", "adc", "ad", "rd")]
        paths = [str(out / f"{m}.nii.gz") for m in ("fa", "md", "ad", "rd")]
        arguments = [x for pair in zip(metrics, paths, strict=True) for x in pair]
        subprocess.run(
            ["tensor2metric", *common, *arguments, "-mask", str(mask), str(tensor)], check=True
        )


def _child(
    tool: str, scope: str, dwi_path: str, bval: str, bvec: str, out: str, truth: str
) -> None:
    """One participant's run (in a fresh process): read, compute, write."""
    import nibabel as nib

    out_dir = Path(out)
    if tool in (OURS, MEDIAN_OTSU):
        from kwneuro_pydra.resources import (
            Dwi,
            FslBvalResource,
            FslBvecResource,
            NiftiVolumeResource,
        )
        from kwneuro_pydra.workflows import brain_mask, estimate_dti

        dwi = Dwi(NiftiVolumeResource(dwi_path), FslBvalResource(bval), FslBvecResource(bvec))
        mask: Any = NiftiVolumeResource(truth)
        if scope != "fit":
            method = "median-otsu" if tool == MEDIAN_OTSU else "shells"
            mask = brain_mask(dwi, mask_method=method)
            NiftiVolumeResource.save(mask, out_dir / "mask.nii.gz")
        if scope != "mask":
            result = estimate_dti(dwi, mask)
            for name in ("fa", "md", "ad", "rd"):
                NiftiVolumeResource.save(getattr(result, name), out_dir / f"{name}.nii.gz")
        return
    from dipy.core.gradients import gradient_table
    from dipy.io import read_bvals_bvecs
    from dipy.reconst.dti import TensorModel
    from dipy.segment.mask import median_otsu

    image = nib.load(dwi_path)
    data = np.asanyarray(image.dataobj)  # type: ignore[attr-defined]
    bvals, bvecs = read_bvals_bvecs(bval, bvec)
    inside = np.asanyarray(nib.load(truth).dataobj) > 0  # type: ignore[attr-defined]
    if scope != "fit":
        _, inside = median_otsu(
            data,
            vol_idx=np.flatnonzero(bvals <= 50),
            median_radius=4,
            numpass=4,
            finalize_mask=True,
        )
        nib.save(nib.Nifti1Image(inside.astype(np.uint8), image.affine), out_dir / "mask.nii.gz")
    if scope != "mask":
        fit = TensorModel(gradient_table(bvals, bvecs=bvecs)).fit(data, mask=inside)
        for name in ("fa", "md", "ad", "rd"):
            volume = nib.Nifti1Image(getattr(fit, name).astype(np.float32), image.affine)
            nib.save(volume, out_dir / f"{name}.nii.gz")


def _run(tool: str, scope: str, files: list[Path], truth: Path, out: Path) -> tuple[float, float]:
    """Seconds of one fresh run of a participant: wall time, and CPU time (user and system)
    of its processes (the figure a shared host's load changes least)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    before = _children_cpu()
    start = time.perf_counter()
    if tool == MRTRIX:
        _mrtrix(scope, *files, out, truth)
    else:
        command = [
            sys.executable,
            "-m",
            "benchmarks.cases_mrtrix",
            tool,
            scope,
            *map(str, files),
            str(out),
            str(truth),
        ]
        subprocess.run(
            command,
            check=True,
            env={**os.environ, **ONE_THREAD},
            cwd=Path(__file__).resolve().parent.parent,
        )
    return time.perf_counter() - start, _children_cpu() - before


def _children_cpu() -> float:
    """CPU seconds (user and system) of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _dice(path: Path, truth: Any) -> float:
    import nibabel as nib

    mask = np.asanyarray(nib.load(path).dataobj) > 0  # type: ignore[attr-defined]
    return float(2 * (mask & truth).sum() / max(mask.sum() + truth.sum(), 1))


@case("main-job-vs-mrtrix")
def main_job_vs_mrtrix(sizes: Sizes, workdir: Path) -> Section:
    """Mask, fit and both, per fresh process: ours, MRtrix3 (1 thread) and dipy."""
    from kwneuro_pydra.resources import InMemoryVolumeResource, NiftiVolumeResource
    from kwneuro_pydra.workflows.head_phantom import write_head_phantom

    smoke = sizes.array_shape[0] < 10  # one run of each mask on a 4 mm head
    voxel = (4, 4, 4) if smoke else (2, 2, 3)
    rounds = 1 if smoke else 2
    tools = [OURS] if smoke else [OURS, MEDIAN_OTSU, DIPY]
    tools += [MRTRIX] if shutil.which("dwi2mask") else []
    scopes = SCOPES[:1] if smoke else SCOPES
    section = Section("main-job-vs-mrtrix", "")
    samples: dict[tuple[str, str, str], list[float]] = {}
    cpu: dict[tuple[str, str, str], list[float]] = {}
    dice: dict[tuple[str, str], float] = {}
    for dtype in ("int16",) if smoke else ("int16", "float32"):
        files = [workdir / f"dwi-{dtype}.{suffix}" for suffix in ("nii.gz", "bval", "bvec")]
        phantom = write_head_phantom(
            *files, dtype=dtype, voxel_size=voxel, snr=20.0, directions=6 if smoke else 60
        )
        truth = workdir / "truth.nii.gz"
        NiftiVolumeResource.save(
            InMemoryVolumeResource(phantom.brain.astype(np.uint8), phantom.affine), truth
        )
        section.title = (
            f"head phantom {phantom.signal.shape} at {voxel} mm, SNR 20, .nii.gz; "
            f"{rounds} interleaved rounds, each run a fresh process"
        )
        for _ in range(rounds):
            for scope in scopes:
                for tool in tools:
                    if tool == MEDIAN_OTSU and scope == "fit":
                        continue  # the same fit as ours
                    out = workdir / "out"
                    seconds, cpu_seconds = _run(tool, scope, files, truth, out)
                    samples.setdefault((dtype, scope, tool), []).append(seconds * 1e9)
                    cpu.setdefault((dtype, scope, tool), []).append(cpu_seconds)
                    if scope == "mask":
                        dice[dtype, tool] = _dice(out / "mask.nii.gz", phantom.brain)
        for path in (*files, truth):
            path.unlink()
        shutil.rmtree(workdir / "out", ignore_errors=True)
    for (dtype, scope, tool), values in samples.items():
        peers = tuple(
            f"{dtype} {scope}: {p}"
            for p in tools
            if p != tool
            and (dtype, scope, p) in samples
            and tool in (OURS, MEDIAN_OTSU)
            and p not in (OURS, MEDIAN_OTSU)
        )
        note = f"CPU {min(cpu[dtype, scope, tool]):.2f} s"
        if scope == "mask":
            note += f"; Dice vs truth {dice[dtype, tool]:.4f}"
        section.rows.append(
            Row(f"{dtype} {scope}: {tool}", Timing.from_samples(values), peers=peers, note=note)
        )
    section.notes.append(
        "The machine is shared (2 cores, other jobs running): the ratios of one round are "
        "more telling than the absolute times; MRtrix3's dwi2mask cannot classify a DSI-like "
        "scheme (dipy's small_101D) at all."
    )
    return section


if __name__ == "__main__":
    _child(*sys.argv[1:])

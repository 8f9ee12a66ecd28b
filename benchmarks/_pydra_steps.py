"""Steps of the Pydra cases, importable by name (Pydra workers load tasks that way).

The same work twice: as our ``@cacheable`` steps on volume resources (results travel as files
of the per-subject cache) and as plain functions on numpy arrays for plain Pydra 1.0
``python.define`` tasks (results travel pickled in Pydra's job directories).

The 4-step per-subject pipeline: denoise -> brain mask -> apply mask -> tissue mean.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from kwneuro_pydra import CacheSpec, cacheable
from kwneuro_pydra.resources import InMemoryVolumeResource, VolumeResource


def _json_spec(name: str) -> CacheSpec[Any]:
    """A CacheSpec storing a JSON-able result in ``<name>.json``."""

    def save(result: Any, directory: Path) -> None:
        (directory / f"{name}.json").write_text(json.dumps(result))

    return CacheSpec(
        files=[f"{name}.json"],
        save=save,
        load=lambda d: json.loads((d / f"{name}.json").read_text()),
    )


# --- the work, on arrays -----------------------------------------------------------------------


def denoise_array(a: np.ndarray) -> np.ndarray:
    """A 3-voxel moving average along the first axis, rounded back to the input dtype."""
    f = a.astype(np.float32)
    out = (f + np.roll(f, 1, axis=0) + np.roll(f, -1, axis=0)) / np.float32(3.0)
    result: np.ndarray = np.rint(out).astype(a.dtype)
    return result


def mask_array(a: np.ndarray) -> np.ndarray:
    """Voxels above a fifth of the maximum, as uint8."""
    result: np.ndarray = (a > a.max() / 5).astype(np.uint8)
    return result


def apply_mask_array(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Zero outside the mask, in the input dtype."""
    result: np.ndarray = a * mask.astype(a.dtype)
    return result


def mean_array(a: np.ndarray, mask: np.ndarray) -> float:
    """Mean inside the mask."""
    inside = mask.astype(bool)
    return float(a[inside].mean()) if inside.any() else 0.0


def spin(x: float, seconds: float) -> float:
    """CPU-bound: burn *seconds* of CPU time in pure Python (holds the GIL)."""
    end, total = time.process_time() + seconds, 0.0
    while time.process_time() < end:
        total += sum(i * i for i in range(1000)) * 0.0
    return x + total


# --- ours: @cacheable steps on volume resources ------------------------------------------------


def _volume(array: np.ndarray, like: VolumeResource) -> InMemoryVolumeResource:
    return InMemoryVolumeResource(array, like.get_affine())


@cacheable
def denoise(t1: VolumeResource) -> VolumeResource:
    """Denoise a T1."""
    return _volume(denoise_array(np.asarray(t1.get_array())), t1)


@cacheable
def brain_mask(t1: VolumeResource) -> VolumeResource:
    """A brain mask of a T1."""
    return _volume(mask_array(np.asarray(t1.get_array())), t1)


@cacheable
def apply_mask(t1: VolumeResource, mask: VolumeResource) -> VolumeResource:
    """A T1 with zeros outside the mask."""
    return _volume(apply_mask_array(np.asarray(t1.get_array()), np.asarray(mask.get_array())), t1)


@cacheable(_json_spec("tissue_mean"))
def tissue_mean(t1: VolumeResource, mask: VolumeResource) -> float:
    """Mean intensity inside the mask."""
    return mean_array(np.asarray(t1.get_array()), np.asarray(mask.get_array()))


def pipeline(t1: VolumeResource) -> float:
    """The per-subject pipeline of 4 steps, written once (eager or as a Pydra workflow)."""
    smooth = denoise(t1)
    mask = brain_mask(smooth)
    masked = apply_mask(smooth, mask)
    return tissue_mean(masked, mask)


@cacheable(_json_spec("affine_step"))
def affine_step(x: float) -> float:
    """A trivial scalar step: what per-node overhead is measured with."""
    return 2.0 * x + 1.0


@cacheable(_json_spec("burn"))
def burn(x: float, seconds: float) -> float:
    """A CPU-bound step."""
    return spin(x, seconds)


def cpu_pipeline(x: float, seconds: float) -> float:
    """One CPU-bound step per subject."""
    return burn(x, seconds)


# --- plain Pydra: the same functions on arrays, as python.define tasks -------------------------


def plain_affine(x: float) -> float:
    """`affine_step` without a cache."""
    return 2.0 * x + 1.0


def plain_burn(x: float, seconds: float) -> float:
    """`burn` without a cache."""
    return spin(x, seconds)


def plain_tasks() -> dict[str, Any]:
    """The plain Pydra task classes and the 4-step workflow over in-memory arrays."""
    from pydra.compose import python, workflow  # type: ignore[import-untyped]

    denoise_task = python.define(denoise_array, outputs=["out"], name="denoise")
    mask_task = python.define(mask_array, outputs=["out"], name="brain_mask")
    apply_task = python.define(apply_mask_array, outputs=["out"], name="apply_mask")
    mean_task = python.define(mean_array, outputs=["out"], name="tissue_mean")

    @workflow.define(outputs=["out"])  # type: ignore[untyped-decorator]
    def PlainPipeline(t1: np.ndarray) -> float:
        smooth = workflow.add(denoise_task(a=t1), name="denoise")
        mask = workflow.add(mask_task(a=smooth.out), name="brain_mask")
        masked = workflow.add(apply_task(a=smooth.out, mask=mask.out), name="apply_mask")
        mean = workflow.add(mean_task(a=masked.out, mask=mask.out), name="tissue_mean")
        return mean.out  # type: ignore[no-any-return]

    @workflow.define(outputs=["out"])  # type: ignore[untyped-decorator]
    def PlainCpu(x: float, seconds: float) -> float:
        return workflow.add(burn_task(x=x, seconds=seconds), name="burn").out  # type: ignore[no-any-return]

    affine_task = python.define(plain_affine, outputs=["out"], name="affine_step")
    burn_task = python.define(plain_burn, outputs=["out"], name="burn")
    return {"affine": affine_task, "pipeline": PlainPipeline, "cpu": PlainCpu}


def write_subject_inputs(root: Path, n: int, shape: tuple[int, ...]) -> dict[str, Path]:
    """Write one T1-like ``.nii.gz`` per subject (different content each); return the paths."""
    from benchmarks._common import phantom_t1_array
    from kwneuro_pydra.resources import NiftiVolumeResource

    root.mkdir(parents=True, exist_ok=True)
    base = phantom_t1_array(shape)
    paths: dict[str, Path] = {}
    for i in range(n):
        path = root / f"sub-{i:04d}_T1w.nii.gz"
        volume = InMemoryVolumeResource(np.where(base > 0, base + np.int16(i % 1000), base))
        NiftiVolumeResource.save(volume, path)
        paths[f"sub-{i:04d}"] = path
    return paths

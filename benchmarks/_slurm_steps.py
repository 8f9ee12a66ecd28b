"""Pipelines of the Slurm cases, importable by name on the nodes (from the repository root)."""

from __future__ import annotations

from benchmarks._pydra_steps import affine_step, brain_mask, denoise, tissue_mean
from kwneuro_pydra.resources import VolumeResource


def one_step(x: float) -> float:
    """A single trivial step: what per-task latency is measured with."""
    return affine_step(x)


def three_steps(t1: VolumeResource) -> float:
    """Three steps per subject: denoise -> brain mask -> mean inside the mask."""
    smooth = denoise(t1)
    return tissue_mean(smooth, brain_mask(smooth))

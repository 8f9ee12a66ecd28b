"""Brain masks: the "shells" mask of every volume, and dipy's median-Otsu.

``shells`` (the default of `kwneuro_pydra.workflows.brain_mask`) works as MRtrix3's
``dwi2mask`` does, on the mean b=0 image and the mean of each shell of diffusion-weighted
volumes (`volume_groups`): each mean image is thresholded (Otsu's threshold, then refined
to half-way between the tissue and the background around each voxel, so that a boundary
voxel is in the mask when it is at least about half tissue), the masks are united, and
the union is cleaned: the largest connected component, its holes filled, peninsulas joined
by bridges narrower than ``bridge_mm`` removed (`shells_mask`).

``median-otsu`` is dipy's algorithm: ``numpass`` passes of a cubic median filter of radius
``median_radius`` over the mean b=0 image, Otsu's threshold of the result (scikit-image's
``threshold_otsu``, 256 bins), an optional dilation; then, unless told otherwise, the largest
connected component, with every background region but the largest filled (dipy's
``finalize_mask``).

The median filter is exact (the same values as ``scipy.ndimage.median_filter`` with
``mode="reflect"``): it works on the ranks of the values as uint16 (of the whole volume when
it has at most 65536 distinct values, else of each block of windows), whose order statistics
`numpy.partition` selects twice as fast as float values, over a sliding-window view one
slice at a time, the slices shared by two threads: 2-4x faster than scipy's filter.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray
from scipy import ndimage  # type: ignore[import-untyped]

from kwneuro_pydra.resources import B0_THRESHOLD, Dwi, source_of

__all__ = [
    "b0_average",
    "group_means",
    "median_filter",
    "median_otsu",
    "otsu_threshold",
    "shells_mask",
    "volume_groups",
]

_BINS = 256
"""Histogram bins of Otsu's threshold (scikit-image's and dipy's default)."""
_UINT16_VALUES = np.iinfo(np.uint16).max + 1
"""Distinct values whose ranks fit uint16, which `numpy.partition` selects twice as fast as
int32 (SIMD)."""
MEDIAN_THREADS = 2
"""Most threads of the median filter (fewer when the process may use fewer CPUs)."""
_THREADED_MIN_WORK = 50_000_000
"""Window elements below which the median filter runs in one thread (hand-over costs)."""
_SHELL_TOLERANCE = 100.0
"""b-values (s/mm²) at most this far from the previous one in sorted order share a shell."""
_GROUP_SIZE = 6
"""Fewest volumes averaged into one image of the shells mask: a DSI-like scheme's many
b-values are pooled in order until each group has this many."""


def b0_average(dwi: Dwi, *, step: str) -> NDArray[np.float32]:
    """The mean of a DWI's b=0 volumes (b at or below `B0_THRESHOLD`), as float32.

    Args:
        dwi: The DWI.
        step: The step's name, for messages.

    Returns:
        A 3-D float32 array.

    Raises:
        ValueError: The DWI has no b=0 volume (the message names the b-value file).
    """
    indices = np.flatnonzero(np.asarray(dwi.bval.get()) <= B0_THRESHOLD)
    if not indices.size:
        raise ValueError(
            f"{step}: no b=0 volume (b-value at most {B0_THRESHOLD:g}) in "
            f"{source_of(dwi.bval)}; add the b=0 volumes of the acquisition"
        )
    return group_means(dwi.volume.get_array(), [indices])[0]


def volume_groups(bvals: NDArray[Any]) -> list[NDArray[np.intp]]:
    """The volumes averaged into the images of the shells mask: b=0, then each shell.

    A shell is a run of b-values each within 100 s/mm² of the previous one (sorted). Runs
    of fewer than 6 volumes (a DSI-like scheme's many b-values) are pooled with the next
    ones, in order of b-value, until each group has at least 6 (the last joins the one
    before it).

    Args:
        bvals: The b-values in s/mm².

    Returns:
        Volume indices per group: the b=0 volumes first (when there are any), then the
        shells by increasing b-value.
    """
    bvals = np.asarray(bvals, dtype=np.float64)
    b0 = np.flatnonzero(bvals <= B0_THRESHOLD)
    weighted = np.flatnonzero(bvals > B0_THRESHOLD)
    ordered = weighted[np.argsort(bvals[weighted], kind="stable")]
    runs: list[list[int]] = []
    for index in ordered.tolist():
        if runs and bvals[index] - bvals[runs[-1][-1]] <= _SHELL_TOLERANCE:
            runs[-1].append(index)
        else:
            runs.append([index])
    groups: list[list[int]] = []
    for run in runs:
        if groups and len(groups[-1]) < _GROUP_SIZE:
            groups[-1].extend(run)
        else:
            groups.append(run)
    if len(groups) > 1 and len(groups[-1]) < _GROUP_SIZE:
        groups[-2].extend(groups.pop())
    return ([b0] if b0.size else []) + [np.array(group, dtype=np.intp) for group in groups]


def group_means(data: NDArray[Any], groups: list[NDArray[np.intp]]) -> list[NDArray[np.float32]]:
    """The mean of each group of volumes of a 4-D array, as float32.

    Args:
        data: The DWI's samples, (x, y, z, volumes).
        groups: Volume indices per group (each non-empty).

    Returns:
        One 3-D float32 array per group.
    """
    means = []
    for indices in groups:
        total = np.zeros(data.shape[:3])
        for index in indices:  # one volume at a time: no copy of the group's volumes
            total += data[..., index]
        means.append((total / indices.size).astype(np.float32))
    return means


def shells_mask(
    images: list[NDArray[np.float32]],
    voxel_size: NDArray[np.float64],
    *,
    neighbourhood_mm: float,
    bridge_mm: float,
) -> NDArray[np.bool_]:
    """The brain mask of the mean images of a DWI (`volume_groups`, `group_means`).

    Each image is thresholded at Otsu's threshold, then again at half-way between the
    mean of the tissue (the first mask, eroded) and of the background (outside it,
    dilated) within about ``neighbourhood_mm`` of each voxel: a boundary voxel is kept when
    it is at least about half tissue, whatever the coil's intensity profile. The union of
    the images' masks is cleaned: its largest 6-connected component, with its holes filled;
    then the parts of it joined by bridges narrower than ``bridge_mm`` are cut off (the
    component of the voxels deeper than ``bridge_mm / 2`` inside, grown back by
    ``bridge_mm``, and kept where it was in the mask).

    Args:
        images: The mean images (3-D, one shape).
        voxel_size: The voxel's size in mm along each axis.
        neighbourhood_mm: The standard deviation of the Gaussian weights of the local
            tissue and background means, in mm (0 keeps Otsu's threshold).
        bridge_mm: The widest bridge cut, in mm (0 cuts none).

    Returns:
        The boolean mask (empty when no image has any contrast). A voxel whose mean is NaN or
        infinite counts as background (it is in the mask when surrounded by it: a hole).
    """
    mask = np.zeros(images[0].shape, dtype=bool)
    for image in images:  # a NaN or infinite mean (one bad sample) counts as background
        finite = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
        mask |= _local_threshold(finite, voxel_size, neighbourhood_mm)
    if not mask.any():
        return mask
    mask = ndimage.binary_fill_holes(_largest_component(mask))
    if bridge_mm > 0:
        depth = ndimage.distance_transform_edt(mask, sampling=voxel_size)
        core = depth > bridge_mm / 2
        if core.any():
            core = _largest_component(core)
            reach = ndimage.distance_transform_edt(~core, sampling=voxel_size)
            mask = _largest_component(mask & (reach <= bridge_mm))
    return mask


def _local_threshold(
    image: NDArray[np.float32], voxel_size: NDArray[np.float64], neighbourhood_mm: float
) -> NDArray[np.bool_]:
    """Otsu's mask of an image, refined to half-way between the local tissue and background
    means (see `shells_mask`).
    """
    threshold = otsu_threshold(image)
    first: NDArray[np.bool_] = image > threshold
    if neighbourhood_mm <= 0 or not first.any() or first.all():
        return first
    sigma = neighbourhood_mm / voxel_size
    levels = []
    for region in (ndimage.binary_erosion(first), ~ndimage.binary_dilation(first)):
        weight = ndimage.gaussian_filter(region.astype(np.float32), sigma)
        total = ndimage.gaussian_filter(np.where(region, image, 0).astype(np.float32), sigma)
        with np.errstate(invalid="ignore", divide="ignore"):
            levels.append(np.where(weight > 1e-3, total / weight, np.nan))
    local = (levels[0] + levels[1]) / 2
    refined: NDArray[np.bool_] = image > np.where(np.isfinite(local), local, threshold)
    return refined


def median_filter(volume: NDArray[Any], radius: int, passes: int = 1) -> NDArray[Any]:
    """Median over the cube of side ``2 * radius + 1`` around each voxel, edges reflected.

    Equal to ``scipy.ndimage.median_filter(volume, size=2 * radius + 1, mode="reflect")``,
    applied ``passes`` times. The medians are taken of the values' ranks, as uint16 when
    they fit (the median of ranks is the rank of the median): the volume's own ranks when
    it has at most 65536 distinct values (ranked once for every pass: a median is one of
    its window's values), else the ranks within each block of windows small enough to read
    at most 65536 values.

    Args:
        volume: A 3-D array.
        radius: The cube's radius in voxels (0 returns a copy).
        passes: How many times the filter is applied, each to the result of the last.

    Returns:
        The filtered volume, same shape and dtype.
    """
    result = np.array(volume, copy=True)
    if radius == 0 or passes == 0:
        return result
    values, inverse = np.unique(result, return_inverse=True)
    if values.size <= _UINT16_VALUES:
        ranks = inverse.reshape(result.shape).astype(np.uint16)
        for _ in range(passes):
            ranks = _windowed_median(ranks, radius, rank_blocks=False)
        ranked: NDArray[Any] = values[ranks]
        return ranked
    for _ in range(passes):
        result = _windowed_median(result, radius, rank_blocks=True)
    return result


def _windowed_median(volume: NDArray[Any], radius: int, *, rank_blocks: bool) -> NDArray[Any]:
    """`median_filter` by `numpy.partition` of each slice's windows; with ``rank_blocks``, of
    the ranks of the values each tile of rows and slices reads (at most 65536: uint16). The
    tiles are shared by up to `MEDIAN_THREADS` threads (numpy releases the GIL).
    """
    side = 2 * radius + 1
    padded = np.pad(volume, radius, mode="symmetric")  # scipy's "reflect"
    out = np.empty_like(volume)
    middle = side**3 // 2
    rows, columns, slices = volume.shape
    block, depth = (rows, 1)
    if rank_blocks:
        block, depth = _tile(columns + 2 * radius, radius)

    def one_tile(row: int, first: int) -> None:
        tile = padded[row : row + block + 2 * radius, :, first : first + depth + 2 * radius]
        keys = tile
        if rank_blocks:
            values, inverse = np.unique(tile, return_inverse=True)
            small = values.size <= _UINT16_VALUES
            keys = inverse.reshape(tile.shape).astype(np.uint16 if small else np.int32)
        for z in range(min(depth, slices - first)):
            windows = sliding_window_view(keys[:, :, z : z + side], (side, side, side))
            flat = windows.reshape(-1, side**3)  # a copy of this slice's windows only
            flat.partition(middle, axis=1)
            median = flat[:, middle].reshape(-1, columns)
            out[row : row + block, :, first + z] = values[median] if rank_blocks else median

    tiles = [(row, first) for first in range(0, slices, depth) for row in range(0, rows, block)]
    threads = min(MEDIAN_THREADS, _usable_cpus(), len(tiles))
    if threads < 2 or volume.size * side**3 < _THREADED_MIN_WORK:
        for row, first in tiles:
            one_tile(row, first)
    else:
        with ThreadPoolExecutor(threads, "kwneuro-pydra-median") as pool:
            for done in [pool.submit(one_tile, row, first) for row, first in tiles]:
                done.result()
    return out


def _tile(width: int, radius: int) -> tuple[int, int]:
    """Rows and slices of the output per tile whose windows read at most 65536 values
    (``width`` padded columns), the fewest values read per output voxel.
    """
    best = (1.0e9, 1, 1)
    for depth in range(1, 8 * radius + 2):
        block = _UINT16_VALUES // (width * (depth + 2 * radius)) - 2 * radius
        if block >= 1:
            reads = (block + 2 * radius) / block * (depth + 2 * radius) / depth
            best = min(best, (reads, block, depth))
    return best[1], best[2]


def _usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def otsu_threshold(image: NDArray[Any]) -> float:
    """Otsu's threshold of an image over a 256-bin histogram (scikit-image's definition).

    Args:
        image: Any array of real numbers.

    Returns:
        The threshold: voxels above it are foreground. For a constant image, its value.
    """
    values = np.asarray(image, dtype=np.float64).ravel()
    low, high = float(values.min()), float(values.max())
    if low == high:
        return low
    hist, edges = np.histogram(values, bins=_BINS, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight1 = np.cumsum(hist)
    weight2 = np.cumsum(hist[::-1])[::-1]
    with np.errstate(invalid="ignore", divide="ignore"):  # empty classes at the ends
        mean1 = np.cumsum(hist * centres) / weight1
        mean2 = (np.cumsum((hist * centres)[::-1]) / weight2[::-1])[::-1]
    between = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centres[int(np.nanargmax(between))])


def median_otsu(
    b0: NDArray[Any], *, median_radius: int, numpass: int, dilate: int, finalize: bool
) -> NDArray[np.bool_]:
    """dipy's median-Otsu mask of a mean b=0 image.

    Args:
        b0: The mean b=0 image (3-D).
        median_radius: Radius of the median filter in voxels.
        numpass: Number of median filter passes.
        dilate: Iterations of binary dilation (6-connected) after thresholding.
        finalize: Keep only the largest connected component and fill its holes (every
            background region but the largest, as dipy does).

    Returns:
        The boolean mask.
    """
    smooth = median_filter(np.asarray(b0, dtype=np.float32), median_radius, numpass)
    mask: NDArray[np.bool_] = smooth > otsu_threshold(smooth)
    if dilate:
        cross = ndimage.generate_binary_structure(3, 1)
        mask = ndimage.binary_dilation(mask, cross, iterations=dilate)
    if finalize and mask.any() and not mask.all():
        mask = _largest_component(mask)  # no islands
        mask = ~_largest_component(~mask)  # no holes: the largest background stays
    return mask


def _largest_component(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The largest 6-connected component of a non-empty mask."""
    labels, _ = ndimage.label(mask)
    largest: NDArray[np.bool_] = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return largest

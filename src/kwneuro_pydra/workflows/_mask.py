"""Median-Otsu brain masking (dipy's ``median_otsu``) and the mean b=0 image.

The mask is dipy's algorithm: ``numpass`` passes of a cubic median filter of radius
``median_radius`` over the mean b=0 image, Otsu's threshold of the result (scikit-image's
``threshold_otsu``, 256 bins), an optional dilation; then, unless told otherwise, the largest
connected component, with every background region but the largest filled (dipy's
``finalize_mask``).

The median filter is exact (the same values as ``scipy.ndimage.median_filter`` with
``mode="reflect"``) but selects the median of each voxel's window with `numpy.partition`
over a sliding-window view, one slice at a time: about 4x faster than scipy's filter.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray
from scipy import ndimage  # type: ignore[import-untyped]

from kwneuro_pydra.resources import B0_THRESHOLD, Dwi, source_of

__all__ = ["b0_average", "median_filter", "median_otsu", "otsu_threshold"]

_BINS = 256
"""Histogram bins of Otsu's threshold (scikit-image's and dipy's default)."""


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
    data = dwi.volume.get_array()
    total = np.zeros(data.shape[:3])
    for index in indices:  # one volume at a time: no copy of the b=0 volumes
        total += data[..., index]
    mean: NDArray[np.float32] = (total / indices.size).astype(np.float32)
    return mean


def median_filter(volume: NDArray[Any], radius: int) -> NDArray[Any]:
    """Median over the cube of side ``2 * radius + 1`` around each voxel, edges reflected.

    Equal to ``scipy.ndimage.median_filter(volume, size=2 * radius + 1, mode="reflect")``.

    Args:
        volume: A 3-D array.
        radius: The cube's radius in voxels (0 returns a copy).

    Returns:
        The filtered volume, same shape and dtype.
    """
    side = 2 * radius + 1
    padded = np.pad(volume, radius, mode="symmetric")  # scipy's "reflect"
    out = np.empty_like(volume)
    middle = side**3 // 2
    for z in range(volume.shape[2]):
        windows = sliding_window_view(padded[:, :, z : z + side], (side, side, side))
        flat = windows.reshape(-1, side**3)  # a copy of this slice's windows only
        flat.partition(middle, axis=1)
        out[:, :, z] = flat[:, middle].reshape(volume.shape[:2])
    return out


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
    smooth = np.asarray(b0, dtype=np.float32)
    for _ in range(numpass):
        smooth = median_filter(smooth, median_radius)
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

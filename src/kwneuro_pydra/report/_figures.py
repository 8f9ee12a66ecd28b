"""The report's figures and numbers, each made by a `cacheable` step (a rerun reuses them).

Mosaics are composed as arrays (three planes, six slices each, in RAS orientation) and written
as PNG; plots use matplotlib's Agg canvas directly (no pyplot, no display).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from numpy.typing import NDArray

from kwneuro_pydra.cache import CacheSpec, cacheable
from kwneuro_pydra.resources import B0_THRESHOLD, Dwi, VolumeResource

__all__ = [
    "FA_BINS",
    "MD_BINS",
    "PNG",
    "STATS",
    "Png",
    "SeriesStats",
    "b0_mosaic",
    "gradient_sphere",
    "group_distributions",
    "map_mosaic",
    "summarise",
]

FA_BINS = np.linspace(0.0, 1.0, 51)
"""Histogram bin edges of FA inside the mask."""
MD_BINS = np.linspace(0.0, 3e-3, 51)
"""Histogram bin edges of MD (mm^2/s) inside the mask."""

_SLICES = 6
_TILE = 64  # smallest tile side in pixels: small volumes are enlarged (nearest neighbour)
_OUTLINE = np.array([1.0, 0.15, 0.15])


@attrs.frozen
class Png:
    """A rendered figure: its PNG bytes when just made, its file once stored in a cache.

    Attributes:
        data: The PNG bytes ("" once stored).
        path: The stored file, or None.
    """

    data: bytes = b""
    path: Path | None = None

    def read(self) -> bytes:
        """Return the PNG bytes."""
        return self.data if self.path is None else self.path.read_bytes()


def _save_png(png: Png, directory: Path) -> None:
    (directory / "figure.png").write_bytes(png.read())


PNG: CacheSpec[Png] = CacheSpec(
    files=["figure.png"], save=_save_png, load=lambda d: Png(path=d / "figure.png")
)
"""How a step returning a `Png` stores it."""


@attrs.frozen
class SeriesStats:
    """The numbers of one series' report.

    Attributes:
        voxels: Voxels in the brain mask.
        volume_ml: Volume of the mask in millilitres.
        median_fa: Median FA inside the mask.
        median_md: Median MD inside the mask (mm^2/s).
        fa_hist: Counts of FA inside the mask over `FA_BINS`.
        md_hist: Counts of MD inside the mask over `MD_BINS`.
        shells: ``(b-value, volumes)`` per rounded b-value.
        warnings: Quality warnings, one sentence each.
    """

    voxels: int
    volume_ml: float
    median_fa: float
    median_md: float
    fa_hist: tuple[int, ...]
    md_hist: tuple[int, ...]
    shells: tuple[tuple[float, int], ...]
    warnings: tuple[str, ...]


def _save_stats(stats: SeriesStats, directory: Path) -> None:
    (directory / "stats.json").write_text(json.dumps(attrs.asdict(stats)), encoding="utf-8")


def _load_stats(directory: Path) -> SeriesStats:
    raw = json.loads((directory / "stats.json").read_text(encoding="utf-8"))
    raw.update(
        fa_hist=tuple(raw["fa_hist"]), md_hist=tuple(raw["md_hist"]),
        shells=tuple((float(b), int(n)) for b, n in raw["shells"]),
        warnings=tuple(raw["warnings"]),
    )  # fmt: skip
    return SeriesStats(**raw)


STATS: CacheSpec[SeriesStats] = CacheSpec(files=["stats.json"], save=_save_stats, load=_load_stats)
"""How a step returning `SeriesStats` stores it."""


def summarise(
    dwi: Dwi, mask: VolumeResource, fa: VolumeResource, md: VolumeResource
) -> SeriesStats:
    """Summarise a series: mask size, FA and MD inside the mask, shells, quality warnings.

    Args:
        dwi: The DWI (its b-table).
        mask: The brain mask.
        fa: The FA map.
        md: The MD map (mm^2/s).

    Returns:
        The `SeriesStats`.
    """
    inside = mask.get_array() != 0
    fa_in = np.asarray(fa.get_array(), np.float64)[inside]
    md_in = np.asarray(md.get_array(), np.float64)[inside]
    voxel_ml = abs(float(np.linalg.det(mask.get_affine()[:3, :3]))) / 1000.0
    bvals = np.round(np.asarray(dwi.bval.get(), np.float64) / 50.0) * 50.0
    bvals[bvals <= B0_THRESHOLD] = 0.0
    shells = tuple((float(b), int((bvals == b).sum())) for b in np.unique(bvals))
    warnings = []
    fraction = inside.mean() if inside.size else 0.0
    if fraction < 0.02 or fraction > 0.8:
        warnings.append(
            f"the brain mask covers {100 * fraction:.1f}% of the image: check the mask outline"
        )
    if fa_in.size and (high := float((fa_in > 0.95).mean())) > 0.02:
        warnings.append(f"{100 * high:.1f}% of mask voxels have FA > 0.95 (noise or fit failure)")
    if len(np.unique(np.asarray(dwi.bvec.get())[bvals > 0], axis=0)) < 6:
        warnings.append("fewer than 6 distinct gradient directions: the tensor is ill-posed")
    return SeriesStats(
        voxels=int(inside.sum()),
        volume_ml=float(inside.sum() * voxel_ml),
        median_fa=float(np.median(fa_in)) if fa_in.size else float("nan"),
        median_md=float(np.median(md_in)) if md_in.size else float("nan"),
        fa_hist=tuple(int(n) for n in np.histogram(fa_in, FA_BINS)[0]),
        md_hist=tuple(int(n) for n in np.histogram(md_in, MD_BINS)[0]),
        shells=shells,
        warnings=tuple(warnings),
    )


def _canonical(volume: VolumeResource) -> NDArray[Any]:
    """The volume's voxels reoriented to RAS (nibabel's closest canonical orientation)."""
    import nibabel as nib

    image = nib.Nifti1Image(  # type: ignore[no-untyped-call]
        np.asanyarray(volume.get_array()), volume.get_affine()
    )
    return np.asanyarray(nib.as_closest_canonical(image).dataobj)  # type: ignore[no-untyped-call]


def _slices(shape: tuple[int, ...], inside: NDArray[np.bool_]) -> list[list[tuple[int, int]]]:
    """Per plane (sagittal, coronal, axial): ``(axis, index)`` of evenly spaced slices
    through the extent of ``inside`` (the whole volume when it is empty)."""
    planes = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        occupied = (
            np.flatnonzero(inside.any(axis=other)) if inside.any() else np.arange(shape[axis])
        )
        low, high = int(occupied[0]), int(occupied[-1])
        picks = np.linspace(low, high, _SLICES + 2)[1:-1].round().astype(int)
        planes.append([(axis, int(i)) for i in picks])
    return planes


def _cut(volume: NDArray[Any], axis: int, index: int) -> NDArray[Any]:
    """One slice, rotated so that superior / anterior is up."""
    return np.rot90(volume[(slice(None),) * axis + (index,)])  # a view (np.take copies)


def _outline(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _tiles(volume: NDArray[Any], planes: list[list[tuple[int, int]]]) -> NDArray[Any]:
    """The slices of ``planes`` laid out in rows (one per plane), zero-padded."""
    rows = []
    for plane in planes:
        tiles = [_cut(volume, axis, index) for axis, index in plane]
        height = max(t.shape[0] for t in tiles)
        rows.append(np.hstack([_pad(t, height + 4, t.shape[1]) for t in tiles]))
    width = max(r.shape[1] for r in rows)
    return np.vstack([_pad(r, r.shape[0], width) for r in rows])


def _mosaic(
    volume: NDArray[Any],
    inside: NDArray[np.bool_],
    colour: Callable[[NDArray[Any]], NDArray[np.floating]],
    *,
    outline: bool = False,
) -> Png:
    """A 3-row (sagittal, coronal, axial) mosaic of ``volume`` (x, y, z[, 3]), black outside
    ``inside`` (or with its outline in red); ``colour`` maps the cut values to RGB in [0, 1].

    Only the 18 slices shown are coloured; the PNG is written with fast compression.
    """
    from PIL import Image

    planes = _slices(volume.shape[:3], inside)
    mask = _tiles(inside, planes)
    rgb = np.array(colour(_tiles(volume, planes)), np.float32)
    if outline:
        rgb[_outline(mask)] = _OUTLINE
    else:
        rgb[~mask] = 0.0
    scale = max(1, round(_TILE / max(1, min(volume.shape[:3]))))
    pixels = (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=1)
    return Png(buffer.getvalue())


def _pad(tile: NDArray[Any], height: int, width: int) -> NDArray[Any]:
    out = np.zeros((height, width, *tile.shape[2:]), tile.dtype)
    out[: tile.shape[0], : tile.shape[1]] = tile
    return out


def _gray(low: float, high: float) -> Callable[[NDArray[Any]], NDArray[np.float32]]:
    def colour(data: NDArray[Any]) -> NDArray[np.float32]:
        scaled = (np.asarray(data, np.float32) - low) / max(high - low, 1e-12)
        return np.repeat(np.clip(scaled, 0, 1)[..., None], 3, axis=-1)

    return colour


def _colormap(low: float, high: float, name: str) -> Callable[[NDArray[Any]], NDArray[Any]]:
    from matplotlib import colormaps

    def colour(data: NDArray[Any]) -> NDArray[Any]:
        scaled = np.clip((np.asarray(data, np.float32) - low) / (high - low), 0, 1)
        return np.asarray(colormaps[name](scaled)[..., :3], np.float32)

    return colour


def _rgb(data: NDArray[Any]) -> NDArray[Any]:
    return np.asarray(data, np.float32)


@cacheable(PNG)
def b0_mosaic(b0: VolumeResource, mask: VolumeResource) -> Png:
    """Mosaic of the mean b0 in three planes with the brain mask's outline in red.

    Args:
        b0: The mean b=0 volume.
        mask: The brain mask.

    Returns:
        The PNG.
    """
    data = _canonical(b0)
    high = float(np.percentile(data, 99.5)) or 1.0
    return _mosaic(data, _canonical(mask) != 0, _gray(0.0, high), outline=True)


def map_mosaic(
    volume: VolumeResource,
    mask: VolumeResource,
    *,
    low: float = 0.0,
    high: float = 1.0,
    colormap: str | None = None,
) -> Png:
    """Mosaic of a map in three planes (six slices each through the mask), outside black.

    Args:
        volume: A 3-D map, or an RGB map (x, y, z, 3) of values in [0, 1].
        mask: The brain mask (chooses the slices; outside it is black).
        low: The value shown black (or at the colormap's start).
        high: The value shown white (or at the colormap's end).
        colormap: A matplotlib colormap name; grey when None.

    Returns:
        The PNG.
    """
    data = _canonical(volume)
    colour: Callable[[NDArray[Any]], NDArray[Any]]
    if data.ndim == 4:
        colour = _rgb
    elif colormap is None:
        colour = _gray(low, high)
    else:
        colour = _colormap(low, high, colormap)
    return _mosaic(data, _canonical(mask) != 0, colour)


def _canvas(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> Png:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return Png(buffer.getvalue())


@cacheable(PNG)
def gradient_sphere(dwi: Dwi) -> Png:
    """The gradient table on a sphere: each direction (and its antipode) at radius b/bmax.

    Args:
        dwi: The DWI.

    Returns:
        The PNG.
    """
    bvals = np.asarray(dwi.bval.get(), np.float64)
    bvecs = np.asarray(dwi.bvec.get(), np.float64)
    weighted = bvals > B0_THRESHOLD
    points = bvecs[weighted] * (bvals[weighted] / bvals.max())[:, None]
    figure = _canvas(3.6, 3.4)
    figure.subplots_adjust(left=0.0, right=0.92, bottom=0.04, top=0.92)
    axes = figure.add_subplot(projection="3d")
    colours = np.concatenate([bvals[weighted]] * 2)
    shown = axes.scatter(*np.vstack([points, -points]).T, c=colours, cmap="plasma", s=14)
    axes.set_box_aspect((1, 1, 1), zoom=0.85)
    axes.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1), xlabel="x", ylabel="y", zlabel="z",
             xticks=[-1, 0, 1], yticks=[-1, 0, 1], zticks=[-1, 0, 1])  # fmt: skip
    shells = np.unique(np.round(bvals[weighted], -2))
    axes.set_title(
        f"{int(weighted.sum())} directions on {len(shells)} shell{'s' * (len(shells) != 1)}"
        f" (b = {', '.join(f'{b:g}' for b in shells)}), {int((~weighted).sum())} b=0",
        fontsize=8,
    )
    if len(shells) > 1:
        figure.colorbar(shown, ax=axes, shrink=0.6, label="b (s/mm²)")
    return _png(figure)


@cacheable(PNG)
def group_distributions(
    labels: tuple[str, ...], fa_hist: NDArray[np.int64], md_hist: NDArray[np.int64]
) -> Png:
    """FA and MD distributions inside the mask, one line per series, for the group report.

    Args:
        labels: Series names.
        fa_hist: Their `SeriesStats.fa_hist`, one row per series (over `FA_BINS`).
        md_hist: Their `SeriesStats.md_hist`, one row per series (over `MD_BINS`).

    Returns:
        The PNG.
    """
    figure = _canvas(8.0, 3.0)
    figure.subplots_adjust(left=0.1, right=0.98, bottom=0.17, top=0.9, wspace=0.2)
    fa_axes, md_axes = figure.subplots(1, 2)
    for axes, edges, counts in ((fa_axes, FA_BINS, fa_hist), (md_axes, MD_BINS * 1e3, md_hist)):
        density = counts / np.maximum(1, counts.sum(axis=1, keepdims=True))
        centres = (edges[:-1] + edges[1:]) / 2
        for label, row in zip(labels, density, strict=True):
            axes.plot(centres, row, lw=1, alpha=0.8, label=label)
    fa_axes.set(xlabel="FA", ylabel="fraction of mask voxels", title="FA inside the mask")
    md_axes.set(xlabel="MD (10⁻³ mm²/s)", title="MD inside the mask")
    if len(labels) <= 12:
        md_axes.legend(fontsize=7, frameon=False)
    return _png(figure)

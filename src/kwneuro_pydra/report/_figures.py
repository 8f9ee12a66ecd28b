"""The report's figures and numbers, each made by a `cacheable` step (a rerun reuses them).

Mosaics are composed as arrays (three planes, six slices each, in RAS orientation, each tile
resampled to the voxels' physical aspect) and written as PNG with Pillow (labels, colour
bars); plots use matplotlib's Agg canvas directly (no pyplot, no display).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
from numpy.typing import NDArray

from kwneuro_pydra.cache import CacheSpec, cacheable
from kwneuro_pydra.resources import B0_THRESHOLD, Dwi, VolumeResource

if TYPE_CHECKING:
    from kwneuro_pydra.workflows import FitRecord

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
_GAP = 6  # pixels between tiles
_GAP_GREY = 48
_TEXT = (255, 230, 120)


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
        shells: ``(b-value, volumes)`` per rounded b-value, all volumes of the DWI.
        warnings: Quality warnings, one sentence each.
        unfitted: Voxels of the mask the fit left NaN (not in the medians and histograms).
        fitted_shells: ``(nominal b-value, volumes)`` of the shells fitted, b=0 first as
            ``(0, volumes)``; empty when the fit's record is unknown.
        left_out: ``(nominal b-value, volumes)`` of the shells left out of the fit.
        method: The fit method (``WLS``, ``OLS``), "" when unknown.
        frame: The eigenvectors' frame (``bvec``, ``world``), "" when unknown.
        notes: What the fit warned about, one sentence each.
        bmax: The fit's ``bmax`` (s/mm²), NaN when unknown.
        shell_tolerance: The fit's ``shell_tolerance`` (s/mm²), NaN when unknown.
    """

    voxels: int
    volume_ml: float
    median_fa: float
    median_md: float
    fa_hist: tuple[int, ...]
    md_hist: tuple[int, ...]
    shells: tuple[tuple[float, int], ...]
    warnings: tuple[str, ...]
    unfitted: int = 0
    fitted_shells: tuple[tuple[float, int], ...] = ()
    left_out: tuple[tuple[float, int], ...] = ()
    method: str = ""
    frame: str = ""
    notes: tuple[str, ...] = ()
    bmax: float = float("nan")
    shell_tolerance: float = float("nan")


def _save_stats(stats: SeriesStats, directory: Path) -> None:
    (directory / "stats.json").write_text(json.dumps(attrs.asdict(stats)), encoding="utf-8")


def _load_stats(directory: Path) -> SeriesStats:
    raw = json.loads((directory / "stats.json").read_text(encoding="utf-8"))
    pairs = ("shells", "fitted_shells", "left_out")
    raw.update({key: tuple((float(b), int(n)) for b, n in raw.get(key, ())) for key in pairs})
    raw.update(
        fa_hist=tuple(raw["fa_hist"]),
        md_hist=tuple(raw["md_hist"]),
        warnings=tuple(raw["warnings"]),
        notes=tuple(raw.get("notes", ())),
    )
    return SeriesStats(**raw)


STATS: CacheSpec[SeriesStats] = CacheSpec(files=["stats.json"], save=_save_stats, load=_load_stats)
"""How a step returning `SeriesStats` stores it."""


def summarise(
    dwi: Dwi,
    mask: VolumeResource,
    fa: VolumeResource,
    md: VolumeResource,
    *,
    fit: FitRecord | None = None,
) -> SeriesStats:
    """Summarise a series: mask size, FA and MD inside the mask, shells, quality warnings.

    Voxels the fit left NaN are counted (``unfitted``) and left out of the medians and
    histograms.

    Args:
        dwi: The DWI (its b-table).
        mask: The brain mask.
        fa: The FA map.
        md: The MD map (mm^2/s).
        fit: The fit's record (`DtiResult.fit`): the shells fitted and left out, the method
            and the fit's warnings are then reported too.

    Returns:
        The `SeriesStats`.
    """
    inside = mask.get_array() != 0
    fa_all = np.asarray(fa.get_array(), np.float64)[inside]
    md_all = np.asarray(md.get_array(), np.float64)[inside]
    fitted = np.isfinite(fa_all) & np.isfinite(md_all)
    fa_in, md_in = fa_all[fitted], md_all[fitted]
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
        unfitted=int((~fitted).sum()),
        fitted_shells=() if fit is None else ((0.0, fit.b0_volumes), *fit.shells),
        left_out=() if fit is None else fit.left_out,
        method="" if fit is None else fit.method,
        frame="" if fit is None else fit.frame,
        notes=() if fit is None else fit.notes,
        bmax=float("nan") if fit is None else fit.bmax,
        shell_tolerance=float("nan") if fit is None else fit.shell_tolerance,
    )


@attrs.frozen
class _Oriented:
    """A volume's voxels reoriented to RAS (nibabel's closest canonical orientation).

    Attributes:
        data: The voxels, axes (x: left to right, y: posterior to anterior, z: inferior to
            superior[, components]).
        zooms: Voxel sizes along those axes (mm).
        affine: The reoriented voxel-to-world affine.
    """

    data: NDArray[Any]
    zooms: tuple[float, float, float]
    affine: NDArray[np.float64]


def _canonical(volume: VolumeResource) -> _Oriented:
    """The volume reoriented to RAS, with its voxel sizes and affine."""
    import nibabel as nib

    image = nib.as_closest_canonical(  # type: ignore[no-untyped-call]
        nib.Nifti1Image(np.asanyarray(volume.get_array()), volume.get_affine())  # type: ignore[no-untyped-call]
    )
    affine = np.asarray(image.affine, np.float64)
    zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
    return _Oriented(np.asanyarray(image.dataobj), zooms, affine)  # type: ignore[arg-type]


def _slices(shape: tuple[int, ...], inside: NDArray[np.bool_]) -> list[list[tuple[int, int]]]:
    """Per plane (sagittal, coronal, axial): ``(axis, index)`` of evenly spaced slices
    through the extent of ``inside`` (the whole volume when it is empty).
    """
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
    """One slice, rotated so that superior / anterior is up (and right is on the right)."""
    return np.rot90(volume[(slice(None),) * axis + (index,)])  # a view (np.take copies)


def _outline(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _resample(tile: NDArray[Any], sizes: tuple[float, float], pixel: float) -> NDArray[Any]:
    """Nearest-neighbour resampling of a tile to square pixels of ``pixel`` mm.

    ``sizes`` are the tile's row and column spacings in mm: 2 x 6 mm voxels become 2 x 6
    pixel blocks of ``pixel`` = 2/k mm, so the PNG keeps the physical aspect.
    """
    for axis, size in enumerate(sizes):
        count = max(1, round(tile.shape[axis] * size / pixel))
        index = np.minimum(
            ((np.arange(count) + 0.5) * pixel / size).astype(int), tile.shape[axis] - 1
        )
        tile = np.take(tile, index, axis=axis)
    return tile


_PLANES = (("x", ("P", "A")), ("y", ("L", "R")), ("z", ("L", "R")))
"""Per plane: the axis its slices cut, and the sides shown left and right of each tile."""


def _mosaic(
    oriented: _Oriented,
    inside: NDArray[np.bool_],
    colour: Callable[[NDArray[Any]], NDArray[np.floating]],
    *,
    outline: bool = False,
    bar: tuple[float, float, Callable[[NDArray[Any]], NDArray[Any]], str] | None = None,
) -> Png:
    """A 3-row (sagittal, coronal, axial) mosaic of an RAS volume, black outside ``inside``
    (or with its outline in red); ``colour`` maps the cut values to RGB in [0, 1] (NaN, an
    unfitted voxel, is black).

    Tiles keep the physical aspect of the voxels (`_resample`), are separated by a grey
    gap, and carry their world position (``x=-12 mm``) and the sides of the head; the
    images are shown in neurological convention (the subject's left on the left).
    ``bar`` = ``(low, high, colour, label)`` adds a colour bar under the tiles.
    """
    from PIL import Image, ImageDraw

    volume = oriented.data
    planes = _slices(volume.shape[:3], inside)
    smallest = max(1, min(volume.shape[:3]))
    pixel = min(oriented.zooms) / max(1, round(_TILE / smallest))
    rows: list[list[NDArray[np.uint8]]] = []
    for plane in planes:
        tiles = []
        for axis, index in plane:
            rgb = np.nan_to_num(np.array(colour(_cut(volume, axis, index)), np.float32))
            mask = _cut(inside, axis, index)
            if outline:
                rgb[_outline(mask)] = _OUTLINE
            else:
                rgb[~mask] = 0.0
            in_plane = [a for a in range(3) if a != axis]
            sizes = (oriented.zooms[in_plane[1]], oriented.zooms[in_plane[0]])
            pixels = (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
            tiles.append(_resample(pixels, sizes, pixel))
        rows.append(tiles)
    height = sum(max(t.shape[0] for t in row) for row in rows) + _GAP * (len(rows) + 1)
    width = max(sum(t.shape[1] for t in row) + _GAP * (len(row) + 1) for row in rows)
    bar_height = 34 if bar is not None else 0
    canvas = np.full((height + bar_height, max(width, 260 if bar else 0), 3), _GAP_GREY, np.uint8)
    image = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(image)
    font = _font()
    top = _GAP
    for (axis_name, (left, right)), plane, tiles in zip(_PLANES, planes, rows, strict=True):
        x = _GAP
        for (axis, index), tile in zip(plane, tiles, strict=True):
            image.paste(Image.fromarray(tile, "RGB"), (x, top))
            centre = np.array(volume.shape[:3], float) / 2
            centre[axis] = index
            where = float((oriented.affine @ np.r_[centre, 1.0])[axis])
            draw.text((x + 2, top + 1), f"{axis_name}={where:.0f} mm", fill=_TEXT, font=font)
            middle = top + tile.shape[0] // 2 - 6
            draw.text((x + 2, middle), left, fill=_TEXT, font=font)
            draw.text((x + tile.shape[1] - 9, middle), right, fill=_TEXT, font=font)
            x += tile.shape[1] + _GAP
        top += max(t.shape[0] for t in tiles) + _GAP
    if bar is not None:
        low, high, bar_colour, label = bar
        ramp = np.array(bar_colour(np.linspace(low, high, 200)[None, :]), np.float32)
        strip = (np.clip(ramp, 0, 1) * 255 + 0.5).astype(np.uint8).repeat(10, axis=0)
        image.paste(Image.fromarray(strip, "RGB"), (_GAP + 30, top))
        draw.text((_GAP, top - 1), f"{low:g}", fill=_TEXT, font=font)
        draw.text((_GAP + 234, top - 1), f"{high:g}", fill=_TEXT, font=font)
        draw.text((_GAP + 30, top + 12), label, fill=_TEXT, font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return Png(buffer.getvalue())


def _font() -> Any:
    """matplotlib's DejaVu Sans at 11 px (it has the superscripts of units, Pillow's does not)."""
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 11)


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
    oriented = _canonical(b0)
    high = float(np.nanpercentile(oriented.data, 99.5)) or 1.0
    inside = _canonical(mask).data != 0
    return _mosaic(oriented, inside, _gray(0.0, high), outline=True)


def map_mosaic(
    volume: VolumeResource,
    mask: VolumeResource,
    *,
    low: float = 0.0,
    high: float = 1.0,
    colormap: str | None = None,
    label: str = "",
) -> Png:
    """Mosaic of a map in three planes (six slices each through the mask), outside black.

    Tiles keep the voxels' physical aspect, are labelled with their world position and the
    sides of the head (neurological convention: the subject's left on the left); a scalar
    map gets a colour bar from ``low`` to ``high`` named ``label`` (give the units there).
    An RGB map (colour FA) is shown as it is: `DtiResult.color_fa` is in world axes, so red
    is left-right, green anterior-posterior and blue inferior-superior whatever the order
    and obliquity of the voxel axes. NaN (unfitted voxels) is black.

    Args:
        volume: A 3-D map, or an RGB map (x, y, z, 3) of values in [0, 1].
        mask: The brain mask (chooses the slices; outside it is black).
        low: The value shown black (or at the colormap's start).
        high: The value shown white (or at the colormap's end).
        colormap: A matplotlib colormap name; grey when None.
        label: The colour bar's label with units, e.g. ``"MD (mm²/s)"``.

    Returns:
        The PNG.
    """
    oriented = _canonical(volume)
    inside = _canonical(mask).data != 0
    if oriented.data.ndim == 4:
        return _mosaic(oriented, inside, _rgb)
    colour = _gray(low, high) if colormap is None else _colormap(low, high, colormap)
    return _mosaic(oriented, inside, colour, bar=(low, high, colour, label))


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
    axes.set(
        xlim=(-1, 1),
        ylim=(-1, 1),
        zlim=(-1, 1),
        xlabel="x",
        ylabel="y",
        zlabel="z",
        xticks=[-1, 0, 1],
        yticks=[-1, 0, 1],
        zticks=[-1, 0, 1],
    )
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

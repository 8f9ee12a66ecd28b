"""The report's science: world colours, physical aspect, colour bars, methods and provenance,
the QC table, and derivatives that the BIDS validator accepts (but for BEP016 names)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage

from kwneuro_pydra import Cache
from kwneuro_pydra.app._options import LEGACY_OPTIONS_FILE, OPTIONS_FILE
from kwneuro_pydra.bids import discover, write_derivatives
from kwneuro_pydra.cli import main
from kwneuro_pydra.report import GROUP_FIGURE, map_mosaic, summarise
from kwneuro_pydra.report._figures import _GAP_GREY, _TEXT, _font
from kwneuro_pydra.report._html import QC_TABLE, SeriesReport, write_reports
from kwneuro_pydra.resources import (
    Dwi,
    InMemoryBvalResource,
    InMemoryBvecResource,
    InMemoryVolumeResource,
)
from kwneuro_pydra.workflows import brain_mask, estimate_dti
from kwneuro_pydra.workflows.phantom import fsl_bvecs, gradient_scheme


def pixels(data: bytes) -> NDArray[np.float32]:
    from matplotlib.image import imread

    return np.asarray(imread(io.BytesIO(data), format="png"))[..., :3]


# --- colour FA in world axes ----------------------------------------------------------------


def rotation_about_z(degrees: float) -> NDArray[np.float64]:
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def left_right_dwi(linear: NDArray[np.float64]) -> Dwi:
    """A ball of tensors along world x (left-right) stored with voxel axes ``linear``
    (3 x 3, columns: the world direction and size of each voxel axis), b-vectors written in
    FSL's convention for that affine."""
    bvals, gradients = gradient_scheme(b0_volumes=2, directions=30)
    voxel_sizes = np.linalg.norm(linear, axis=0)
    axes = linear / voxel_sizes  # world direction of each voxel axis
    along = axes.T @ np.array([1.0, 0.0, 0.0])  # world x in voxel axes
    tensor = 1e-3 * (0.3 * np.eye(3) + 1.4 * np.outer(along, along))
    signal = 1000 * np.exp(-bvals * np.einsum("gi,ij,gj->g", gradients, tensor, gradients))
    shape = (20, 20, 20)
    centre = np.indices(shape).transpose(1, 2, 3, 0) - 9.5
    ball = np.linalg.norm(centre, axis=-1) < 8
    data = np.where(ball[..., None], signal, 0.0).astype(np.float32)
    data += np.random.default_rng(0).normal(0, 5, data.shape).astype(np.float32) ** 2 / 10
    affine = np.eye(4)
    affine[:3, :3] = linear
    bvecs = fsl_bvecs(gradients, affine)
    return Dwi(
        InMemoryVolumeResource(data, affine),
        InMemoryBvalResource(bvals),
        InMemoryBvecResource(bvecs),
    )


@pytest.mark.parametrize(
    "linear",
    [
        np.diag([2.0, 2.0, 2.0]),  # RAS
        np.array([[0, 2.0, 0], [2.0, 0, 0], [0, 0, 2.0]]),  # ARS: voxel axes A, R, S
        rotation_about_z(35) @ np.diag([2.0, 2.0, 2.0]),  # oblique
        np.diag([-2.0, 2.0, 2.0]),  # LAS (negative determinant: no FSL flip)
    ],
    ids=["RAS", "ARS", "oblique", "LAS"],
)
def test_the_colour_fa_of_a_left_right_phantom_is_red_in_the_figure(
    linear: NDArray[np.float64],
) -> None:
    """The colours were those of the voxel axes: ARS drew a left-right bundle green."""
    dwi = left_right_dwi(linear)
    result = estimate_dti(dwi)
    ball = np.asarray(dwi.volume.get_array())[..., 0] > 500  # the b=0 signal is 1000 there
    mask = InMemoryVolumeResource(ball.astype(np.uint8), dwi.volume.get_affine())
    rgb = pixels(map_mosaic(result.color_fa, mask).read())
    bright = rgb.max(axis=-1) > 0.3
    others = [np.delete(rgb, c, axis=-1).max(axis=-1) for c in range(3)]
    # pixels of one clear colour (the labels' yellow and the grey gaps are not)
    dominant = [int((bright & (rgb[..., c] > 2 * others[c])).sum()) for c in range(3)]
    red, green, blue = dominant
    assert red > 5000
    assert red > 0.98 * (red + green + blue), dominant


# --- mosaics --------------------------------------------------------------------------------


def test_the_mosaic_keeps_the_physical_aspect_of_2x2x6_mm_voxels() -> None:
    """A 40 x 40 x 42 mm box in 2 x 2 x 6 mm voxels: its sagittal cut is about square in the
    PNG (it was drawn 3 times too flat)."""
    box = np.zeros((30, 30, 11), np.float32)
    box[5:25, 5:25, 2:9] = 1.0  # 40 x 40 x 42 mm
    affine = np.diag([2.0, 2.0, 6.0, 1.0])
    volume = InMemoryVolumeResource(box, affine)
    mask = InMemoryVolumeResource(np.ones(box.shape, np.uint8), affine)
    rgb = pixels(map_mosaic(volume, mask, label="x").read())
    white = rgb.min(axis=-1) > 0.95
    labels, _ = ndimage.label(white)
    first = labels[np.nonzero(white)[0][0], np.nonzero(white)[1][0]]  # top-left: sagittal
    rows, columns = np.nonzero(labels == first)
    height, width = np.ptp(rows) + 1, np.ptp(columns) + 1
    assert height / width == pytest.approx(42 / 40, rel=0.1)


def test_scalar_mosaics_have_a_colour_bar_and_tiles_a_gap() -> None:
    ramp = np.tile(np.linspace(0, 3e-3, 20, dtype=np.float32), (20, 20, 1)).transpose(2, 0, 1)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    volume = InMemoryVolumeResource(ramp, affine)
    mask = InMemoryVolumeResource(np.ones(ramp.shape, np.uint8), affine)
    with_bar = pixels(
        map_mosaic(volume, mask, high=3e-3, colormap="viridis", label="MD (mm²/s)").read()
    )
    from matplotlib import colormaps

    bar_row = with_bar[-26]  # the colour bar's middle row
    ends = np.asarray(colormaps["viridis"]([0.0, 1.0])[:, :3])
    for end in ends:
        assert np.abs(bar_row - end).max(axis=-1).min() < 0.02
    grey = 48 / 255
    assert np.abs(with_bar[:, 2] - grey).max() < 0.01  # the gap left of the first column


def rgb8(data: bytes) -> NDArray[np.uint8]:
    """A PNG's pixels as 8-bit RGB, exactly as stored."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def mosaic_tiles(rgb: NDArray[np.uint8]) -> list[list[NDArray[np.uint8]]]:
    """The tiles of a mosaic as found on its PNG: regions apart from the grey gap, at least
    30 pixels high (not the colour bar), grouped in rows from top to bottom, left to right."""
    boxes = [
        box
        for box in ndimage.find_objects(ndimage.label((rgb != _GAP_GREY).any(axis=-1))[0])
        if box is not None and box[0].stop - box[0].start >= 30
    ]
    rows: dict[int, list[tuple[slice, slice]]] = {}
    for box in boxes:
        rows.setdefault(box[0].start, []).append(box)
    return [
        [rgb[box] for box in sorted(row, key=lambda b: b[1].start)]
        for _, row in sorted(rows.items())
    ]


def text_pixels(rgb: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Pixels of the labels' yellow (blended over black or grey: red differs from blue)."""
    return rgb[..., 0] != rgb[..., 2]


def cropped(rgb: NDArray[np.uint8], where: NDArray[np.bool_]) -> NDArray[np.uint8]:
    rows, columns = np.nonzero(where)
    return rgb[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]


def text_alone(text: str) -> NDArray[np.uint8]:
    """``text`` drawn alone on black with the figures' font and colour, cropped to its ink."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (160, 40))
    ImageDraw.Draw(image).text((10, 10), text, fill=_TEXT, font=_font())
    drawn = np.asarray(image)
    return cropped(drawn, text_pixels(drawn))


def head(storage: str, value: Callable[..., NDArray[np.float64]]) -> tuple[Any, Any]:
    """A map of ``value(x, y, z)`` (world mm) inside a ball of radius 16 mm, 32^3 voxels of
    2 mm whose centres are at even millimetres (x = 2i - 32, ...), stored RAS or LAS (x
    flipped: the same world content); the ball as the mask. The ball leaves the tiles'
    corners and sides black, where their labels are drawn."""
    i, j, k = np.indices((32, 32, 32), dtype=np.float64)
    x, y, z = 2 * i - 32, 2 * j - 32, 2 * k - 32
    ball = x**2 + y**2 + z**2 < 16**2
    data = np.where(ball, value(x, y, z), 0.0).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -32.0
    if storage == "LAS":
        data, ball = data[::-1], ball[::-1]
        affine[0, 0], affine[0, 3] = -2.0, 30.0  # voxel 31 - i is where voxel i was
    return (
        InMemoryVolumeResource(np.ascontiguousarray(data), affine),
        InMemoryVolumeResource(np.ascontiguousarray(ball).astype(np.uint8), affine),
    )


@pytest.mark.parametrize("storage", ["RAS", "LAS"])
def test_the_side_markers_name_the_side_the_subjects_left_is_drawn_on(storage: str) -> None:
    """A bright blob in the LEFT, anterior part of the head (world x < 0, y > 0): on the
    PNG, in every coronal and axial tile showing it, the marker on the blob's side is "L"
    (rendered alone, the same pixels), the other "R"; in sagittal tiles, "A" and "P". The
    same whether x is stored left to right (RAS) or flipped (LAS)."""

    def left_anterior(x: Any, y: Any, z: Any) -> NDArray[np.float64]:
        blob = (x + 8) ** 2 + (y - 6) ** 2 + z**2 < 5**2
        return np.where(blob, 0.8, 0.3)

    volume, mask = head(storage, left_anterior)
    rows = mosaic_tiles(rgb8(map_mosaic(volume, mask, label="x").read()))
    assert [len(row) for row in rows] == [6, 6, 6]
    letters = {c: text_alone(c) for c in "LRPA"}
    seen = [0, 0, 0]  # tiles showing the blob, per plane
    planes = [("A", "P"), ("L", "R"), ("L", "R")]
    for plane, (row, (near, far)) in enumerate(zip(rows, planes, strict=True)):
        for tile in row:
            height, width = tile.shape[:2]
            marks = text_pixels(tile)
            marks[: height // 3] = marks[2 * height // 3 :] = False  # the top label left out
            found, count = ndimage.label(marks, structure=np.ones((3, 3)))
            assert count == 2, count
            glyphs = sorted(
                (np.nonzero(found == n)[1].mean(), cropped(tile, found == n)) for n in (1, 2)
            )
            side = {}
            for column, glyph in glyphs:
                (name,) = [c for c, alone in letters.items() if np.array_equal(glyph, alone)]
                side[name] = np.sign(column - width / 2)
            assert set(side) == {near, far} and side[near] == -side[far]
            grey = (tile[..., 0] == tile[..., 2]) & (tile[..., 0] > 150)  # the blob
            if grey.sum() > 20:
                assert np.sign(np.nonzero(grey)[1].mean() - width / 2) == side[near]
                seen[plane] += 1
    assert min(seen) >= 2, seen


@pytest.mark.parametrize("storage", ["RAS", "LAS"])
def test_each_tile_is_labelled_with_its_slices_world_position(storage: str) -> None:
    """Maps whose grey is the world coordinate (x, y, then z; 0.1 at -40 mm, 0.9 at +40
    mm): each tile's grey says where its slice is, and its label is that position as
    ``x=<mm> mm`` drawn alone (the same pixels)."""
    for axis, name in enumerate("xyz"):

        def coordinate(*world: Any, axis: int = axis) -> NDArray[np.float64]:
            return 0.1 + (np.asarray(world[axis]) + 40) / 100

        volume, mask = head(storage, coordinate)
        tiles = mosaic_tiles(rgb8(map_mosaic(volume, mask, label="x").read()))[axis]
        positions = []
        for tile in tiles:
            grey = (tile[..., 0] == tile[..., 2]) & (tile[..., 0] > 0)
            level = np.median(tile[..., 0][grey]) / 255
            where = 2 * round(((level - 0.1) * 100 - 40) / 2)  # voxel centres: even mm
            top = text_pixels(tile)
            top[tile.shape[0] // 3 :] = False
            assert np.array_equal(cropped(tile, top), text_alone(f"{name}={where} mm")), where
            positions.append(where)
        assert positions == sorted(positions) and len(set(positions)) == 6


# --- numbers, methods, provenance, QC table -------------------------------------------------


def phantom_series() -> tuple[Dwi, SeriesReport]:
    from kwneuro_pydra.workflows.phantom import make_phantom

    phantom = make_phantom((20, 20, 12), seed=5, shells=(1000.0, 3000.0))
    signal = phantom.signal.copy()
    signal[10, 10, 6, 4] = np.nan  # one unfitted voxel inside the mask
    dwi = Dwi(
        InMemoryVolumeResource(signal, np.diag([2.0, 2, 2, 1])),
        InMemoryBvalResource(phantom.bvals),
        InMemoryBvecResource(fsl_bvecs(phantom.bvecs, np.diag([2.0, 2, 2, 1]))),
    )
    mask = brain_mask(dwi, median_radius=1, numpass=1)
    with (
        pytest.warns(UserWarning, match="leaving out 30 volumes of b=3000"),
        pytest.warns(UserWarning, match="1 voxels of in memory have NaN"),
    ):
        dti = estimate_dti(dwi, mask)
    stats = summarise(dwi, mask, dti.fa, dti.md, fit=dti.fit)
    return dwi, SeriesReport("sub-01", "01", "sub-01/dwi/sub-01_dwi.nii.gz", stats=stats)


def test_summarise_counts_unfitted_voxels_and_keeps_them_out_of_the_medians() -> None:
    _, report = phantom_series()
    stats = report.stats
    assert stats is not None
    assert stats.unfitted == 1
    assert np.isfinite(stats.median_fa) and np.isfinite(stats.median_md)
    assert sum(stats.fa_hist) == stats.voxels - 1
    assert stats.fitted_shells == ((0.0, 2), (1000.0, 30))
    assert stats.left_out == ((3000.0, 30),)


def test_the_report_states_what_was_fitted_methods_provenance_and_writes_the_qc_table(
    tmp_path: Path,
) -> None:
    _, report = phantom_series()
    failed = SeriesReport("sub-02", "02", "sub-02/dwi/sub-02_dwi.nii.gz", failure="no b=0")
    write_reports(
        tmp_path,
        [report, failed],
        title="t",
        summary="s",
        command=["kwneuro-pydra", "run", "bids", "out", "participant"],
        worker="cf",
        parameters={"median_radius": 1, "numpass": 1, "fit_method": "WLS"},
        steps=[brain_mask, estimate_dti],
    )
    subject = (tmp_path / "sub-01.html").read_text()
    for text in (
        "Unfitted voxels (NaN)",
        "Fitted (WLS)",
        "b=0 (2), b=1000 (30)",
        "Left out",
        "b=3000 (30)",
        "leaving out 30 volumes",
    ):
        assert text in subject, text
    group = (tmp_path / "report.html").read_text()
    for text in (
        "kwneuro-pydra run bids out participant",
        "Worker</th><td>cf",
        "numpy version",
        "dipy version",
        "nibabel version",
        "pydra version",
        "median_radius=1",
        "fit_method=&#x27;WLS&#x27;",
        "Methods",
        "weighted least squares",
        "inside a brain mask computed from every volume, as MRtrix3&#x27;s dwi2mask does",
        "bridges narrower than 8.0 mm cut",
        "Volumes fitted: b=0 (2), b=1000 (30) (left out: b=3000 (30))",
        "Basser PJ",
        "Chung S",
        "Otsu N",
        "Gorgolewski KJ",
        QC_TABLE,
    ):
        assert text in group, text
    rows = list(csv.DictReader(io.StringIO((tmp_path / QC_TABLE).read_text()), delimiter="\t"))
    assert [r["series"] for r in rows] == ["sub-01", "sub-02"]
    assert rows[0]["unfitted_voxels"] == "1"
    assert rows[0]["shells_fitted"] == "0:2 1000:30" and rows[0]["shells_left_out"] == "3000:30"
    assert float(rows[0]["median_fa"]) == pytest.approx(report.stats.median_fa, rel=1e-5)  # type: ignore[union-attr]
    assert rows[1]["status"] == "failed"


# --- the demo's derivatives -----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo (2 subjects, 3 series) run by the debug worker: its output folder."""
    root = tmp_path_factory.mktemp("demo")
    assert main(["demo", str(root), "--subjects", "2", "--worker", "debug", "-q"]) == 0
    return root


def test_the_derivatives_have_a_readme_a_bidsignore_mask_types_and_colour_fa(demo: Path) -> None:
    out = demo / "derivatives"
    assert "NaN inside it" in (out / "README.md").read_text()
    assert "sub-*/figures" in (out / ".bidsignore").read_text().split()
    mask = json.loads((out / "sub-01/dwi/sub-01_desc-brain_mask.json").read_text())
    assert mask["Type"] == "Brain"
    assert mask["SpatialReference"] == "bids:raw:sub-01/dwi/sub-01_dwi.nii.gz"
    colour = out / "sub-01/dwi/sub-01_model-tensor_param-colorfa_dwimap.nii.gz"
    assert colour.exists()
    evecs = out / "sub-01/dwi/sub-01_model-tensor_param-evecs_dwimap.json"
    evecs = json.loads(evecs.read_text())
    assert "FSL's convention" in evecs["CoordinateFrame"]
    assert "NaN" in evecs["UnfittedValue"]


def test_sidecars_carry_the_fit_record(demo: Path, tmp_path: Path) -> None:
    series = discover(demo / "bids")[0]
    with Cache(tmp_path / "cache"):
        dti = estimate_dti(series.load())  # file-backed maps, as the app links them
    assert dti.fit is not None
    fit = dataclasses.replace(dti.fit, left_out=((3000.0, 30),), notes=("a warning",))
    write_derivatives(
        series,
        dti.maps(),
        tmp_path / "out",
        parameters={"bmax": 1500.0},
        fit=dataclasses.asdict(fit),
    )
    folder = tmp_path / "out" / "sub-01" / "dwi"
    fa = json.loads((folder / "sub-01_model-tensor_param-fa_dwimap.json").read_text())
    assert fa["FitMethod"] == "WLS" and fa["B0Volumes"] == 2
    assert fa["ShellsFitted"] == [{"BValue": 1000.0, "Volumes": 30}]
    assert fa["ShellsLeftOut"] == [{"BValue": 3000.0, "Volumes": 30}]
    assert fa["UnfittedVoxels"] == 0 and fa["Warnings"] == ["a warning"]
    assert "CoordinateFrame" not in fa
    tensor = json.loads((folder / "sub-01_model-tensor_param-tensor_dwimap.json").read_text())
    assert "FSL's convention" in tensor["CoordinateFrame"]


def validator() -> str:
    found = shutil.which("bids-validator-deno")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("bids-validator-deno is missing: it is in the test extra")
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    return found


def validate(derivatives: Path) -> list[tuple[str, str]]:
    """The validator's findings on ``derivatives`` but for the BEP016 names (``_dwimap``) its
    schema does not include yet, and the hint that the description lists fewer than two
    authors (the derivatives' authors are not ours to name): ``(code, location)``."""
    result = subprocess.run(
        [validator(), str(derivatives), "--json"], capture_output=True, text=True, timeout=300
    )
    issues = json.loads(result.stdout)["issues"]["issues"]
    assert any(i["code"] == "NOT_INCLUDED" and "_dwimap." in i["location"] for i in issues)
    return [
        (i["code"], i.get("location", ""))
        for i in issues
        if not (i["code"] == "NOT_INCLUDED" and "_dwimap." in i.get("location", ""))
        and i["code"] != "TOO_FEW_AUTHORS"
    ]


def test_the_bids_validator_finds_only_the_bep016_names(demo: Path) -> None:
    """Nothing but BEP016 names is reported, and ``.bidsignore`` names only the report's
    pages, the subjects' figures and the QC table: the group's figure and the options record
    pass on their names and folders alone (``docs/``, ``logs/``)."""
    out = demo / "derivatives"
    assert (out / GROUP_FIGURE).is_file() and (out / OPTIONS_FILE).is_file()
    ignored = [
        line for line in (out / ".bidsignore").read_text().splitlines() if line[:1] not in "#"
    ]
    assert ignored == ["/*.html", "sub-*/figures", "/group_*"]
    assert validate(out) == []


def test_the_old_names_of_the_group_figure_and_options_record_were_findings(
    demo: Path, tmp_path: Path
) -> None:
    """The names of earlier versions, under the same ``.bidsignore``: the validator reports
    them (so the test above would catch them coming back)."""
    out = tmp_path / "derivatives"
    shutil.copytree(demo / "derivatives", out, ignore=shutil.ignore_patterns(".kwneuro-cache"))
    (out / "figures").mkdir()
    (out / GROUP_FIGURE).rename(out / "figures" / "group_desc-distributions_dwi.png")
    (out / OPTIONS_FILE).rename(out / LEGACY_OPTIONS_FILE)
    found = set(validate(out))
    assert ("ENTITY_WITH_NO_LABEL", "/figures/group_desc-distributions_dwi.png") in found
    assert ("SIDECAR_WITHOUT_DATAFILE", "/kwneuro-pydra-options.json") in found


@pytest.mark.filterwarnings("default:estimate_dti:UserWarning")  # the worker's stay warnings
def test_shells_left_out_reach_the_console_from_a_worker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fit runs in a cf worker process: its Python warning stays there; the run says
    the shells left out anyway (and again when the fit is served from the cache)."""
    from kwneuro_pydra.workflows.phantom import write_phantom
    from tests.bids_data import MASK

    bids = tmp_path / "bids"
    folder = bids / "sub-01" / "dwi"
    folder.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "shells", "BIDSVersion": "1.10.0"})
    )
    write_phantom(
        *(folder / f"sub-01_dwi{s}" for s in (".nii.gz", ".bval", ".bvec")),
        shape=(16, 16, 10),
        shells=(1000.0, 3000.0),
        directions=12,
    )
    for _ in range(2):  # computed, then served from the cache
        code = main(
            ["run", str(bids), str(tmp_path / "out"), "participant", "--worker", "cf", *MASK]
        )
        assert code == 0
        said = capsys.readouterr()
        assert "sub-01: estimate_dti: fitting the tensor to b=1000" in said.out + said.err
        assert "leaving out 12 volumes of b=3000" in said.out + said.err

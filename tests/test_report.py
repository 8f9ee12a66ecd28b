"""The visual report: figures made by cached steps, pages that open cleanly in a real browser."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kwneuro_pydra import Cache
from kwneuro_pydra._files import UnsafeFileError
from kwneuro_pydra.cli import main
from kwneuro_pydra.report import (
    SeriesReport,
    SeriesStats,
    StepRecord,
    b0_mosaic,
    gradient_sphere,
    write_reports,
)
from kwneuro_pydra.resources import (
    Dwi,
    InMemoryBvalResource,
    InMemoryBvecResource,
    InMemoryVolumeResource,
)
from tests.bids_data import MASK, add_series, bare_dataset, good_dataset

_CHECK = """<script>
window.addEventListener("load", () => {
  const broken = [...document.images]
    .filter((image) => !(image.complete && image.naturalWidth > 0))
    .map((image) => image.getAttribute("src"));
  document.title = "CHECKED " + JSON.stringify(broken);
});
</script>"""


def chromium() -> str:
    """The Chromium executable; a skip without it, a failure under CI (which installs it)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run installs the Debian package chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return found


def open_in_chromium(page: Path) -> tuple[list[str], list[str]]:
    """Load ``page`` in headless Chromium; return its broken images and console messages.

    A copy of the page with a checking script goes beside it (so relative links resolve
    alike); the script writes the broken images into the title, which ``--dump-dom`` shows.
    """
    probe = page.with_name(f".check-{page.name}")
    probe.write_text(page.read_text().replace("</body>", _CHECK + "</body>"))
    try:
        result = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=10000",
                "--dump-dom",
                probe.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        probe.unlink()
    found = re.search(r"<title>CHECKED (.*?)</title>", result.stdout)
    assert found is not None, f"the page did not finish loading:\n{result.stderr[-2000:]}"
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(found.group(1).replace("&quot;", '"')), console


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a run over 2 good subjects and one that fails."""
    root = tmp_path_factory.mktemp("report")
    bids_dir = good_dataset(root / "bids", subjects=2)
    add_series(bids_dir, "sub-03", b0=False)
    code = main(
        ["run", str(bids_dir), str(root / "out"), "participant", "--worker", "debug", "-q", *MASK]
    )
    assert code == 1
    return root / "out"


@pytest.mark.slow
def test_pages_open_in_chromium_without_broken_images_or_console_errors(
    reported: Path,
) -> None:
    pages = ["report.html", "sub-01.html", "sub-02.html", "sub-03.html"]
    for page in pages:
        broken, console = open_in_chromium(reported / page)
        assert broken == [], page
        assert console == [], page
    group = (reported / "report.html").read_text()
    assert group.count("<img ") == 2 * 3 + 1  # two thumbnails per good series + distributions


@pytest.mark.slow
def test_the_browser_check_catches_a_broken_image_and_a_console_error(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text(
        '<html><body><img src="sub-01/figures/missing.png">'
        '<script>console.error("boom")</script></body></html>'
    )
    broken, console = open_in_chromium(page)
    assert broken == ["sub-01/figures/missing.png"]
    assert len(console) == 1 and '"boom"' in console[0]


def test_figures_are_relative_links_to_files_under_the_subject_folder(reported: Path) -> None:
    page = (reported / "sub-02.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 10  # two sessions x five figures
    for source in sources:
        assert source.startswith("sub-02/figures/sub-02_ses-")
        assert (reported / source).stat().st_nlink == 2  # linked to its cache entry


def test_the_report_shows_numbers_steps_and_failures(reported: Path) -> None:
    page = (reported / "sub-01.html").read_text()
    for text in (
        "Voxels in mask",
        "Median FA",
        "Median MD",
        "b=0 (2), b=1000 (30)",
        "estimate_dti</td><td>computed",
    ):
        assert text in page
    failed = (reported / "sub-03.html").read_text()
    assert "mean_b0</td><td>failed" in failed
    assert "md_mosaic</td><td>not run" in failed
    group = (reported / "report.html").read_text()
    assert "3 succeeded" in group and "1 failed" in group  # sub-02 has two sessions
    assert "mean_b0: no b=0 volume" in group


def test_a_failure_message_is_escaped_on_every_page(tmp_path: Path) -> None:
    """The message names the b-value file, under a folder whose name is markup."""
    bids_dir = bare_dataset(tmp_path / "R&D" / "<scan>")
    add_series(bids_dir, "sub-01", b0=False)
    out = tmp_path / "out"
    code = main(["run", str(bids_dir), str(out), "participant", "--worker", "debug", "-q", *MASK])
    assert code == 1
    pages = {page.name: page.read_text() for page in out.glob("*.html")}
    assert sorted(pages) == ["report.html", "sub-01.html"]
    for name, page in pages.items():
        assert "<scan>" not in page, name
        assert "R&amp;D/&lt;scan&gt;/sub-01/dwi/sub-01_dwi.bval" in page, name


def _series(subject: str, source: str, fa: float, ran: bool) -> SeriesReport:
    """A succeeded series of ``sub-<subject>`` whose fit noted something (no figures)."""
    stats = SeriesStats(
        100, 1.0, fa, 0.0008, (), (), ((0.0, 1), (1000.0, 6)), (), notes=("a note",)
    )
    steps = [StepRecord("estimate_dti", "computed", 1.0)] if ran else []
    return SeriesReport(f"sub-{subject}", subject, source, stats=stats, steps=steps)


def test_a_subject_page_is_rewritten_when_it_ran_or_shows_other_content_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def write(ran: set[str] | None, fa: float = 0.25) -> dict[str, tuple[int, int]]:
        reports = [
            _series("01", "sub-01/dwi/sub-01_dwi.nii.gz", 0.5, ran is None or "sub-01" in ran),
            _series("02", "sub-02/dwi/\u202esub-02_dwi.nii.gz", fa, ran is None),
        ]
        write_reports(tmp_path, reports, title="t", summary="s", ran=ran)
        pages = (tmp_path / "sub-01.html", tmp_path / "sub-02.html")
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in pages}

    first = write(None)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kwneuro_pydra.report"):
        second = write({"sub-01"})
    assert second["sub-01.html"] != first["sub-01.html"]
    assert second["sub-02.html"] == first["sub-02.html"]  # its bidi control escaped alike
    page = tmp_path / "sub-02.html"
    assert "estimate_dti</td><td>computed" in page.read_text()  # the steps its run did
    assert [r.getMessage() for r in caplog.records] == ["sub-01: a note"]  # this run's only
    assert write({"sub-01"}, fa=0.75)["sub-02.html"] != second["sub-02.html"]
    text = page.read_text()
    assert "0.750" in text and "estimate_dti" not in text  # no steps: it did not run
    # a page of another format (another digest, or none: version 0.2.0's) is rewritten
    for old in (re.sub('content="[0-9a-f]{12}', 'content="000000000000', text), "<html>"):
        page.write_text(old)
        write({"sub-01"}, fa=0.75)
        assert page.read_text() == text
    # a link there is refused (as a page is written), never kept, even to a copy of the page
    copy = tmp_path / "copy.html"
    copy.write_text(text)
    page.unlink()
    page.symlink_to(copy)
    with pytest.raises(UnsafeFileError):
        write({"sub-01"}, fa=0.75)


def _png_pixels(data: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return np.asarray(imread(io.BytesIO(data), format="png"))


def test_the_b0_mosaic_outlines_the_mask_in_red(tmp_path: Path) -> None:
    b0 = np.zeros((20, 20, 20), np.float32)
    b0[5:15, 5:15, 5:15] = 100.0
    mask = (b0 > 0).astype(np.uint8)
    affine = np.eye(4)
    with Cache(tmp_path):
        png = b0_mosaic(InMemoryVolumeResource(b0, affine), InMemoryVolumeResource(mask, affine))
        again = b0_mosaic(InMemoryVolumeResource(b0, affine), InMemoryVolumeResource(mask, affine))
    assert png.path == again.path  # the rerun is served from the cache
    pixels = _png_pixels(png.read())[..., :3]
    red = (pixels[..., 0] > 0.9) & (pixels[..., 1] < 0.3)
    white = pixels.min(axis=-1) > 0.9
    assert red.any() and white.any()
    assert pixels.shape[0] == 3 * (3 * 20) + 4 * 6  # three planes 3x (~64 px), 6 px gaps


def test_the_gradient_sphere_draws_a_multi_shell_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bvecs = rng.normal(size=(13, 3))
    bvecs /= np.linalg.norm(bvecs, axis=1, keepdims=True)
    bvecs[0] = 0
    bvals = np.array([0.0] + [1000.0] * 6 + [2000.0] * 6)
    dwi = Dwi(
        InMemoryVolumeResource(np.ones((2, 2, 2, 13), np.float32), np.eye(4)),
        InMemoryBvalResource(bvals),
        InMemoryBvecResource(bvecs),
    )
    pixels = _png_pixels(gradient_sphere(dwi).read())
    assert pixels.shape[:2] == (306, 324)

"""Names from a dataset cannot reorder what a report shows: bidirectional controls (U+202E,
right-to-left override, and the rest) are shown escaped, and links holding them still work."""

from __future__ import annotations

import re
from pathlib import Path

from kwneuro_pydra.report._html import SeriesReport, write_reports

BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def test_bidirectional_controls_are_shown_escaped_in_both_pages(tmp_path: Path) -> None:
    name = "sub-01_acq-\u202egnp.exe"  # reads as "sub-01_acq-exe.png" when shown raw
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"png")
    report = SeriesReport(
        name=name,
        subject="01",
        source=f"sub-01/dwi/{name}_dwi.nii.gz",
        failure=f"step failed on {name} \u2066x\u2069",
        figures={"b0": (figure, f"mean b0 of {name}")},
    )
    pages = write_reports(tmp_path, [report], title=f"Report {BIDI}", summary="x")
    assert len(pages) == 2
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert not any(c in text for c in BIDI), page.name
        assert "sub-01_acq-%E2%80%AEgnp.exe" in text, page.name
        for source in re.findall(r'src="([^"]+)"', text):  # the figure still resolves
            linked = tmp_path / source.replace("%E2%80%AE", "\u202e")
            assert linked.is_file(), source

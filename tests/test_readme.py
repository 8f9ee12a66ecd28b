"""The README's example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_eager_example_runs(tmp_path: Path) -> None:
    example = re.search(r"## Try the eager API\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert example is not None
    out = subprocess.run(
        [sys.executable, "-c", example.group(1)], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "argument 'scale' changed: 2.0 -> 3.0" in out.stdout
    assert len(list((tmp_path / "derivatives" / "sub-01" / "standardise").glob("[!.]*"))) == 1


def test_readme_has_exactly_the_two_setup_commands() -> None:
    setup = README.read_text().split("## Set up on a fresh machine")[1].split("\n## ")[0]
    assert re.findall(r"```bash\n(.*?)\n```", setup, re.S) == [
        'python -m pip install -e ".[pydra]" && kwneuro-pydra demo demo-output',
        'python -m pip install -e ".[dev]" && python -m pytest',
    ]


def test_readme_shows_the_report_screenshot() -> None:
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text())
    assert "docs/_static/report.png" in images
    png = README.parent / "docs" / "_static" / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

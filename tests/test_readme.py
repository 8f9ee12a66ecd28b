"""The README's example runs as written."""

from __future__ import annotations

import os
import re
import shutil
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


def test_readme_demo_runs_twice_in_a_row_and_after_deleting_its_output(tmp_path: Path) -> None:
    """The first setup command's demo, as written (the package is installed), in a fresh
    folder: it succeeds, again (every step reused), and again after ``rm -rf`` of its output."""
    setup = README.read_text().split("## Set up on a fresh machine")[1]
    command = re.findall(r"```bash\n(.*?)\n```", setup, re.S)[0].split(" && ")[1]
    assert command == "kwneuro-pydra demo demo-output"
    env = {
        **os.environ,
        "COLUMNS": "200",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }

    def demo() -> str:
        done = subprocess.run(
            command, shell=True, cwd=tmp_path, capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "6 series succeeded, 0 failed." in done.stdout and done.stderr == ""
        return next(line for line in done.stdout.splitlines() if "estimate_dti" in line)

    assert demo().split("│")[2:4] == ["        6 ", "      0 "]  # computed, reused
    assert demo().split("│")[2:4] == ["        0 ", "      6 "]
    shutil.rmtree(tmp_path / "demo-output")
    assert demo().split("│")[2:4] == ["        6 ", "      0 "]

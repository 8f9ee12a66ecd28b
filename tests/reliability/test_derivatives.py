"""Derivatives in OUTPUT_DIR: an image never sits beside another run's sidecar, whenever the
writer is killed; temporary links killed runs leave are removed by ``prune``."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kwneuro_pydra.bids._derivatives
from kwneuro_pydra import Cache
from kwneuro_pydra.bids import DERIVATIVES, DwiSeries, derivative_path, write_derivatives
from kwneuro_pydra.cli import main
from tests.reliability import _steps
from tests.reliability._system import ROOT

_WRITER = """
import sys
from pathlib import Path
from kwneuro_pydra import Cache
from kwneuro_pydra.bids import DwiSeries, write_derivatives
class Output:
    def __init__(self, path): self.path = path
root, out, sources = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
series = DwiSeries(root, {"sub": "01"}, root / "sub-01/dwi/sub-01_dwi.nii.gz", None, None)
print("ready", flush=True)
for turn in range(10**9):
    run = "ab"[turn % 2]
    outputs = {o.name.split(".")[0]: Output(o) for o in (sources / run).iterdir()}
    write_derivatives(series, outputs, out, parameters={"run": run})
"""


def _sources(folder: Path) -> None:
    """Per run ``a`` and ``b``: one file per derivative whose content names the run."""
    for run in "ab":
        (folder / run).mkdir(parents=True)
        for row in DERIVATIVES:
            (folder / run / f"{row.output}.nii.gz").write_text(f"run {run}")


def test_an_image_never_sits_beside_another_runs_sidecar_whenever_the_writer_is_killed(
    tmp_path: Path,
) -> None:
    root, out, sources = tmp_path / "bids", tmp_path / "out", tmp_path / "sources"
    _sources(sources)
    series = DwiSeries(root, {"sub": "01"}, root / "sub-01/dwi/sub-01_dwi.nii.gz", None, None)
    rng = random.Random(18)
    disagreements = []
    command = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{_WRITER}"]
    for kill in range(25):
        with subprocess.Popen(
            [*command, str(root), str(out), str(sources)], stdout=subprocess.PIPE, text=True
        ) as child:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.001, 0.05))
            child.kill()
        for row in DERIVATIVES:
            image = derivative_path(series, out, row.output)
            sidecar = image.with_name(image.name.removesuffix(".nii.gz") + ".json")
            if image.exists() and sidecar.exists():
                run = json.loads(sidecar.read_text())["Parameters"]["run"]
                if image.read_text() != f"run {run}":
                    disagreements.append((kill, row.output, image.read_text(), run))
    assert not disagreements, disagreements[:5]
    # The next run puts every image back.
    outputs = {row.output: _Output(sources / "a" / f"{row.output}.nii.gz") for row in DERIVATIVES}
    assert len(write_derivatives(series, outputs, out, parameters={"run": "a"})) == len(
        DERIVATIVES
    )


class _Output:
    def __init__(self, path: Path) -> None:
        self.path = path


def test_prune_removes_temporary_links_killed_runs_left_in_output_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    (out / "sub-01" / "dwi").mkdir(parents=True)
    (out / "dataset_description.json").write_text("{}")
    with Cache(out / ".kwneuro-cache" / "sub-01") as cache:
        _steps.rl_square(3)
    (stored,) = cache.entries("rl_square")
    entry = stored.path / "out.npy"
    image = out / "sub-01" / "dwi" / "sub-01_desc-brain_mask.nii.gz"
    os.link(entry, image)
    left = [
        out / "sub-01" / "dwi" / f".{image.name}.{'0123456789abcdef'}.tmp",
        out / "sub-01" / "dwi" / f".{image.name}.{'ab' * 16}.tmp",
        out / f".report.html.{'fedcba9876543210'}.tmp",
    ]
    for path in left:
        os.link(entry, path)
    kept = [image, out / "sub-01" / "dwi" / ".notes.tmp", entry]
    kept[1].write_text("the user's")
    assert main(["prune", str(out)]) == 0
    assert all(path.exists() for path in left), "an hour's grace: a running writer's links"
    monkeypatch.setattr(kwneuro_pydra.bids._derivatives, "TEMPORARY_AGE", 0.0, raising=False)
    time.sleep(0.01)
    assert main(["prune", str(out / ".kwneuro-cache"), "--dry-run"]) == 0
    assert all(path.exists() for path in left)
    assert main(["prune", str(out)]) == 0
    printed = capsys.readouterr().out
    assert not any(path.exists() for path in left), printed
    assert all(path.exists() for path in kept)
    assert all(str(path) in printed for path in left)

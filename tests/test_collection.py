"""Collecting the tests installs nothing and imports only what the project's extras install.

Runs ``pytest --collect-only`` over the whole suite in a fresh interpreter whose ``pip``,
``joblib`` and ``kwneuro`` are stand-ins (first on ``PYTHONPATH``) that fail to import, as if
missing. ``pip`` and ``joblib`` leave a mark: ``pip`` would be a network install (the benchmark
peers once installed upstream kwneuro into ``benchmarks/.peers`` at import); ``joblib`` is only
in the ``bench`` extra (dipy probes for it, as an optional package: only the repository's own
imports of it count). ``kwneuro`` is the ``kwneuro`` extra's: without it (the ``test`` extra
alone, ``CI`` unset) its tests and its pipeline's doctests are skipped, and collection still
succeeds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_STAND_IN = """\
import traceback
from pathlib import Path

frames = [f.filename for f in traceback.extract_stack()[:-1]]
importer = next(f for f in reversed(frames) if "importlib" not in f and not f.startswith("<"))
if {anyone} or (importer.startswith({repo!r}) and "site-packages" not in importer):
    Path({mark!r}).write_text(importer)
raise ModuleNotFoundError("{name} is a stand-in of tests/test_collection.py")
"""


def test_collection_installs_and_imports_no_peer(tmp_path: Path) -> None:
    shims, marks = tmp_path / "shims", tmp_path / "marks"
    marks.mkdir()
    for name in ("pip", "joblib", "kwneuro"):
        (shims / name).mkdir(parents=True)
        anyone = name == "pip"
        mark = marks / name if name != "kwneuro" else tmp_path / "kwneuro-imported"
        stand_in = _STAND_IN.format(mark=str(mark), name=name, anyone=anyone, repo=str(REPO))
        (shims / name / "__init__.py").write_text(stand_in)
        (shims / name / "__main__.py").write_text(stand_in)
    env = dict(os.environ, PIP_NO_INDEX="1", NO_ET="1")
    env.pop("CI", None)  # under CI a missing kwneuro fails its tests, as it should
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shims), env.get("PYTHONPATH")]))
    before = sorted(p.name for p in (REPO / "benchmarks").iterdir())
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"collection failed:\n{done.stdout[-4000:]}\n{done.stderr}"
    assert " error" not in done.stdout.splitlines()[-1], done.stdout[-4000:]
    imported = {p.name: p.read_text() for p in marks.iterdir()}
    assert imported == {}, "collection imported a peer (name: importer)"
    assert sorted(p.name for p in (REPO / "benchmarks").iterdir()) == before
    assert "tests/test_collection.py::test_collection_installs_and_imports_no_peer" in done.stdout

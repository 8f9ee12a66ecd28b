"""The benchmarks never rot: every case runs at tiny size and prints its table.

Runs ``python -m benchmarks.run --smoke`` in a subprocess from the repository root. No timing
is asserted: smoke figures mean nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("joblib", reason="the benchmarks compare with joblib.Memory")


def _cases() -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--list"],
        cwd=REPO, capture_output=True, text=True, check=True, env=_env(),
    )  # fmt: skip
    return done.stdout.split()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("NO_ET", "1")
    return env


def test_every_case_prints_its_table(tmp_path: Path) -> None:
    cases = _cases()
    assert cases, "no benchmark case is registered"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--workdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=_env(),
    )  # fmt: skip
    assert done.returncode == 0, f"smoke run failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    for name in cases:
        assert f"### {name}: " in done.stdout, f"case {name} printed no table:\n{done.stderr}"
        table = done.stdout.split(f"### {name}: ", 1)[1]
        assert "| --- |" in table.split("###", 1)[0], f"case {name} printed an empty table"
    assert list(tmp_path.iterdir()) == [], "the smoke run left scratch files behind"

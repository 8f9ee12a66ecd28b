"""The benchmarks never rot: their cases run at tiny size and print their tables.

Runs ``python -m benchmarks.run --smoke`` in a subprocess from the repository root. No timing
is asserted: smoke figures mean nothing. The default run takes one fast case of each case
module (seconds); every case, Slurm's included, runs under the ``bench`` marker
(``pytest -m bench``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("joblib") is None,
    reason="the benchmarks compare with joblib.Memory (the bench extra)",
)

FAST = ("hit-scalars", "nifti-gz-io", "pydra-rerun", "dti-mask", "bids-index")
"""One case of each case module but Slurm's and the profile's, each well under a second."""


def _cases() -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--list"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env=_env(),
    )
    return done.stdout.split()


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("NO_ET", "1")
    return env


def _check_smoke_run(cases: list[str], workdir: Path, env: dict[str, str]) -> None:
    only = [arg for name in cases for arg in ("--only", name)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--workdir", str(workdir), *only],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, f"smoke run failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    for name in cases:
        assert f"### {name}: " in done.stdout, f"case {name} printed no table:\n{done.stderr}"
        table = done.stdout.split(f"### {name}: ", 1)[1]
        assert "| --- |" in table.split("###", 1)[0], f"case {name} printed an empty table"
    assert list(workdir.iterdir()) == [], "the smoke run left scratch files behind"


def test_fast_cases_print_their_tables(tmp_path: Path) -> None:
    assert set(FAST) <= set(_cases()), "a case of FAST is no longer registered"
    # Nothing installed: upstream kwneuro takes part only if it is already (else left out).
    _check_smoke_run(list(FAST), tmp_path, _env(KWNEURO_BENCH_NO_INSTALL="1"))


@pytest.mark.bench
def test_every_case_prints_its_table(tmp_path: Path) -> None:
    cases = _cases()
    assert cases, "no benchmark case is registered"
    _check_smoke_run(cases, tmp_path, _env())

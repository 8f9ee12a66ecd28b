"""Helpers of the Pydra tests: fresh interpreters, and the jobs Pydra ran."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python(code: str, env: dict[str, str], cwd: Path) -> str:
    """Run ``code`` (dedented) in a fresh interpreter; return its stdout, asserting success."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without Pydra's settings, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYDRA_HASH_CACHE", "NO_ET")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def jobs_run(jobs: Path) -> list[str]:
    """Names of Pydra's job directories in a job cache: each node or workflow run leaves one
    in the directory of its run (``run-*``, kept until the next run)."""
    if not jobs.exists():
        return []
    runs = [p for p in jobs.iterdir() if p.is_dir() and p.name.startswith("run-")]
    return sorted(job.name for run in runs for job in run.iterdir() if job.is_dir())

"""Running Python code in fresh interpreters for the Pydra tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python(code: str, env: dict[str, str], cwd: Path) -> str:
    """Run ``code`` (dedented) in a fresh interpreter; return its stdout, asserting success."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without Pydra's settings, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYDRA_HASH_CACHE", "NO_ET")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env

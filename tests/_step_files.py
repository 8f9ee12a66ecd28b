"""Steps written to files at test time: edited, imported, and run in fresh interpreters."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def import_file(path: Path, name: str) -> ModuleType:
    """Import ``path`` as module ``name`` without writing bytecode (sources get edited)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    prior, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = prior
    return module


def fresh_python(code: str, *paths: Path) -> str:
    """Run ``code`` in a fresh interpreter (no bytecode cache) and return its stdout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, paths), str(ROOT / "src")]))
    done = subprocess.run(
        [sys.executable, "-B", "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.strip()


_STEP_MODULE = """
from kwneuro_pydra import CacheSpec, cacheable
import json

SPEC = CacheSpec(
    files=["v.json"],
    save=lambda r, d: (d / "v.json").write_text(json.dumps(r)),
    load=lambda d: json.loads((d / "v.json").read_text()),
)
{extra}
{decorators}
def scaled(x: int) -> int:
    return {body}
"""


def step_module(directory: Path, name: str, **parts: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    fields = {"extra": "", "decorators": "@cacheable(SPEC)", "body": "x * 2"} | parts
    path = directory / f"{name}.py"
    path.write_text(_STEP_MODULE.format(**fields))
    return path

"""Install and load what the benchmarks compare: ours and the peers.

- **ours**: ``kwneuro_pydra``, installed or else straight from the repository's ``src/``.
- **upstream kwneuro 1.0**: an installed ``kwneuro`` if there is one, else installed with
  ``pip --no-deps`` into ``benchmarks/.peers/kwneuro`` (once, on first use), and only its
  ``kwneuro/cache.py`` is loaded: the package's ``__init__`` needs ANTs and dipy, the cache
  module needs only numpy and the standard library.
- **joblib.Memory**: an ordinary dependency of the benchmark environment, imported on first use.

Importing this module installs and imports nothing: the tests load upstream's cache module
through :func:`upstream` with ``install=False``.

A participant that cannot be loaded raises :class:`Unavailable`; the runner then leaves its rows
out and says why, instead of failing the whole run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import joblib  # type: ignore[import-untyped]

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SRC_DIR = REPO_DIR / "src"
PEERS_DIR = BENCH_DIR / ".peers"

KWNEURO_VERSION = "1.0.0"
_KWNEURO_TARGET = PEERS_DIR / "kwneuro"
_KWNEURO_CACHE_PY = _KWNEURO_TARGET / "kwneuro" / "cache.py"
_KWNEURO_DIST_INFO = _KWNEURO_TARGET / f"kwneuro-{KWNEURO_VERSION}.dist-info"


class Unavailable(RuntimeError):
    """A participant of the benchmark could not be installed or imported."""


@cache
def ours() -> ModuleType:
    """Import ``kwneuro_pydra``: the installed one, or else the repository's ``src/`` one."""
    if str(SRC_DIR) not in sys.path and importlib.util.find_spec("kwneuro_pydra") is None:
        sys.path.insert(0, str(SRC_DIR))
    try:
        return importlib.import_module("kwneuro_pydra")
    except Exception as exc:
        raise Unavailable(f"ours: kwneuro_pydra not importable ({exc!r})") from exc


def child_env() -> dict[str, str]:
    """Environment for a child Python process that must import the same ``kwneuro_pydra``."""
    module_file = ours().__file__
    assert module_file is not None
    package_root = str(Path(module_file).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


NO_INSTALL = "KWNEURO_BENCH_NO_INSTALL"
"""Environment variable: when ``1``, upstream kwneuro is never installed (the fast smoke test)."""


@cache
def upstream(*, install: bool | None = None) -> ModuleType:
    """Upstream kwneuro 1.0's ``cache`` module, loaded on its own (without ``kwneuro/__init__``).

    Args:
        install: whether to ``pip install`` kwneuro into ``benchmarks/.peers`` when neither an
            installed ``kwneuro`` nor an earlier install there is found; None: unless
            `NO_INSTALL` is set to ``1``.

    Returns:
        The module, registered in ``sys.modules`` as ``kwneuro_upstream_cache``.

    Raises:
        Unavailable: kwneuro is not found (and *install* is false), cannot be installed, or its
            ``cache.py`` fails to load.
    """
    cache_py = _installed_cache_py()
    if cache_py is None:
        if not (_KWNEURO_CACHE_PY.is_file() and _KWNEURO_DIST_INFO.is_dir()):
            if not (install if install is not None else os.environ.get(NO_INSTALL) != "1"):
                raise Unavailable(f"upstream: kwneuro is not installed (nor in {PEERS_DIR})")
            _install_kwneuro()
        cache_py = _KWNEURO_CACHE_PY
    name = "kwneuro_upstream_cache"
    spec = importlib.util.spec_from_file_location(name, cache_py)
    if spec is None or spec.loader is None:
        raise Unavailable(f"upstream: cannot load {cache_py}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise Unavailable(f"upstream: {cache_py} failed to load ({exc!r})") from exc
    return module


def _installed_cache_py() -> Path | None:
    """``kwneuro/cache.py`` of an installed kwneuro 1.0.x, found without importing the package."""
    try:
        if not importlib.metadata.version("kwneuro").startswith("1.0."):
            return None
    except importlib.metadata.PackageNotFoundError:
        return None
    spec = importlib.util.find_spec("kwneuro")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(folder) / "cache.py").is_file():
            return Path(folder) / "cache.py"
    return None


def _install_kwneuro() -> None:
    """``pip install --no-deps kwneuro==1.0.0`` aside, then move it into place in one rename."""
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="kwneuro-", dir=PEERS_DIR))
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--target",
        str(staging),
        f"kwneuro=={KWNEURO_VERSION}",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise Unavailable(f"upstream: `{' '.join(command)}` failed: {done.stderr.strip()}")
        shutil.rmtree(_KWNEURO_TARGET, ignore_errors=True)
        try:
            staging.rename(_KWNEURO_TARGET)
        except OSError:
            if not _KWNEURO_CACHE_PY.is_file():  # not a concurrent installer that won: a failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def joblib_memory(location: Path) -> joblib.Memory:
    """A quiet ``joblib.Memory`` storing under *location*."""
    import joblib  # only the benchmarks need it

    return joblib.Memory(location, verbose=0)

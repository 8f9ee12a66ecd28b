"""The package's layers talk through each other's public names only.

Each subpackage (`resources`, `pydra`, `bids`, `report`, `workflows`, `app`, `cli`) exports
what the others use through its ``__init__``'s sorted ``__all__``; a module never imports a
private module (or a private name) of another subpackage, so a subpackage's private modules
can be reorganised without breaking its neighbours.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import kwneuro_pydra

SRC = Path(kwneuro_pydra.__file__).parent
SUBPACKAGES = sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").is_file())


def _crossings(source: str, own: str | None) -> list[str]:
    """``line: module`` of each import in ``source``, a module of subpackage ``own`` (None:
    the core), of another subpackage's private module or name.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom) or not node.module:
            continue
        parts = node.module.split(".")
        if parts[0] != "kwneuro_pydra" or len(parts) < 2 or parts[1] == own:
            continue
        if parts[1] not in SUBPACKAGES:
            continue
        private = [a.name for a in node.names if a.name.startswith("_")]
        if any(p.startswith("_") for p in parts[2:]) or private:
            found.append(f"{node.lineno}: {node.module} {' '.join(private)}".rstrip())
    return found


def _subpackage(path: Path) -> str | None:
    """The subpackage ``path`` belongs to; None for the core modules."""
    return path.relative_to(SRC).parts[0] if path.parent != SRC else None


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's ``__all__`` order (RUF022): constants, then classes, then the rest."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def test_the_subpackages_are_found() -> None:
    assert {"app", "bids", "cli", "pydra", "report", "resources", "workflows"} <= set(SUBPACKAGES)


def test_no_module_imports_another_subpackages_private_names() -> None:
    crossings = {
        str(path.relative_to(SRC)): found
        for path in sorted(SRC.rglob("*.py"))
        if (found := _crossings(path.read_text(encoding="utf-8"), _subpackage(path)))
    }
    assert crossings == {}


def test_the_check_sees_a_private_import() -> None:
    line = "from kwneuro_pydra.pydra._slurm import recorded_jobs\n"
    assert _crossings(line, "app") == ["1: kwneuro_pydra.pydra._slurm"]
    assert _crossings(line, None) == ["1: kwneuro_pydra.pydra._slurm"]  # the core too
    assert _crossings(line, "pydra") == []  # its own subpackage
    line = "import os\nfrom kwneuro_pydra.pydra import _failures, run_subjects\n"
    assert _crossings(line, "app") == ["2: kwneuro_pydra.pydra _failures"]
    assert _crossings("from kwneuro_pydra._files import write_new\n", "app") == []  # core


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_each_subpackage_exports_a_sorted_all_of_names_it_has(name: str) -> None:
    module = importlib.import_module(f"kwneuro_pydra.{name}")
    exported = module.__all__
    assert exported == sorted(exported, key=_isort_key)
    assert [n for n in exported if not hasattr(module, n)] == []

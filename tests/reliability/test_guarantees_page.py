"""The Guarantees page names only tests that exist, and all tests of the files it cites."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "guarantees.md"
REFERENCE = re.compile(r"`([\w/]+\.py)::(\w+)`")


def _tests_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_every_test_the_page_names_exists() -> None:
    references = REFERENCE.findall(PAGE.read_text(encoding="utf-8"))
    assert len(references) > 20
    missing = [
        f"{file}::{name}"
        for file, name in references
        if name not in _tests_of(ROOT / "tests" / file)
    ]
    assert not missing, f"docs/guarantees.md names tests that do not exist: {missing}"


def test_every_test_of_a_reliability_file_the_page_cites_pins_a_promise() -> None:
    """A reliability test file the page cites has all its tests on the page (files of other
    parts of the tree join when their rows are added)."""
    references = REFERENCE.findall(PAGE.read_text(encoding="utf-8"))
    named = {f"{file}::{name}" for file, name in references}
    cited = {file for file, _ in references if file.startswith("reliability/")}
    unnamed = [
        f"{file}::{name}"
        for file in sorted(cited)
        for name in sorted(_tests_of(ROOT / "tests" / file))
        if name.startswith("test_") and f"{file}::{name}" not in named
    ]
    assert not unnamed, f"reliability tests missing from docs/guarantees.md: {unnamed}"

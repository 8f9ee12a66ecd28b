"""The Guarantees page names only tests that exist, and names every reliability test."""

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


def test_every_reliability_test_pins_a_promise_of_the_page() -> None:
    named = {f"{file}::{name}" for file, name in REFERENCE.findall(PAGE.read_text("utf-8"))}
    here = Path(__file__).parent
    unnamed = [
        f"reliability/{path.name}::{name}"
        for path in sorted(here.glob("test_*.py"))
        if path.name != Path(__file__).name
        for name in sorted(_tests_of(path))
        if name.startswith("test_") and f"reliability/{path.name}::{name}" not in named
    ]
    assert not unnamed, f"reliability tests missing from docs/guarantees.md: {unnamed}"

"""Shared fixtures."""

from __future__ import annotations

import os

import pytest

from kwneuro_pydra import _filedigest

os.environ.setdefault("NO_ET", "1")


@pytest.fixture
def short_racy_window(monkeypatch: pytest.MonkeyPatch) -> float:
    """Shrink the racy window so tests can age a file in 0.1 s; return that delay."""
    monkeypatch.setattr(_filedigest, "RACY_WINDOW_NS", 50_000_000)
    return 0.1

"""Shared fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from kwneuro_pydra import _filedigest

os.environ.setdefault("NO_ET", "1")


@pytest.fixture
def short_racy_window(monkeypatch: pytest.MonkeyPatch) -> float:
    """Shrink the racy window so tests can age a file in 0.1 s; return that delay."""
    monkeypatch.setattr(_filedigest, "RACY_WINDOW_NS", 50_000_000)
    return 0.1


@pytest.fixture(autouse=True, scope="session")
def _job_caches_outside_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Pydra's job caches default to ``$XDG_CACHE_HOME``: a temporary one, never ``$HOME``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield

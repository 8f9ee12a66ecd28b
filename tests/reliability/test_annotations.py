"""Annotations that exist only for type checkers (issue 11, item 12).

A parameter annotated with a name imported under ``if TYPE_CHECKING:`` made a bare step raise
`TypeError` on every call inside a cache and `to_task` refuse it: every annotation was
evaluated at once. Only the return annotation of a bare step must resolve (the reference
page); any other annotation that cannot be evaluated counts as absent (the Pydra adapter
types its input ``Any``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from kwneuro_pydra import Cache, cacheable
from tests._pydra_steps import json_spec

if TYPE_CHECKING:
    from nibabel.nifti1 import Nifti1Header  # only for type checkers: unbound at run time

CALLS: list[str] = []


class Note:
    """A text result with the cache protocol."""

    def __init__(self, text: str) -> None:
        self.text = text

    @classmethod
    def _cache_files(cls, step_name: str) -> list[str]:
        return [f"{step_name}.txt"]

    def _cache_save(self, cache_dir: Path, step_name: str) -> None:
        (cache_dir / f"{step_name}.txt").write_text(self.text)

    @classmethod
    def _cache_load(cls, cache_dir: Path, step_name: str) -> Note:
        return cls((cache_dir / f"{step_name}.txt").read_text())


@cacheable
def describe(header: Nifti1Header | None, scale: float = 1.0) -> Note:
    """A bare step with a parameter typed only for type checkers."""
    CALLS.append("describe")
    return Note(f"{header is None} {scale!r}")


@cacheable(json_spec("scaled"))
def scaled(header: Nifti1Header | None, scale: float) -> Nifti1Header:
    """A CacheSpec step whose return annotation is for type checkers only too."""
    CALLS.append("scaled")
    return scale * 2  # type: ignore[return-value]


@cacheable
def unresolvable() -> Nifti1Header:  # type: ignore[empty-body]
    """A bare step whose return annotation cannot resolve: it can never store a result."""


@pytest.fixture(autouse=True)
def _no_calls() -> None:
    CALLS.clear()


def test_a_bare_step_with_a_type_checking_only_parameter_is_cached(tmp_path: Path) -> None:
    assert "Nifti1Header" not in globals()
    with Cache(tmp_path):
        first = describe(None, 2.0)
        second = describe(None, scale=2.0)
    assert first.text == second.text == "True 2.0"
    assert CALLS == ["describe"]


def test_resolvable_parameters_beside_it_are_still_normalised(tmp_path: Path) -> None:
    with Cache(tmp_path):
        assert scaled(None, 3) == scaled(None, 3.0) == 6.0  # 3 for a float is 3.0, one entry
        assert describe(None, 3).text == describe(None, 3.0).text
    assert CALLS == ["scaled", "describe"]


def test_a_bare_step_whose_return_annotation_cannot_resolve_still_raises(tmp_path: Path) -> None:
    assert unresolvable() is None  # outside a cache it runs as if undecorated
    with Cache(tmp_path), pytest.raises(TypeError, match=r"unresolvable.*cannot be resolved"):
        unresolvable()
    assert not any(tmp_path.iterdir())


def test_to_task_types_such_parameters_any_and_runs_the_node(tmp_path: Path) -> None:
    pytest.importorskip("pydra")
    from pydra.engine.submitter import Submitter  # type: ignore[import-untyped]
    from pydra.utils.general import get_fields  # type: ignore[import-untyped]

    from kwneuro_pydra.pydra import to_task

    task = to_task(describe)
    inputs = {f.name: f.type for f in get_fields(task)}
    assert inputs["header"] is Any
    assert inputs["scale"] is float
    assert [f.type for f in get_fields(to_task(scaled).Outputs)] == [Any]
    with Submitter(cache_root=tmp_path / "pydra", worker="debug") as submitter:
        result = submitter(task(header=None, scale=3, cache_dir=str(tmp_path / "cache")))
    assert not result.errored, result.errors
    assert result.outputs.out.text == "True 3.0"
    with Cache(tmp_path / "cache"):  # the node's entry serves the eager call
        assert describe(None, 3.0).text == "True 3.0"
    assert CALLS == ["describe"]

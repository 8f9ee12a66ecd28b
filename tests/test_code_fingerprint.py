"""A step's code fingerprint is of the code that runs: edits, closures, decorators, modules.

Each test shows one way a hit could serve a result of other code; each failed before the fix
it pins.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kwneuro_pydra import Cache, cacheable
from tests._pydra_steps import json_spec
from tests._step_files import fresh_python, import_file, step_module


def test_code_fingerprint_is_of_running_code_not_of_edited_file(tmp_path: Path) -> None:
    path = step_module(tmp_path / "mod", "rv_stale", body="x * 2")
    module = import_file(path, "rv_stale")
    step_module(tmp_path / "mod", "rv_stale", body="x * 300")  # edited; not reloaded
    with Cache(tmp_path / "cache"):
        assert module.scaled(5) == 10  # the old code runs (a notebook kernel, a long job)
    fresh = fresh_python(
        f"""
        import rv_stale
        from kwneuro_pydra import Cache
        with Cache({str(tmp_path / "cache")!r}):
            print(rv_stale.scaled(5))
        """,
        tmp_path / "mod",
    )
    assert fresh == "1500"  # the new code must not be served the old code's result


def test_closure_values_enter_the_key(tmp_path: Path) -> None:
    def make_scaler(k: int) -> Callable[[int], int]:
        @cacheable(json_spec("scale"))
        def scale(x: int) -> int:
            return x * k

        return scale

    double, triple = make_scaler(2), make_scaler(3)
    with Cache(tmp_path):
        assert double(5) == 10
        assert triple(5) == 15


def test_other_decorators_enter_the_code_fingerprint(tmp_path: Path) -> None:
    extra = """
import functools
def times(k):
    def decorate(fn):
        @functools.wraps(fn)
        def inner(x):
            return fn(x) * k
        return inner
    return decorate
"""
    cache = str(tmp_path / "cache")
    run = f"""
        import rv_deco
        from kwneuro_pydra import Cache
        with Cache({cache!r}):
            print(rv_deco.scaled(5))
        """
    step_module(tmp_path / "m", "rv_deco", extra=extra, decorators="@cacheable(SPEC)\n@times(2)")
    assert fresh_python(run, tmp_path / "m") == "20"
    step_module(tmp_path / "m", "rv_deco", extra=extra, decorators="@cacheable(SPEC)\n@times(30)")
    assert fresh_python(run, tmp_path / "m") == "300"


def test_same_named_steps_of_two_modules_do_not_share_entries(tmp_path: Path) -> None:
    helper = "def _kernel(x):\n    return x * {k}\n"
    a = import_file(
        step_module(tmp_path / "a", "rv_twin_a", extra=helper.format(k=2), body="_kernel(x)"),
        "rv_twin_a",
    )
    b = import_file(
        step_module(tmp_path / "b", "rv_twin_b", extra=helper.format(k=3), body="_kernel(x)"),
        "rv_twin_b",
    )
    with Cache(tmp_path / "cache"):
        assert a.scaled(5) == 10
        assert b.scaled(5) == 15

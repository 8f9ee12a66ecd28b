"""Adversarial review: each test shows one way a hit could serve a result it should not.

Every test here failed before the fix it pins (code fingerprints, keys, fingerprint type
confusion, entries replaced under readers, inputs changed under writers, Pydra's job cache).
"""

from __future__ import annotations

import collections
import enum
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from kwneuro_pydra import Cache, CacheSpec, cacheable, fingerprint

ROOT = Path(__file__).resolve().parents[1]


def _text_spec(name: str) -> CacheSpec[Any]:
    return CacheSpec(
        files=[f"{name}.json"],
        save=lambda r, d: (d / f"{name}.json").write_text(json.dumps(r)),
        load=lambda d: json.loads((d / f"{name}.json").read_text()),
    )


def _import_file(path: Path, name: str) -> ModuleType:
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


def _python(code: str, *paths: Path) -> str:
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


def _step_module(directory: Path, name: str, **parts: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    fields = {"extra": "", "decorators": "@cacheable(SPEC)", "body": "x * 2"} | parts
    path = directory / f"{name}.py"
    path.write_text(_STEP_MODULE.format(**fields))
    return path


# --- 1. code fingerprint -----------------------------------------------------------------------


def test_code_fingerprint_is_of_running_code_not_of_edited_file(tmp_path: Path) -> None:
    path = _step_module(tmp_path / "mod", "rv_stale", body="x * 2")
    module = _import_file(path, "rv_stale")
    _step_module(tmp_path / "mod", "rv_stale", body="x * 300")  # edited; not reloaded
    with Cache(tmp_path / "cache"):
        assert module.scaled(5) == 10  # the old code runs (a notebook kernel, a long job)
    fresh = _python(
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
        @cacheable(_text_spec("scale"))
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
    _step_module(tmp_path / "m", "rv_deco", extra=extra, decorators="@cacheable(SPEC)\n@times(2)")
    assert _python(run, tmp_path / "m") == "20"
    _step_module(tmp_path / "m", "rv_deco", extra=extra, decorators="@cacheable(SPEC)\n@times(30)")
    assert _python(run, tmp_path / "m") == "300"


def test_same_named_steps_of_two_modules_do_not_share_entries(tmp_path: Path) -> None:
    helper = "def _kernel(x):\n    return x * {k}\n"
    a = _import_file(
        _step_module(tmp_path / "a", "rv_twin_a", extra=helper.format(k=2), body="_kernel(x)"),
        "rv_twin_a",
    )
    b = _import_file(
        _step_module(tmp_path / "b", "rv_twin_b", extra=helper.format(k=3), body="_kernel(x)"),
        "rv_twin_b",
    )
    with Cache(tmp_path / "cache"):
        assert a.scaled(5) == 10
        assert b.scaled(5) == 15


# --- 2. entries replaced under readers, inputs changed under writers ----------------------------

_VOLUME_MODULE = """
import numpy as np
from kwneuro_pydra import cacheable
from kwneuro_pydra.resources import InMemoryVolumeResource, VolumeResource

@cacheable
def make(n: int) -> VolumeResource:
    return InMemoryVolumeResource(np.full((n, n, n), {value}, dtype=np.int16))
"""


def test_a_returned_result_keeps_its_content_when_other_code_replaces_the_entry(
    tmp_path: Path,
) -> None:
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.mkdir(), v2.mkdir()
    (v1 / "rv_lazy.py").write_text(_VOLUME_MODULE.format(value=1))
    (v2 / "rv_lazy.py").write_text(_VOLUME_MODULE.format(value=2))
    module = _import_file(v1 / "rv_lazy.py", "rv_lazy")
    cache = tmp_path / "cache"
    with Cache(cache):
        result = module.make(3)  # a file-backed, lazy volume (v1's output)
    _python(  # another process (a job of a newer checkout) shares the cache directory
        f"""
        import rv_lazy
        from kwneuro_pydra import Cache
        with Cache({str(cache)!r}):
            rv_lazy.make(3)
        """,
        v2,
    )
    assert int(result.get_array()[0, 0, 0]) == 1


_DURING: list[Callable[[], None]] = []


@cacheable(_text_spec("rv_read_late"))
def rv_read_late(path: Path) -> str:
    for hook in _DURING:
        hook()
    return path.read_text()


def test_an_input_changed_while_the_step_runs_does_not_poison_its_entry(tmp_path: Path) -> None:
    data = tmp_path / "input.txt"
    data.write_text("AAAA")

    def other_process_rewrites() -> None:
        _python(f"open({str(data)!r}, 'w').write('BBBB')")

    with Cache(tmp_path / "cache"):
        _DURING.append(other_process_rewrites)
        try:
            with pytest.warns(UserWarning, match="changed while it ran"):
                rv_read_late(data)
        finally:
            _DURING.clear()
        data.write_text("AAAA")  # the input is back to its first content
        assert rv_read_late(data) == "AAAA"


# --- 3. argument normalisation and scalar keys --------------------------------------------------


@cacheable(_text_spec("rv_as_float"))
def rv_as_float(x: float) -> str:
    return repr(x)


def test_int_for_float_parameter_is_not_merged_with_its_rounded_value(tmp_path: Path) -> None:
    with Cache(tmp_path):
        assert rv_as_float(2**53) == "9007199254740992"
        assert rv_as_float(2**53 + 1) == "9007199254740993"


@cacheable(_text_spec("rv_length"))
def rv_length(s: str) -> int:
    return len(s)


def test_astral_character_and_surrogate_pair_have_distinct_keys(tmp_path: Path) -> None:
    with Cache(tmp_path):
        assert rv_length("\U0001f600") == 1
        assert rv_length("\ud83d\ude00") == 2


# --- 4. fingerprint type confusion --------------------------------------------------------------


@cacheable(_text_spec("rv_square"))
def rv_square(a: np.ndarray) -> list[Any]:
    return np.asarray(a * a).tolist()


def test_ndarray_subclass_is_not_confused_with_ndarray(tmp_path: Path) -> None:
    values = [[1, 2], [3, 4]]
    with Cache(tmp_path):
        assert rv_square(np.array(values)) == [[1, 4], [9, 16]]
        with pytest.warns(PendingDeprecationWarning):
            matrix = np.matrix(values)
        with pytest.warns(PendingDeprecationWarning):  # the matrix product warns too
            product = rv_square(matrix)
        assert product == [[7, 10], [15, 22]]


class _Color(enum.StrEnum):
    RED = "red"


class _Meters(float):
    pass


def test_builtin_subclasses_keep_their_type_in_the_fingerprint() -> None:
    pairs = [
        (_Color.RED, "red"),
        (_Meters(1.0), 1.0),
        (collections.Counter({"a": 1}), {"a": 1}),
        (collections.defaultdict(int, {"a": 1}), {"a": 1}),
    ]
    assert all(fingerprint(a) != fingerprint(b) for a, b in pairs)


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.datetime64(1, "s"),
        lambda: np.ma.array([1, 2, 3], mask=[0, 1, 0]),
        lambda: np.zeros(
            2, np.dtype({"names": ["a", "b"], "formats": ["<i4", "<i4"], "offsets": [4, 0]})
        ),
    ],
    ids=["datetime64-scalar", "masked-array", "out-of-order-struct"],
)
def test_fingerprint_never_raises(make: Callable[[], object]) -> None:
    fingerprint(make())


# --- 5. through Pydra ---------------------------------------------------------------------------


@cacheable(_text_spec("rv_stamp"))
def rv_stamp(t: Any) -> str:
    return str(t)


def test_pydra_checksum_tells_numpy_scalar_dtypes_apart(tmp_path: Path) -> None:
    from pydra.engine.submitter import Submitter

    from kwneuro_pydra.pydra import to_task

    task = to_task(rv_stamp)
    outputs = []
    for value in (np.datetime64(1, "s"), np.datetime64(1, "ms")):
        with Submitter(cache_root=tmp_path / "pydra", worker="debug") as submitter:
            outputs.append(submitter(task(t=value)).outputs.out)
    assert outputs == [str(np.datetime64(1, "s")), str(np.datetime64(1, "ms"))]


def rv_volume_pipeline(n: int) -> Any:
    from tests import _pydra_steps as steps

    return steps.scale_volume(steps.make_volume(n))


def test_run_subjects_rerun_checks_the_entries_it_returns(tmp_path: Path) -> None:
    from kwneuro_pydra.pydra import run_subjects

    first = run_subjects(rv_volume_pipeline, {"s": {"n": 64}}, tmp_path, worker="debug")
    expected = np.array(first["s"].outputs.array)
    (stored,) = (tmp_path / "s" / "scale_volume").glob("*/scale_volume.npy")
    raw = bytearray(stored.read_bytes())
    raw[-8:] = bytes(8)  # damaged after publishing: same size, other content
    stored.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="damaged"):
        again = run_subjects(rv_volume_pipeline, {"s": {"n": 64}}, tmp_path, worker="debug")
    np.testing.assert_array_equal(np.asarray(again["s"].outputs.array), expected)


def test_to_task_node_shares_a_relative_cache_dir_with_eager_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydra.engine.submitter import Submitter

    from kwneuro_pydra.pydra import to_task

    monkeypatch.chdir(tmp_path)
    with Cache("rel"):
        assert rv_length("abc") == 3
    with Submitter(cache_root=tmp_path / "pydra", worker="debug") as submitter:
        assert submitter(to_task(rv_length)(s="abc", cache_dir="rel")).outputs.out == 3
    assert not list((tmp_path / "pydra").rglob("rv_length.params.json"))

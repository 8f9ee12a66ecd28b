"""Tests of the eager cache API (`Cache`, `CacheSpec`, `cacheable`), reference page first."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kwneuro_pydra
from kwneuro_pydra import Cache, CacheSpec, cacheable, fingerprint
from kwneuro_pydra import cache as cache_module
from kwneuro_pydra._lock import LOCK_FILE
from kwneuro_pydra.cache import step_of

Calls = list[tuple[Any, ...]]


def npy_spec(name: str = "out.npy", step_name: str = "") -> CacheSpec[np.ndarray]:
    return CacheSpec(
        files=[name],
        save=lambda a, d: np.save(d / name, a),
        load=lambda d: np.load(d / name),
        step_name=step_name,
    )


class TextFile:
    """A file-backed result implementing the cache protocol (like the imaging resources)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> str:
        return self.path.read_text()

    def __fingerprint__(self) -> object:
        return self.path

    @classmethod
    def _cache_files(cls, step_name: str) -> list[str]:
        return [f"{step_name}.txt"]

    def _cache_save(self, cache_dir: Path, step_name: str) -> None:
        (cache_dir / f"{step_name}.txt").write_text(self.read())

    @classmethod
    def _cache_load(cls, cache_dir: Path, step_name: str) -> TextFile:
        return cls(cache_dir / f"{step_name}.txt")


def text(value: str, where: Path) -> TextFile:
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_text(value)
    return TextFile(where)


# --- the reference page ---------------------------------------------------------------------


def test_public_names_are_pinned() -> None:
    assert kwneuro_pydra.__all__ == sorted(kwneuro_pydra.__all__)
    assert set(kwneuro_pydra.__all__) == {
        "Cache",
        "CacheSpec",
        "Entry",
        "Explanation",
        "__version__",
        "adopt",
        "cacheable",
        "current_cache",
        "fingerprint",
    }
    for name in ("Cache", "CacheSpec", "cacheable"):
        assert getattr(cache_module, name) is getattr(kwneuro_pydra, name)
    assert "pydra" not in sys.modules or "kwneuro_pydra.pydra" in sys.modules


def test_cachespec_fields_and_defaults() -> None:
    spec = npy_spec("a.npy")
    assert spec.files == ["a.npy"]
    assert spec.step_name == ""
    typed = CacheSpec[np.ndarray](files=spec.files, save=spec.save, load=spec.load)
    assert isinstance(typed, CacheSpec) and typed == spec  # the type parameter is for checkers
    assert typing.get_args(CacheSpec[np.ndarray]) == (np.ndarray,)


def test_cache_fields_defaults_and_directory_creation(tmp_path: Path) -> None:
    given: Any = str(tmp_path / "sub-01" / "deep")  # a str, whatever the annotation says
    cache = Cache(given)
    assert cache.cache_dir == tmp_path / "sub-01" / "deep"
    assert isinstance(cache.cache_dir, Path)
    assert cache.cache_dir.is_dir()
    assert cache.force is False
    assert cache.check_code is True
    assert cache.nifti_compression is True


def test_outside_a_cache_the_function_runs_as_if_undecorated(tmp_path: Path) -> None:
    calls: Calls = []

    @cacheable(npy_spec())
    def double(x: np.ndarray) -> np.ndarray:
        """Double it."""
        calls.append((x,))
        return x * 2

    assert double.__name__ == "double"
    assert double.__doc__ == "Double it."
    assert double.__wrapped__ is not None  # type: ignore[attr-defined]
    double(np.ones(2))
    double(np.ones(2))
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []


def test_hit_reuses_the_stored_result(tmp_path: Path) -> None:
    calls: Calls = []

    @cacheable(npy_spec())
    def double(x: np.ndarray) -> np.ndarray:
        calls.append((x,))
        return x * 2

    with Cache(tmp_path):
        first = double(np.arange(3))
        second = double(np.arange(3))
    np.testing.assert_array_equal(first, [0, 2, 4])
    np.testing.assert_array_equal(second, [0, 2, 4])
    assert len(calls) == 1


def test_keyed_entries_a_b_a(tmp_path: Path) -> None:
    calls: Calls = []

    @cacheable(npy_spec())
    def scale(x: np.ndarray, factor: float = 2.0) -> np.ndarray:
        calls.append((factor,))
        return x * factor

    with Cache(tmp_path) as cache:
        a, b = scale(np.ones(2), 2.0), scale(np.ones(2), 3.0)
        a_again = scale(np.ones(2), 2.0)
        assert len(cache.entries(scale)) == 2
    assert calls == [(2.0,), (3.0,)]
    np.testing.assert_array_equal(a_again, a)
    assert not np.array_equal(a, b)


def test_positional_keyword_and_default_spellings_are_one_call(tmp_path: Path) -> None:
    calls: Calls = []

    @cacheable(npy_spec())
    def scale(x: np.ndarray, factor: float = 2.0, *, offset: int = 0) -> np.ndarray:
        calls.append((factor, offset))
        return x * factor + offset

    with Cache(tmp_path):
        scale(np.ones(2))
        scale(np.ones(2), 2.0)
        scale(x=np.ones(2), factor=2.0, offset=0)
        scale(np.ones(2), factor=2)  # an int for a float parameter, as Pydra would convert it
    assert calls == [(2.0, 0)]


def test_sidecar_sections(tmp_path: Path) -> None:
    @cacheable(npy_spec(step_name="threshold"))
    def threshold_volume(
        volume: np.ndarray, level: float, label: str, flag: bool, x: None
    ) -> np.ndarray:
        return volume > level

    volume = np.arange(4.0)
    with Cache(tmp_path) as cache:
        threshold_volume(volume, 1.5, "brain", True, None)
        (entry,) = cache.entries("threshold")
    sidecar = json.loads((entry.path / "threshold.params.json").read_text())
    assert sidecar["scalars"] == {"level": 1.5, "label": "brain", "flag": True, "x": None}
    assert sidecar["hashes"] == {"volume": fingerprint(volume)}
    assert sidecar["format"] == 1
    assert sidecar["code"] == entry.code and len(entry.code or "") == 64
    assert sidecar["library"].startswith("kwneuro-pydra ")
    assert sidecar["created"] and sidecar["duration"] >= 0
    assert set(sidecar["files"]) == {"out.npy"}
    assert entry.path.parent == tmp_path / "threshold"


def test_a_change_in_either_section_is_a_miss(tmp_path: Path) -> None:
    calls: Calls = []

    @cacheable(npy_spec())
    def scale(x: np.ndarray, factor: float) -> np.ndarray:
        calls.append((factor,))
        return x * factor

    with Cache(tmp_path):
        scale(np.ones(3), 2.0)
        scale(np.ones(3), 2.5)
        scale(np.zeros(3), 2.5)
        scale(np.ones((3, 1)), 2.5)
        scale(np.ones(3, dtype=np.float32), 2.5)
    assert len(calls) == 5


def test_non_finite_scalars_round_trip(tmp_path: Path) -> None:
    calls: Calls = []

    @cacheable(npy_spec())
    def fill(value: float) -> np.ndarray:
        calls.append((value,))
        return np.full(2, value)

    with Cache(tmp_path) as cache:
        for value in (float("nan"), float("inf"), float("-inf"), float("nan")):
            fill(value)
        stored = sorted(repr(e.scalars["value"]) for e in cache.entries(fill))
    assert len(calls) == 3
    assert stored == ["-inf", "inf", "nan"]


def test_is_cached_answers_for_the_entry_the_arguments_select(tmp_path: Path) -> None:
    @cacheable(npy_spec())
    def scale(x: np.ndarray, factor: float) -> np.ndarray:
        return x * factor

    x = np.ones(3)
    with Cache(tmp_path) as cache:
        digest = fingerprint(x)
        assert digest is not None
        hashes = {"x": digest}
        assert not cache.is_cached("scale", ["out.npy"], {"factor": 2.0}, hashes)
        scale(x, 2.0)
        assert cache.is_cached("scale", ["out.npy"], {"factor": 2.0}, hashes)
        assert not cache.is_cached("scale", ["out.npy"], {"factor": 3.0}, hashes)
        assert not cache.is_cached("scale", ["out.npy"], {"factor": 2.0}, {"x": "0" * 64})
        assert not cache.is_cached("scale", ["other.npy"], {"factor": 2.0}, hashes)
        assert not cache.is_cached("scale", ["out.npy"])  # params expected, none given
    assert not Cache(tmp_path, force=True).is_cached("scale", ["out.npy"], {"factor": 2.0}, hashes)
    with pytest.warns(UserWarning, match="other"):
        other = Cache(tmp_path, force={"other"})
    assert other.is_cached("scale", ["out.npy"], {"factor": 2.0}, hashes)


def test_is_cached_without_params(tmp_path: Path) -> None:
    @cacheable(npy_spec())
    def constant() -> np.ndarray:
        return np.zeros(2)

    with Cache(tmp_path) as cache:
        assert not cache.is_cached("constant", ["out.npy"])
        constant()
        assert cache.is_cached("constant", ["out.npy"])


def test_force_true_set_and_is_forced(tmp_path: Path) -> None:
    calls: Calls = []

    @cacheable(npy_spec())
    def alpha(x: int) -> np.ndarray:
        calls.append(("alpha",))
        return np.full(1, x)

    @cacheable(npy_spec())
    def beta(x: int) -> np.ndarray:
        calls.append(("beta",))
        return np.full(1, x)

    with Cache(tmp_path):
        alpha(1), beta(1)
    with Cache(tmp_path, force={"beta"}) as cache:
        assert cache.is_forced("beta") and not cache.is_forced("alpha")
        alpha(1), beta(1)
    with Cache(tmp_path, force=True) as cache:
        assert cache.is_forced("alpha") and cache.is_forced("beta")
        alpha(1), beta(1)
    assert calls == [("alpha",), ("beta",), ("beta",), ("alpha",), ("beta",)]


def test_status_by_qualname_skipping_undecorated(tmp_path: Path) -> None:
    @cacheable(npy_spec())
    def done(x: int) -> np.ndarray:
        return np.full(1, x)

    @cacheable(npy_spec())
    def pending(x: int) -> np.ndarray:
        return np.full(1, x)

    def plain(x: int) -> int:
        return x

    with Cache(tmp_path) as cache:
        done(1)
        status = cache.status([done, pending, plain])
    assert status == {done.__qualname__: True, pending.__qualname__: False}


def test_bare_decorator_uses_the_return_types_protocol(tmp_path: Path) -> None:
    calls: Calls = []

    @cacheable
    def greet(name: str, where: str) -> TextFile:  # a Path would be keyed by its content
        calls.append((name,))
        return text(f"hello {name}", Path(where) / "greeting.txt")

    with Cache(tmp_path / "cache") as cache:
        first = greet("ada", str(tmp_path / "work"))
        second = greet("ada", str(tmp_path / "work"))
        assert cache.status([greet]) == {greet.__qualname__: True}
    assert first.read() == second.read() == "hello ada"
    assert first.path.parent.parent == tmp_path / "cache" / "greet"  # file-backed from the entry
    assert len(calls) == 1


class NoProtocol:
    pass


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (None, "no return annotation"),
        ("NoProtocol", "does not implement the cache protocol"),
        ("Undefined", "cannot be resolved"),
    ],
)
def test_bare_decorator_without_a_protocol_type_raises_typeerror_on_first_use(
    annotation: str | None, message: str, tmp_path: Path
) -> None:
    def step(x: int):  # type: ignore[no-untyped-def]
        return x

    if annotation is not None:
        step.__annotations__["return"] = annotation
    wrapped = cacheable(step)
    assert wrapped(1) == 1  # outside a cache: no check, runs as if undecorated
    with Cache(tmp_path), pytest.raises(TypeError, match=message) as error:
        wrapped(1)
    assert "step" in str(error.value)


def test_unfingerprintable_argument_warns_naming_parameter_type_and_step(tmp_path: Path) -> None:
    calls: Calls = []

    @cacheable(npy_spec())
    def use(model: object, n: int) -> np.ndarray:
        calls.append((n,))
        return np.zeros(n)

    with Cache(tmp_path) as cache:
        for _ in range(2):
            with pytest.warns(UserWarning, match=r"'model' of step 'use' \(object\)"):
                use(object(), 2)
        assert cache.entries(use) == []
    assert len(calls) == 2


# --- going further: content, chains, code ---------------------------------------------------


def test_chained_steps_never_go_stale(tmp_path: Path) -> None:
    calls: Calls = []

    @cacheable
    def write(value: str, where: str) -> TextFile:  # a Path would be keyed by its content
        calls.append(("write", value))
        return text(value + os.environ.get("KWNEURO_TEST_NONCE", ""), Path(where) / "w.txt")

    @cacheable
    def shout(source: TextFile, where: str) -> TextFile:
        calls.append(("shout", source.read()))
        return text(source.read().upper(), Path(where) / "s.txt")

    def pipeline(value: str) -> str:
        return shout(write(value, str(tmp_path / "work")), str(tmp_path / "work")).read()

    with Cache(tmp_path / "cache"):
        assert pipeline("a") == "A"
        assert pipeline("a") == "A"  # unchanged upstream: downstream hits
        assert pipeline("b") == "B"  # changed upstream: downstream recomputes
    os.environ["KWNEURO_TEST_NONCE"] = "x"
    try:
        with Cache(tmp_path / "cache", force={"write"}):
            assert pipeline("a") == "AX"  # forced upstream with new behaviour
    finally:
        del os.environ["KWNEURO_TEST_NONCE"]
    assert calls == [
        ("write", "a"),
        ("shout", "a"),
        ("write", "b"),
        ("shout", "b"),
        ("write", "a"),
        ("shout", "ax"),
    ]


def test_path_arguments_are_keyed_by_content(tmp_path: Path) -> None:
    calls: Calls = []

    @cacheable(npy_spec())
    def size_of(path: Path) -> np.ndarray:
        calls.append((path.read_bytes(),))
        return np.array([len(path.read_bytes())])

    data = tmp_path / "in.txt"
    with Cache(tmp_path / "cache"):
        data.write_text("abc")
        size_of(data)
        size_of(data)
        data.write_text("abcd")
        size_of(data)
        as_str: Any = str(data)
        size_of(as_str)  # a str for a Path parameter is that path, as in Pydra
    assert calls == [(b"abc",), (b"abcd",)]


def _load_module(path: Path, source: str, name: str) -> Any:
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STEP_SOURCE = """
import numpy as np
from kwneuro_pydra import CacheSpec, cacheable
CALLS = []
spec = CacheSpec(files=["o.npy"], save=lambda a, d: np.save(d / "o.npy", a),
                 load=lambda d: np.load(d / "o.npy"), step_name="versioned")

@cacheable(spec)
def versioned(x: int) -> np.ndarray:
    {doc}
    CALLS.append(x)  {comment}
    return np.full(2, x {op} 1)
"""


def test_code_changes_are_misses_but_comments_docstrings_formatting_are_not(
    tmp_path: Path,
) -> None:
    variants = [
        ("", "", "+"),
        ('"""Now documented."""', "# a comment", "+"),
        ('"""Now documented."""', "# a comment", "  +  "),
        ("", "", "-"),
    ]
    ran = []
    for i, (doc, comment, op) in enumerate(variants):
        source = STEP_SOURCE.format(doc=doc, comment=comment, op=op)
        module = _load_module(tmp_path / f"steps_v{i}.py", source, "steps_versioned")
        with Cache(tmp_path / "cache"):
            result = module.versioned(5)
        ran.append(bool(module.CALLS))
        assert result.tolist() == ([4, 4] if op.strip() == "-" else [6, 6])
    assert ran == [True, False, False, True]


def test_check_code_false_reuses_entries_of_other_code(tmp_path: Path) -> None:
    """One module edited (loaded again under its name): its step's old entries serve."""
    old_source = STEP_SOURCE.format(doc="", comment="", op="+")
    old = _load_module(tmp_path / "old.py", old_source, "versioned_steps")
    new_source = STEP_SOURCE.format(doc="", comment="", op="*")
    new = _load_module(tmp_path / "new.py", new_source, "versioned_steps")
    with Cache(tmp_path / "cache"):
        old.versioned(5)
    with Cache(tmp_path / "cache", check_code=False):
        assert new.versioned(5).tolist() == [6, 6]
    assert new.CALLS == []


def test_check_code_false_serves_the_newest_entry_of_other_code(tmp_path: Path) -> None:
    versions = [
        _load_module(tmp_path / f"v{i}.py", STEP_SOURCE.format(doc="", comment="", op=op), "v")
        for i, op in enumerate(("+", "-", "*"))
    ]
    for version in versions[:2]:
        with Cache(tmp_path / "cache"):
            version.versioned(5)
    with Cache(tmp_path / "cache", check_code=False) as cache:
        assert len(cache.entries("versioned")) == 2
        assert versions[2].versioned(5).tolist() == [4, 4]  # v2's 5 - 1, not v1's 5 + 1
    assert versions[2].CALLS == []


def test_explain_names_what_differs(tmp_path: Path) -> None:
    @cacheable(npy_spec())
    def scale(x: np.ndarray, factor: float, mode: str = "a") -> np.ndarray:
        return x * factor

    from kwneuro_pydra.cache import MissReason

    with Cache(tmp_path) as cache:
        assert "no entry" in str(cache.explain(scale, np.ones(2), 2.0))
        assert cache.explain(scale, np.ones(2), 2.0).causes == (MissReason.NO_ENTRY,)
        scale(np.ones(2), 2.0)
        assert cache.explain(scale, np.ones(2), 2.0).hit
        assert cache.explain(scale, np.ones(2), 2.0).causes == ()
        why = cache.explain(scale, np.ones(2), 3.0)
        assert not why.hit
        assert why.reasons == ("argument 'factor' changed: 2.0 -> 3.0",)
        assert why.causes == (MissReason.ARGUMENT,) and why.causes[0] == "argument"
        why = cache.explain(scale, np.zeros(2), 2.0, mode="b")
        assert any("'x' content changed" in r for r in why.reasons)
        assert any("'mode' changed: 'a' -> 'b'" in r for r in why.reasons)
        assert why.causes == (MissReason.ARGUMENT, MissReason.CONTENT)
        (entry,) = cache.entries(scale)
        (entry.path / "out.npy").write_bytes(b"damaged")
        why = cache.explain(scale, np.ones(2), 2.0)
        assert why.causes == (MissReason.DAMAGED,) and not why.hit
    forced = Cache(tmp_path, force=True).explain(scale, np.ones(2), 2.0)
    assert "forced" in str(forced) and forced.causes == (MissReason.FORCED,)


def test_list_prune_and_clear(tmp_path: Path) -> None:
    @cacheable(npy_spec())
    def fill(n: int) -> np.ndarray:
        return np.full(2, n)

    with Cache(tmp_path) as cache:
        for n in range(5):
            fill(n)
        entries = cache.entries(fill)
        assert [e.scalars["n"] for e in entries] == [0, 1, 2, 3, 4]
        assert all(e.nbytes > 0 for e in entries)
        assert sorted(cache.prune(keep=2, dry_run=True)) == sorted(e.path for e in entries[:3])
        assert cache.entries(fill) == entries  # a dry run removes nothing
        removed = cache.prune(keep=2)
        assert sorted(removed) == sorted(e.path for e in entries[:3])
        assert [e.scalars["n"] for e in cache.entries(fill)] == [3, 4]
        leftover = tmp_path / "fill" / ".tmp-crashed"
        leftover.mkdir()
        os.utime(leftover, (0, 0))
        assert cache.prune(dry_run=True) == [leftover] and leftover.is_dir()
        assert cache.prune() == [leftover]
        assert cache.prune(older_than=0) != []
        fill(7)
        assert cache.clear(fill) == 1
        assert cache.entries(fill) == []


def test_clear_and_prune_leave_the_read_only_caches_alone(tmp_path: Path) -> None:
    """Both caches are writable: only the rule keeps the lab's entries, not the file system."""

    @cacheable(npy_spec())
    def sq(x: int) -> np.ndarray:
        return np.full(2, x * x)

    lab, mine = tmp_path / "lab", tmp_path / "mine"
    with Cache(lab):
        sq(2)
    with Cache(mine, read_only=[lab]) as cache:
        sq(3)
        assert cache.clear() == 1
        assert cache.entries(sq) == []
        cache.prune(keep=0, older_than=0)
        assert sq(2).tolist() == [4, 4]  # still served by the lab
        assert cache.entries(sq) == []
    with Cache(lab) as shared:
        assert [e.scalars["x"] for e in shared.entries(sq)] == [2]


def test_damaged_entries_are_misses_with_a_warning(tmp_path: Path) -> None:
    calls: Calls = []

    @cacheable(npy_spec())
    def fill(n: int) -> np.ndarray:
        calls.append((n,))
        return np.full(1000, n)

    with Cache(tmp_path) as cache:
        fill(1)
        (entry,) = cache.entries(fill)
        with (entry.path / "out.npy").open("r+b") as handle:
            handle.truncate(100)
        with pytest.warns(UserWarning, match="damaged"):
            assert fill(1).tolist() == [1] * 1000
        (entry,) = cache.entries(fill)
        (entry.path / "fill.params.json").write_text("{not json")
        with pytest.warns(UserWarning, match="unreadable"):
            fill(1)
        (entry,) = cache.entries(fill)
        sidecar = json.loads((entry.path / "fill.params.json").read_text())
        (entry.path / "fill.params.json").write_text(json.dumps({**sidecar, "format": 99}))
        with pytest.warns(UserWarning, match="format version 99"):
            fill(1)
        assert fill(1).tolist() == [1] * 1000
    assert len(calls) == 4


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/abs/out.npy", "../escape.npy", "a/../../b.npy", ""])
def test_cachespec_files_escaping_the_entry_are_refused_when_decorating(name: str) -> None:
    spec = npy_spec(name)
    with pytest.raises(ValueError, match=r"step 'leak'.*relative path inside the cache entry"):

        @cacheable(spec)
        def leak(x: int) -> int:
            return x


@pytest.mark.parametrize("name", ["../up", "a/b", ".hidden", "with space", "<lambda>"])
def test_unsafe_step_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a safe file name"):
        cacheable(npy_spec("x", step_name=name))(len)


def test_cache_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="exists and is not a directory"):
        Cache(tmp_path / "file")
    with pytest.raises(PermissionError, match="cannot create"):
        Cache(tmp_path / "file" / "sub")


def test_cache_dir_that_cannot_be_created() -> None:
    # An existing directory that cannot be written is a read-only cache: see
    # tests/reliability/test_read_only.py.
    with pytest.raises(PermissionError, match="cannot create"):
        Cache(Path("/proc/kwneuro-cache"))


def test_force_with_unknown_steps_warns_and_wrong_type_raises(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="no_such_step"):
        Cache(tmp_path, force={"no_such_step"})
    with pytest.raises(TypeError, match="force"):
        Cache(tmp_path, force="estimate_dti")  # type: ignore[arg-type]


def test_wrong_arguments_name_the_step(tmp_path: Path) -> None:
    @cacheable(npy_spec())
    def scale(x: np.ndarray, factor: float) -> np.ndarray:
        return x * factor

    with Cache(tmp_path), pytest.raises(TypeError, match="scale"):
        scale(np.ones(2))  # type: ignore[call-arg]


def test_protocol_step_returning_the_wrong_type(tmp_path: Path) -> None:
    @cacheable
    def bad(x: int) -> TextFile:
        return "not a file"  # type: ignore[return-value]

    with Cache(tmp_path), pytest.raises(TypeError, match="returned str, expected TextFile"):
        bad(1)
    assert list((tmp_path / "bad").glob("[!.]*")) == []


def test_save_that_skips_a_declared_file(tmp_path: Path) -> None:
    @cacheable(
        CacheSpec(
            files=["a.npy", "b.npy"], save=lambda r, d: np.save(d / "a.npy", r), load=np.load
        )
    )
    def half(x: int) -> np.ndarray:
        return np.zeros(x)

    with Cache(tmp_path) as cache, pytest.raises(FileNotFoundError, match=r"'b\.npy'"):
        half(2)
    assert cache.entries(half) == []
    assert [p.name for p in (tmp_path / "half").iterdir()] == [LOCK_FILE]  # no entry, no tmp


def test_nothing_is_written_outside_the_cache_dir(tmp_path: Path) -> None:
    @cacheable(npy_spec())
    def scale(x: np.ndarray, factor: float) -> np.ndarray:
        return x * factor

    (tmp_path / "cache").mkdir()
    before = set(tmp_path.iterdir())
    with Cache(tmp_path / "cache"):
        scale(np.ones(3), 2.0)
        scale(np.ones(3), 2.0)
    assert set(tmp_path.iterdir()) == before


def test_an_entry_left_in_trash_by_a_crashed_replacement_is_restored(tmp_path: Path) -> None:
    # Where rename-exchange is unsupported (NFS), a forced replacement renames the old entry
    # to .swap-<key> first; a crash right after leaves it there.
    calls: Calls = []

    @cacheable(npy_spec())
    def fill(n: int) -> np.ndarray:
        calls.append((n,))
        return np.full(3, n)

    with Cache(tmp_path) as cache:
        fill(1)
        (entry,) = cache.entries(fill)
        entry.path.rename(entry.path.parent / f".swap-{entry.key}")
        assert fill(1).tolist() == [1, 1, 1]
        assert entry.path.is_dir()
    assert calls == [(1,)]


def test_forced_replacement_swaps_entries_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kwneuro_pydra import _exchange, _store

    swaps: list[tuple[Path, Path]] = []
    real = _exchange.exchange

    def recording(a: Path, b: Path) -> bool:
        swaps.append((a, b))
        return real(a, b)

    monkeypatch.setattr(_store, "exchange", recording)

    @cacheable(npy_spec())
    def fill(n: int) -> np.ndarray:
        return np.full(3, n)

    with Cache(tmp_path) as cache:
        fill(1)
    with Cache(tmp_path, force=True):
        fill(1)
    (entry,) = cache.entries(fill)
    assert [b for _, b in swaps] == [entry.path]
    assert sorted(p.name for p in entry.path.parent.iterdir()) == sorted([LOCK_FILE, entry.key])


def test_settled_sidecars_are_parsed_once_and_in_place_edits_are_seen(
    tmp_path: Path, short_racy_window: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kwneuro_pydra import _store

    parsed: list[str] = []
    real = _store._parse_sidecar

    def counting(path: str, *args: Any) -> Any:
        parsed.append(path)
        return real(path, *args)

    monkeypatch.setattr(_store, "_parse_sidecar", counting)

    @cacheable(npy_spec())
    def fill(n: int) -> np.ndarray:
        return np.full(3, n)

    with Cache(tmp_path) as cache:
        fill(1)
        time.sleep(short_racy_window)
        parsed.clear()
        for _ in range(3):
            fill(1)
        assert len(parsed) == 1
        (entry,) = cache.entries(fill)
        sidecar = entry.path / "fill.params.json"
        sidecar.write_text(sidecar.read_text().replace('"format": 1', '"format": 7'))
        with pytest.warns(UserWarning, match="format version 7"):
            fill(1)


def test_prune_stale_code_keeps_only_entries_of_the_current_code(tmp_path: Path) -> None:
    sources = [STEP_SOURCE.format(doc="", comment="", op=op) for op in ("+", "-")]
    old = _load_module(tmp_path / "old.py", sources[0], "steps_pruned")
    with Cache(tmp_path / "cache"):
        old.versioned(1), old.versioned(2)
    new = _load_module(tmp_path / "new.py", sources[1], "steps_pruned")
    with Cache(tmp_path / "cache") as cache:
        new.versioned(1)
        assert len(cache.entries("versioned")) == 3
        removed = cache.prune(stale_code=True)
        (kept,) = cache.entries("versioned")
    assert len(removed) == 2
    assert kept.code == step_of(new.versioned).code  # type: ignore[union-attr]


def test_lookup_says_which_entry_serves_a_call_or_why_none_does(tmp_path: Path) -> None:
    from kwneuro_pydra._plan import plan
    from kwneuro_pydra.cache import Lookup, MissReason, StepState

    v1 = _load_module(tmp_path / "v1.py", STEP_SOURCE.format(doc="", comment="", op="+"), "lk")
    with Cache(tmp_path / "cache") as cache:
        assert cache.lookup(v1.versioned, 5) == Lookup(StepState.MISSING)
        found = step_of(v1.versioned)
        assert found is not None and cache.call(found, 5).tolist() == [6, 6]  # a Step, run
        assert cache.call(v1.versioned, x=5).tolist() == [6, 6] and v1.CALLS == [5]
        hit = cache.lookup(v1.versioned, 5)
        assert hit.state is StepState.CACHED and hit.state == "cached"  # a str as well
        assert hit.value.tolist() == [6, 6] and hit.entry == cache.entries("versioned")[0]
        assert cache.lookup(step_of(v1.versioned), x=5).entry == hit.entry  # its Step too
    assert Cache(tmp_path / "cache", force={"versioned"}).lookup(v1.versioned, 5).entry is None
    complete = plan(lambda x: v1.versioned(x), {"x": 5}, tmp_path / "cache")
    assert complete.complete and complete.outputs.tolist() == [6, 6]

    v2 = _load_module(tmp_path / "v2.py", STEP_SOURCE.format(doc="", comment="", op="*"), "lk")
    cache = Cache(tmp_path / "cache")
    assert cache.lookup(v2.versioned, 5) == Lookup(StepState.STALE)  # its code changed
    assert cache.lookup(v2.versioned, 6) == Lookup(StepState.MISSING)
    with pytest.raises(KeyError, match="no stored result of step 'versioned'"):
        cache.load(v2.versioned, 5)
    assert cache.explain(v2.versioned, 5).causes == (MissReason.CODE,)
    assert cache.explain(v2.versioned, 6).causes == (MissReason.ARGUMENT, MissReason.CODE)
    stale = plan(lambda x: v2.versioned(x), {"x": 5}, tmp_path / "cache", [v2.versioned])
    assert stale.states == {"versioned": StepState.STALE} and not stale.complete


SMOOTH_SOURCE = """
import json
from kwneuro_pydra import CacheSpec, cacheable
CALLS = []
spec = CacheSpec(files=["s.json"], save=lambda r, d: (d / "s.json").write_text(json.dumps(r)),
                 load=lambda d: json.loads((d / "s.json").read_text()))

@cacheable(spec)
def smooth(x: float) -> float:
    CALLS.append(x)
    return x + {offset}
"""


def test_two_modules_defining_one_step_name_never_share_entries(tmp_path: Path) -> None:
    a = _load_module(tmp_path / "a.py", SMOOTH_SOURCE.format(offset=1), "smooth_a")
    b = _load_module(tmp_path / "b.py", SMOOTH_SOURCE.format(offset=100), "smooth_b")
    root = tmp_path / "cache"
    with Cache(root):
        assert b.smooth(3.0) == 103.0
    with Cache(root, check_code=False) as cache:
        assert a.smooth(3.0) == 4.0 and a.CALLS == [3.0]  # never B's entry
        assert cache.lookup(a.smooth, 3.0).value == 4.0
        assert cache.status([a.smooth, b.smooth]) == {"smooth": True}
    entries = {e.function: e for e in Cache(root).entries("smooth")}
    assert set(entries) == {"smooth_a.smooth", "smooth_b.smooth"}

    with Cache(root, force={"smooth_a.smooth"}):  # the one meant, by module and name
        assert (a.smooth(3.0), b.smooth(3.0)) == (4.0, 103.0)
    assert (a.CALLS, b.CALLS) == ([3.0, 3.0], [3.0])
    with Cache(root, force={"smooth"}):  # the step name: every function of that name
        assert (a.smooth(3.0), b.smooth(3.0)) == (4.0, 103.0)
    assert (len(a.CALLS), len(b.CALLS)) == (3, 2)

    a_edited = _load_module(tmp_path / "a2.py", SMOOTH_SOURCE.format(offset=2), "smooth_a")
    assert Cache(root).prune(stale_code=True) == [entries["smooth_a.smooth"].path]
    assert [e.function for e in Cache(root).entries("smooth")] == ["smooth_b.smooth"]
    with Cache(root):
        assert (a_edited.smooth(3.0), b.smooth(3.0)) == (5.0, 103.0)
    assert len(b.CALLS) == 2


RECORDED_MODULE = """import json

from kwneuro_pydra import CacheSpec, cacheable

CALLS = []


@cacheable(
    CacheSpec(
        files=["blur.json"],
        save=lambda r, d: (d / "blur.json").write_text(json.dumps(r)),
        load=lambda d: json.loads((d / "blur.json").read_text()),
    )
)
def blur(x: float, width: int = 2) -> float:
    CALLS.append(x)
    return x * width + 0.5
"""
RECORDED_KEY = "11aaabe80634220172c4619173784db4c2a914ed0b2abd2b3100280531f43fdd"
RECORDED_SIDECAR = {
    "code": "25113fe596b101fc1de42278f354ae6c3ffe47a135744cb7f5a52a5b39121008",
    "created": "2026-12-05T06:55:01.401023+00:00",
    "duration": 2.8550000479299342e-06,
    "files": {"blur.json": {"digest": "xxh3_128:681375b1a3b3f199e0bfa5d6b0031922", "size": 3}},
    "format": 1,
    "function": "recorded_steps.blur",
    "hashes": {},
    "library": "kwneuro-pydra 0.1.0",
    "scalars": {"width": 2, "x": 3.0},
    "step": "blur",
}
"""An entry of ``recorded_steps.blur(3.0)`` as the library wrote it before a step's identity
included its module and qualified name (commit 2d12f1d)."""


def test_an_entry_recorded_before_steps_had_a_module_identity_is_still_served(
    tmp_path: Path,
) -> None:
    entry = tmp_path / "cache" / "blur" / RECORDED_KEY
    entry.mkdir(parents=True)
    (entry / "blur.params.json").write_text(json.dumps(RECORDED_SIDECAR))
    (entry / "blur.json").write_text("6.5")
    module = _load_module(tmp_path / "recorded_steps.py", RECORDED_MODULE, "recorded_steps")
    for check_code in (True, False):
        with Cache(tmp_path / "cache", check_code=check_code):
            assert module.blur(3.0) == 6.5
    assert module.CALLS == []
    assert Cache(tmp_path / "cache").prune(stale_code=True) == []

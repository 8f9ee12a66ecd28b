"""Names that passed decoration and then failed on every call (issue 11, item 5).

A 250-character step name failed with "File name too long" after computing; ``files=["."]``,
a NUL in a file name and other names of that family failed when the entry was written; an
output file named like the sidecar returned the sidecar's JSON as the result. All are refused
when the step is decorated, naming the step, where the name came from and what is expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kwneuro_pydra import Cache, CacheSpec, cacheable
from kwneuro_pydra._step import MAX_STEP_NAME


def _spec(files: Any, step_name: str = "") -> CacheSpec[Any]:
    return CacheSpec(
        files=files,
        save=lambda r, d: np.save(d / "out.npy", r),
        load=lambda d: np.load(d / "out.npy"),
        step_name=step_name,
    )


def _step(x: int) -> np.ndarray:
    return np.full(3, x)


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        (["."], "'.' or '..' component"),
        ([".."], "'.' or '..' component"),
        (["a/../out.npy"], "'.' or '..' component"),
        (["./out.npy"], "'.' or '..' component"),
        (["maps//fa.npy"], "empty"),
        (["maps/"], "empty"),
        ([""], "empty"),
        (["out\x00.npy"], "control character"),
        (["out\n.npy"], "control character"),
        (["/etc/out.npy"], "absolute"),
        (["maps\\fa.npy"], "backslash"),
        (["x" * 256], "component of 256 bytes"),
        (["maps/" + "é" * 128], "component of 256 bytes"),
        (["_step.params.json"], "the entry's sidecar"),
        (["_STEP.params.JSON"], "the entry's sidecar.*case"),
        (["out.npy", "out.npy"], "appears twice"),
        (["out.npy", "OUT.npy"], "collides with output file 'out.npy'.*case"),
        (["maps", "maps/fa.npy"], "inside 'maps', which is a file"),
        (["maps/fa.npy", "maps"], "also a directory of output file 'maps/fa.npy'"),
        (["\ud800.npy"], "not valid text"),
    ],
)
def test_bad_output_file_names_are_refused_at_decoration(files: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as error:
        cacheable(_spec(files))(_step)
    message = str(error.value)
    assert "step '_step'" in message and "CacheSpec.files" in message
    assert "expected a relative path inside the cache entry" in message


def test_a_surrogate_escaped_name_from_the_file_system_is_accepted() -> None:
    cacheable(_spec(["caf\udce9.npy", "maps/a.npy", "maps/b.npy"]))(_step)


@pytest.mark.parametrize("files", ["out.npy", None, {"out.npy"}, [Path("out.npy")]])
def test_files_that_are_not_a_list_of_str_are_refused(files: Any) -> None:
    with pytest.raises((TypeError, ValueError), match=r"step '_step': CacheSpec\.files"):
        cacheable(_spec(files))(_step)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("s" * 250, f"250 characters long: at most {MAX_STEP_NAME}"),
        ("s" * (MAX_STEP_NAME + 1), f"at most {MAX_STEP_NAME}"),
        (".", "not a safe file name"),
        ("..", "not a safe file name"),
        (".kwneuro", "not a safe file name"),  # the store's own directories are hidden
        (".pydra", "not a safe file name"),
        ("a/b", "not a safe file name"),
        ("a\x00b", "not a safe file name"),
        ("-rf", "not a safe file name"),
    ],
)
def test_bad_step_names_are_refused_at_decoration(name: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as error:
        cacheable(_spec(["out.npy"], step_name=name))(_step)
    assert "step name" in str(error.value) and "_step" in str(error.value)


def test_the_longest_step_name_and_file_names_work_end_to_end(tmp_path: Path) -> None:
    longest = "m" * 251 + ".npy"  # 255 bytes: the longest name a file system takes

    def save(result: np.ndarray, directory: Path) -> None:
        (directory / "maps").mkdir()
        np.save(directory / longest, result)
        np.save(directory / "maps" / longest, result)

    spec = CacheSpec(
        files=[longest, f"maps/{longest}"],
        save=save,
        load=lambda d: np.load(d / "maps" / longest),
        step_name="s" * MAX_STEP_NAME,
    )
    calls: list[int] = []

    @cacheable(spec)
    def step(x: int) -> np.ndarray:
        calls.append(x)
        return np.full(3, x)

    with Cache(tmp_path / "cache") as cache:
        assert step(2).tolist() == step(2).tolist() == [2, 2, 2]
        assert cache.status([step]) == {step.__qualname__: True}
    assert calls == [2]
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


class _SidecarNamed:
    """A protocol type whose file name is the sidecar's: its results would read as JSON."""

    @classmethod
    def _cache_files(cls, step_name: str) -> list[str]:
        return [f"{step_name}.params.json"]

    def _cache_save(self, cache_dir: Path, step_name: str) -> None:
        (cache_dir / f"{step_name}.params.json").write_text("{}")

    @classmethod
    def _cache_load(cls, cache_dir: Path, step_name: str) -> _SidecarNamed:
        return cls()


def test_a_protocol_types_file_names_are_checked_at_decoration() -> None:
    def make() -> _SidecarNamed:
        return _SidecarNamed()

    with pytest.raises(ValueError, match=r"step 'make': _SidecarNamed._cache_files holds"):
        cacheable(make)


def test_a_protocol_type_resolved_only_later_is_checked_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def make() -> DefinedLater:  # type: ignore[name-defined]  # noqa: F821
        return _SidecarNamed()

    step = cacheable(make)  # unresolvable now: checked on first use
    monkeypatch.setitem(globals(), "DefinedLater", _SidecarNamed)
    with Cache(tmp_path / "cache"), pytest.raises(ValueError, match="the entry's sidecar"):
        step()
    assert not (tmp_path / "cache" / "make").exists()

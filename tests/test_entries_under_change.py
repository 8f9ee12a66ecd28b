"""Entries replaced under their readers and inputs changed under their writers.

A result already returned keeps its content when another process replaces its entry; an input
rewritten while its step runs stores no entry that a later call could be served.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kwneuro_pydra import Cache, cacheable
from tests._pydra_steps import json_spec
from tests._step_files import fresh_python, import_file

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
    v1.mkdir()
    v2.mkdir()
    (v1 / "rv_lazy.py").write_text(_VOLUME_MODULE.format(value=1))
    (v2 / "rv_lazy.py").write_text(_VOLUME_MODULE.format(value=2))
    module = import_file(v1 / "rv_lazy.py", "rv_lazy")
    cache = tmp_path / "cache"
    with Cache(cache):
        result = module.make(3)  # a file-backed, lazy volume (v1's output)
    fresh_python(  # another process (a job of a newer checkout) shares the cache directory
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


@cacheable(json_spec("rv_read_late"))
def rv_read_late(path: Path) -> str:
    for hook in _DURING:
        hook()
    return path.read_text()


def test_an_input_changed_while_the_step_runs_does_not_poison_its_entry(tmp_path: Path) -> None:
    data = tmp_path / "input.txt"
    data.write_text("AAAA")

    def other_process_rewrites() -> None:
        fresh_python(f"open({str(data)!r}, 'w').write('BBBB')")

    with Cache(tmp_path / "cache"):
        _DURING.append(other_process_rewrites)
        try:
            with pytest.warns(UserWarning, match="changed while it ran"):
                rv_read_late(data)
        finally:
            _DURING.clear()
        data.write_text("AAAA")  # the input is back to its first content
        assert rv_read_late(data) == "AAAA"

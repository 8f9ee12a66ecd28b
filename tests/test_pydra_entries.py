"""Through Pydra: checksums tell values apart, reruns check the entries they return, and
nodes share their cache directories with eager runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kwneuro_pydra import Cache, cacheable
from tests._pydra_steps import json_spec
from tests.test_argument_keys import rv_length


@cacheable(json_spec("rv_stamp"))
def rv_stamp(t: Any) -> str:
    return str(t)


def test_pydra_checksum_tells_numpy_scalar_dtypes_apart(tmp_path: Path) -> None:
    from pydra.engine.submitter import Submitter  # type: ignore[import-untyped]

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
    with Cache(Path("rel")):
        assert rv_length("abc") == 3
    with Submitter(cache_root=tmp_path / "pydra", worker="debug") as submitter:
        assert submitter(to_task(rv_length)(s="abc", cache_dir="rel")).outputs.out == 3
    assert not list((tmp_path / "pydra").rglob("rv_length.params.json"))

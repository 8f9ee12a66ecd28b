"""Tests of the Pydra adapter: tasks, hashing, one cache, workflows."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest

pytest.importorskip("pydra")

from pydra.engine.submitter import Submitter  # type: ignore[import-untyped]
from pydra.utils.general import get_fields  # type: ignore[import-untyped]

from kwneuro_pydra import Cache, CacheSpec, cacheable, fingerprint
from kwneuro_pydra.pydra import LazyValueError, to_task, to_workflow
from tests import _pydra_steps as steps

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Count step executions; keep Pydra's hash memo and telemetry inside tmp_path."""
    where = tmp_path / "counts"
    where.mkdir()
    monkeypatch.setenv("KWNEURO_TEST_COUNTS", str(where))
    monkeypatch.setenv("PYDRA_HASH_CACHE", str(tmp_path / "hashes"))
    return where


def run(task: Any, root: Path, worker: str = "debug") -> Any:
    with Submitter(cache_root=root, worker=worker) as submitter:
        result = submitter(task)
    assert not result.errored, result.errors
    return result.outputs


def field_names(cls: Any) -> list[str]:
    return [f.name for f in get_fields(cls)]


# --- to_task ------------------------------------------------------------------------------
def test_to_task_names_inputs_and_outputs(counts: Path) -> None:
    task = to_task(steps.split_sum)
    assert task.__name__ == "split_sum"
    fields = {f.name: f for f in get_fields(task)}
    assert sorted(n for n in fields if n != "function") == ["cache_dir", "x", "y"]
    assert fields["x"].type is float and fields["y"].default == 2.0
    assert fields["cache_dir"].default is None
    assert field_names(task.Outputs) == ["out1", "out2"]
    assert field_names(to_task(steps.min_max).Outputs) == ["low", "high"]
    assert field_names(to_task(steps.add_one).Outputs) == ["out"]
    assert to_task(steps.add_one) is to_task(steps.add_one)
    assert "cache_dir" not in steps.add_one.__annotations__


def test_tasks_run_bare_cachespec_static_and_multi_output_steps(
    counts: Path, tmp_path: Path
) -> None:
    cache_dir = str(tmp_path / "sub-01")
    out = run(to_task(steps.split_sum)(x=5, cache_dir=cache_dir), tmp_path / "pydra")
    assert (out.out1, out.out2) == (7.0, 3.0)
    triple = to_task(steps.Steps.triple)
    assert run(triple(x=2.0, cache_dir=cache_dir), tmp_path / "pydra").out == 6
    volume = run(to_task(steps.make_volume)(n=10, cache_dir=cache_dir), tmp_path / "pydra").out
    assert volume.path.is_relative_to(tmp_path / "sub-01") and volume.array.shape == (10,)
    mm = run(to_task(steps.min_max)(a=np.arange(4.0), cache_dir=cache_dir), tmp_path / "pydra")
    assert (mm.low, mm.high) == (0.0, 3.0)


def test_same_signature_and_identical_bodies_do_not_share_results(
    counts: Path, tmp_path: Path
) -> None:
    add, dbl = to_task(steps.add_one)(x=3.0), to_task(steps.double)(x=3.0)
    assert add._checksum != dbl._checksum
    assert to_task(steps.twin_a)(x=1.0)._checksum != to_task(steps.twin_b)(x=1.0)._checksum
    assert run(add, tmp_path / "p").out == 4.0 and run(dbl, tmp_path / "p").out == 6.0


def test_refuses_what_pydra_cannot_take() -> None:
    spec = CacheSpec(files=["r"], save=lambda r, d: None, load=lambda d: 0)

    @cacheable(spec)
    def function(function: int) -> int:
        return function

    @cacheable(spec)
    def splitter(split: int) -> int:
        return split

    @cacheable(spec)
    def combiner(combine: int) -> int:
        return combine

    @cacheable(spec)
    def posonly(x: int, /) -> int:
        return x

    @cacheable(spec)
    def local(x: int) -> int:
        return x

    for step, name in ((function, "function"), (splitter, "split"), (combiner, "combine")):
        with pytest.raises(ValueError, match=f"parameter {name!r} has a name reserved by Pydra"):
            to_task(step)
    with pytest.raises(ValueError, match="parameter 'x' is positional-only"):
        to_task(posonly)
    with pytest.raises(ValueError, match="cannot be imported by name"):
        to_task(local)
    with pytest.raises(TypeError, match="is not a @cacheable step"):
        to_task(len)


def test_without_cache_dir_a_node_runs_plainly_even_inside_a_cache(
    counts: Path, tmp_path: Path
) -> None:
    with Cache(tmp_path / "eager") as cache:
        assert run(to_task(steps.add_one)(x=1.0), tmp_path / "p").out == 2.0
        assert cache.entries(steps.add_one) == []
    assert steps.executions(counts, "add_one") == 1


@pytest.mark.skipif(steps.upstream is None, reason="kwneuro 1.0 is not installed")
def test_upstream_kwneuro_cacheable_steps(counts: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "sub-01"
    square, volume = to_task(steps.up_square), to_task(steps.up_volume)
    assert square.__name__ == "up_square" and field_names(volume.Outputs) == ["out"]
    for _ in range(2):
        assert run(square(x=3, cache_dir=str(cache_dir)), tmp_path / "p").out == 9.0
        out = run(volume(n=5, cache_dir=str(cache_dir)), tmp_path / "p").out
        assert out.array.tolist() == [0, 1, 2, 3, 4]
    with Cache(cache_dir) as cache:  # stored by our Cache: our entries, reused eagerly
        assert [e.step for e in cache.entries("up_square")] == ["up_square"]
    assert steps.executions(counts) == 2


# --- hashing --------------------------------------------------------------------------------
def test_numpy_hash_tells_shape_dtype_and_order_apart(counts: Path) -> None:
    task = to_task(steps.describe)
    a = np.arange(6, dtype=np.int64)
    variants = [
        a,
        a.reshape(2, 3),
        a.view(np.float64),
        np.asfortranarray(a.reshape(2, 3)),
        a.astype(np.int32),
    ]
    sums = [task(a=v)._checksum for v in variants]
    assert len(set(sums)) == len(variants)
    assert task(a=a.copy())._checksum == sums[0]


_SCRATCH = itertools.count()


class Opaque:
    """Pydra's default hash would read ``scratch`` (different in every instance); ours not."""

    def __init__(self, value: int) -> None:
        self.value, self.scratch = value, next(_SCRATCH)

    def __fingerprint__(self) -> object:
        return self.value


class Registered:
    def __init__(self, value: int) -> None:
        self.value, self.scratch = value, next(_SCRATCH)


@fingerprint.register(Registered)
def _registered(r: Registered) -> object:
    return r.value


@cacheable(steps.json_spec("take"))
def take(thing: object) -> int:
    return 0


def test_fingerprint_protocol_and_registry_drive_pydra_hashes(counts: Path) -> None:
    task = to_task(take)
    for cls in (Opaque, Registered):
        assert task(thing=cls(1))._checksum == task(thing=cls(1))._checksum
        assert task(thing=cls(1))._checksum != task(thing=cls(2))._checksum


def test_path_inputs_hash_by_content_and_cache_dir_by_location(
    counts: Path, tmp_path: Path
) -> None:
    task = to_task(steps.read_text)
    path = tmp_path / "in.txt"
    path.write_text("one")
    first = task(path=path)._checksum
    path.write_text("two")
    assert task(path=path)._checksum != first
    cache_dir = tmp_path / "cd"
    before = task(path=path, cache_dir=str(cache_dir))._checksum
    cache_dir.mkdir()
    (cache_dir / "filling").write_text("up")
    assert task(path=path, cache_dir=str(cache_dir))._checksum == before
    assert task(path=path, cache_dir=cache_dir)._checksum == before


# --- one cache --------------------------------------------------------------------------------
def test_eager_entries_serve_nodes_and_node_entries_serve_eager_calls(
    counts: Path, tmp_path: Path
) -> None:
    with Cache(tmp_path / "a"):
        assert steps.add_one(3) == 4.0 and steps.split_sum(5.0) == (7.0, 3.0)
    assert steps.executions(counts) == 2
    out = run(to_task(steps.add_one)(x=3, cache_dir=str(tmp_path / "a")), tmp_path / "p")
    pair = run(to_task(steps.split_sum)(x=5, cache_dir=str(tmp_path / "a")), tmp_path / "p")
    assert (out.out, pair.out1, pair.out2) == (4.0, 7.0, 3.0)
    assert steps.executions(counts) == 2  # eager -> workflow: reused

    run(to_task(steps.double)(x=3.0, cache_dir=str(tmp_path / "b")), tmp_path / "p")
    run(to_workflow(steps.pipeline)(dwi="d", cache_dir=str(tmp_path / "b")), tmp_path / "p")
    assert steps.executions(counts) == 5
    with Cache(tmp_path / "b"):
        assert steps.double(3) == 6.0
        assert steps.pipeline("d") == "dti(d,mask(d,0.5))"
    assert steps.executions(counts) == 5  # workflow -> eager: reused


def test_results_travel_file_backed_and_result_pickles_stay_small(
    counts: Path, tmp_path: Path
) -> None:
    n = 4_000_000  # 16 MB of float32 through three nodes
    out = run(to_workflow(steps.volumes)(n=n, cache_dir=str(tmp_path / "s")), tmp_path / "p")
    assert out.out == pytest.approx(1.0, abs=0.01)
    sizes = {p.parent.name: p.stat().st_size for p in (tmp_path / "p").glob("*/_result.pklz")}
    nodes = [size for name, size in sizes.items() if name.startswith("python-")]
    assert len(nodes) == 3 and max(nodes) < 64_000, sizes
    # The workflow's result carries its task class pickled by value (Pydra builds it with
    # attrs; 47-68 kB with the converters of the process's earlier steps), never the 16 MB.
    (workflow,) = (size for name, size in sizes.items() if name.startswith("workflow-"))
    assert workflow < 256_000, sizes


# --- workflows ------------------------------------------------------------------------------
def test_one_definition_runs_eagerly_and_as_a_workflow(counts: Path, tmp_path: Path) -> None:
    eager = steps.pipeline3("x")
    wf = to_workflow(steps.pipeline3)
    assert wf.__name__ == "pipeline3" and field_names(wf.Outputs) == ["out1", "out2"]
    out = run(wf(dwi="x", cache_dir=str(tmp_path / "s")), tmp_path / "p")
    assert (out.out1, out.out2) == eager
    assert run(to_workflow(steps.named)(a=np.arange(3.0)), tmp_path / "p").out == 3.0
    assert run(to_workflow(steps.chain4)(x=1.0), tmp_path / "p").out == 10.0


@pytest.mark.parametrize(
    ("pipeline", "use"),
    [
        (steps.bad_attr, "attribute access .upper"),
        (steps.bad_if, "truth testing"),
        (steps.bad_fstring, "formatting"),
    ],
)
def test_misusing_a_lazy_value_fails_at_construction_naming_it(pipeline: Any, use: str) -> None:
    with pytest.raises(LazyValueError, match=f"the result of step 'brain_mask' .* {use}"):
        to_workflow(pipeline)


def test_a_step_edit_invalidates_the_workflow_result(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from kwneuro_pydra.pydra import to_workflow
        from pydra.engine.submitter import Submitter
        import editable
        wf = to_workflow(editable.pipe)(x=1.0, cache_dir=sys.argv[1] + "/s")
        with Submitter(cache_root=sys.argv[1] + "/p", worker="debug") as sub:
            print(sub(wf).outputs.out)
        """
    )
    outputs = []
    for body in ("x + 1", "x + 100"):
        (tmp_path / "editable.py").write_text(
            "from tests._pydra_steps import json_spec\n"
            "from kwneuro_pydra import cacheable\n"
            "@cacheable(json_spec('step'))\n"
            f"def step(x: float) -> float:\n    return {body}\n"
            "def pipe(x: float) -> float:\n    return step(x)\n"
        )
        env = dict(
            os.environ,
            PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}",
            PYDRA_HASH_CACHE=str(tmp_path / "h"),
        )
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.split()[-1])
    assert outputs == ["2.0", "101.0"]


@attrs.define
class Settings:
    sigma: float
    weights: list[float] = attrs.field(eq=False)


def test_dataclass_and_attrs_inputs_hash_through_fingerprint(counts: Path) -> None:
    task = to_task(take)
    first = task(thing=Settings(1.0, [1.0]))._checksum
    assert task(thing=Settings(1.0, [1.0]))._checksum == first
    assert task(thing=Settings(1.0, [2.0]))._checksum != first  # an eq=False field counts

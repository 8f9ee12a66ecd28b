"""Checksums of the adapter's tasks, and Pydra's hashing of everything else, per process."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("pydra")

from tests._children import child_env, python

CHECKSUMS = """
    from kwneuro_pydra.pydra import to_task, to_workflow
    from kwneuro_pydra.workflows import dti
    from tests import _pydra_steps as s
    tasks = [
        to_task(dti.mean_b0)(cache_dir="/x"),
        to_task(dti.brain_mask)(cache_dir="/x", median_radius=3),
        to_task(dti.estimate_dti)(cache_dir="/x"),
        to_workflow(dti.dti_pipeline)(cache_dir="/x"),
        to_task(s.make_volume)(n=3, cache_dir="/x"),
        to_task(s.min_max)(cache_dir="/x"),
        to_workflow(s.pipeline3)(dwi="a", cache_dir="/x"),
    ]
    print(*[t._checksum for t in tasks])
"""

HISTORIES = {
    "nothing first": "",
    "hashed a NiftiVolumeResource first": """
        import numpy as np
        import kwneuro_pydra.pydra
        from pydra.utils.hash import hash_function
        from kwneuro_pydra.resources import InMemoryVolumeResource, NiftiVolumeResource
        volume = InMemoryVolumeResource(np.zeros((2, 2, 2), np.float32), np.eye(4), {})
        hash_function(NiftiVolumeResource.save(volume, "v.nii.gz"))
        hash_function(volume)
    """,
    "isinstance checks against the ABCs first": """
        from kwneuro_pydra import resources as r
        for cls in (r.VolumeResource, r.BvalResource, r.BvecResource):
            isinstance(3, cls), isinstance(object(), cls), issubclass(dict, cls)
        issubclass(r.NiftiVolumeResource, r.VolumeResource)
    """,
    "imported other modules first": """
        import dipy.reconst.dti, nibabel, scipy.ndimage, fileformats.generic  # noqa
        from tests import _workers  # noqa
    """,
    "built the tasks in another order first": """
        from kwneuro_pydra.pydra import to_task, to_workflow
        from kwneuro_pydra.workflows import dti
        to_workflow(dti.dti_pipeline)(cache_dir="/y")._checksum
        to_task(dti.estimate_dti)(cache_dir="/y")._checksum
    """,
}


@pytest.mark.slow
def test_checksums_do_not_depend_on_process_history(tmp_path: Path) -> None:
    """Each history runs in a fresh interpreter; then the same tasks are built and hashed."""
    env = child_env(PYDRA_HASH_CACHE=str(tmp_path / "h"))
    seen = {
        name: python(textwrap.dedent(history) + textwrap.dedent(CHECKSUMS), env, tmp_path).split()
        for name, history in HISTORIES.items()
    }
    first = seen["nothing first"]
    assert len(first) == len(set(first)) == 7
    assert all(checksums == first for checksums in seen.values()), seen


# Representative expectations of Pydra's own hashing; each value is hashed in a fresh
# interpreter with and without the adapter imported.
OTHERS = """
    import dataclasses, json, pathlib, sys
    import attrs
    import numpy as np
    if sys.argv[1] == "adapter":
        import kwneuro_pydra.pydra  # noqa
    from pydra.utils.hash import hash_function

    @attrs.define
    class Plain:
        a: int
        note: str = attrs.field(eq=False)

    @dataclasses.dataclass
    class Data:
        a: int

    pathlib.Path("file.txt").write_text("one")
    values = {
        "object array": np.array([1, "a", None, [2, 3]], dtype=object),
        "arrays in an object array": np.array([np.arange(3), np.arange(2)], dtype=object),
        "attrs eq=False ignored": [Plain(1, "x"), Plain(1, "y")],
        "path by string": pathlib.Path("file.txt"),
        "pure path": pathlib.PurePosixPath("a/b"),
        "dataclass": Data(1),
        "dict of paths": {"p": pathlib.Path("file.txt")},
        "function": hash_function,
        "type": Plain,
    }
    out = {name: hash_function(value) for name, value in values.items()}
    out["attrs eq=False ignored"] = [hash_function(v) for v in values["attrs eq=False ignored"]]
    pathlib.Path("file.txt").write_text("two")
    out["path after rewrite"] = hash_function(pathlib.Path("file.txt"))
    out["array"] = hash_function(np.arange(6))
    out["array reshaped"] = hash_function(np.arange(6).reshape(2, 3))
    print(json.dumps(out))
"""


def test_pydra_hashing_of_other_tasks_is_unchanged(tmp_path: Path) -> None:
    env = child_env(PYDRA_HASH_CACHE=str(tmp_path / "h"))
    script = tmp_path / "others.py"
    script.write_text(textwrap.dedent(OTHERS))
    run = f"import runpy, sys; sys.argv = ['x', '{{}}']; runpy.run_path({str(script)!r})"
    plain = json.loads(python(run.format("plain"), env, tmp_path))
    ours = json.loads(python(run.format("adapter"), env, tmp_path))
    same = {k: v for k, v in plain.items() if not k.startswith("array")}
    assert {k: ours[k] for k in same} == same
    # Pydra's own semantics, kept: eq=False fields do not count, paths by their string.
    assert ours["attrs eq=False ignored"][0] == ours["attrs eq=False ignored"][1]
    assert ours["path after rewrite"] == ours["path by string"]
    # The one deliberate difference (documented in kwneuro_pydra.pydra._hash): Pydra's numpy
    # hash omits the shape, so these two collide without the adapter, not with it.
    assert plain["array"] == plain["array reshaped"]
    assert ours["array"] != ours["array reshaped"]


def test_inputs_of_our_tasks_are_hashed_by_content(tmp_path: Path) -> None:
    """Paths by content, attrs instances by every field: only for the adapter's tasks."""
    import attrs
    import numpy as np

    from kwneuro_pydra.pydra import to_task
    from tests import _pydra_steps as s

    def checksum(**inputs: object) -> str:
        return to_task(s.read_text)(**inputs)._checksum  # type: ignore[no-any-return]

    path = tmp_path / "a.txt"
    path.write_text("one")
    before = checksum(path=path)
    path.write_text("two")
    assert checksum(path=path) != before
    copy = tmp_path / "b.txt"
    copy.write_text("two")
    assert checksum(path=copy) == checksum(path=path)  # content, not location

    def describe(a: object) -> str:
        return to_task(s.describe)(a=a)._checksum  # type: ignore[no-any-return]

    assert describe(np.arange(6.0)) != describe(np.arange(6.0).reshape(2, 3))
    assert describe(np.array([1, "a"], dtype=object)) != describe(np.array([1, "b"], object))

    @attrs.define
    class Roi:
        label: int
        note: str = attrs.field(eq=False)

    from pydra.utils.hash import hash_function  # type: ignore[import-untyped]

    from kwneuro_pydra.pydra._hash import ours

    with ours():
        assert hash_function(Roi(1, "a")) != hash_function(Roi(1, "b"))
    assert hash_function(Roi(1, "a")) == hash_function(Roi(1, "b"))

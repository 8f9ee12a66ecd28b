"""What Pydra pickles of the adapter's tasks (every job and result file), and how it hashes
their classes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydra")

import cloudpickle  # type: ignore[import-untyped]
from pydra.engine.workflow import Workflow  # type: ignore[import-untyped]
from pydra.utils.hash import Cache as HashCache  # type: ignore[import-untyped]
from pydra.utils.hash import hash_function

from kwneuro_pydra.pydra import _byname, to_task, to_workflow
from tests import _pydra_steps as steps
from tests._children import child_env, python

BY_VALUE = b"_make_skeleton_class"
"""What cloudpickle writes to rebuild a class pickled by value."""


def test_task_classes_of_importable_steps_and_pipelines_pickle_by_name() -> None:
    for function, task_class in (
        (steps.describe, to_task(steps.describe)),
        (steps.Steps.triple, to_task(steps.Steps.triple)),  # a static method's
        (steps.pipeline3, to_workflow(steps.pipeline3)),
    ):
        data = cloudpickle.dumps(task_class)
        assert BY_VALUE not in data
        assert pickle.loads(data) is task_class
        assert pickle.loads(cloudpickle.dumps(task_class.Outputs)) is task_class.Outputs
        assert task_class.__name__ == function.__name__  # what Pydra names its jobs after


def test_a_constructed_subject_workflow_pickles_no_class_by_value(tmp_path: Path) -> None:
    """A subject's workflow carries a task of each node (its job file held 17 KB a node)."""
    task = to_workflow(steps.pipeline3)(dwi="a", cache_dir=str(tmp_path))
    workflow = Workflow.construct(task, dont_cache=True)
    data = cloudpickle.dumps([task, workflow])
    assert BY_VALUE not in data
    assert len(data) < 20_000


def test_a_fresh_interpreter_resolves_the_names_to_the_classes_it_builds(tmp_path: Path) -> None:
    tasks = [
        to_task(steps.describe)(a=np.arange(6.0).reshape(2, 3), cache_dir=str(tmp_path)),
        to_workflow(steps.pipeline3)(dwi="a", cache_dir=str(tmp_path)),
    ]
    pickled = tmp_path / "tasks.pkl"
    pickled.write_bytes(cloudpickle.dumps(tasks))
    out = python(
        f"""
        import pickle
        from kwneuro_pydra.pydra import to_task, to_workflow
        from tests import _pydra_steps as s
        tasks = pickle.loads(open({str(pickled)!r}, "rb").read())
        assert type(tasks[0]) is to_task(s.describe), type(tasks[0])
        assert type(tasks[1]) is to_workflow(s.pipeline3), type(tasks[1])
        print(*[t._checksum for t in tasks])
        """,
        child_env(),
        tmp_path,
    )
    assert out.split() == [t._checksum for t in tasks]


def test_a_pipeline_that_cannot_be_imported_by_name_keeps_its_class_by_value() -> None:
    def local(dwi: str) -> str:
        return steps.fa_map(steps.estimate_dti(dwi, steps.brain_mask(dwi)))

    task_class = to_workflow(local)
    assert task_class.__module__ != _byname.__name__
    data = cloudpickle.dumps(task_class)
    assert BY_VALUE in data
    assert pickle.loads(data).__name__ == "local"


@pytest.mark.parametrize(
    "name",
    [
        "nothing",
        "_kwneuro_step:tests/_pydra_steps:missing",
        "_kwneuro_other:tests/_pydra_steps:add_one",
    ],
)
def test_other_names_are_not_found(name: str) -> None:
    with pytest.raises(AttributeError, match="has no attribute"):
        getattr(_byname, name)


def test_a_task_class_hashes_as_its_identity_without_walking_its_fields() -> None:
    """``Workflow.construct`` hashes the workflow's class for its memo: Pydra's hash walks
    every field, its type and their MROs."""
    for task_class in (to_task(steps.describe), to_workflow(steps.pipeline3)):
        cache = HashCache()
        hash_function(task_class, cache=cache)
        assert len(cache._hashes) == 1
    cache = HashCache()
    hash_function(steps.NpyVolume, cache=cache)  # any other class as Pydra hashes it
    assert len(cache._hashes) > 1

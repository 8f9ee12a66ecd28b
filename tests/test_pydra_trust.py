"""Nothing `run_subjects` reads from a (possibly shared) cache root can run code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

pytest.importorskip("pydra")

from kwneuro_pydra.pydra import (
    StepError,
    StepFailure,
    _failures,
    _workflow,
    run_subjects,
    to_workflow,
)
from tests import _pydra_steps as steps


class Planted:
    """Unpickling this creates ``marker``: proof that a planted pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Planted(marker)))


def test_pickles_planted_in_a_shared_cache_root_are_never_loaded(tmp_path: Path) -> None:
    root, marker = tmp_path / "lab-cache", tmp_path / "pwned"
    subjects = {"sub-01": {"dwi": "a"}, "sub-02": {"dwi": "bad"}}
    # Where the previous code (and Pydra, with its job cache under the cache root) looked.
    for subject, inputs in subjects.items():
        plan = _workflow.discover(steps.pipeline, inputs)
        checksum = to_workflow(steps.pipeline)(
            **inputs, cache_dir=str(root / subject), code_digest=plan.digest
        )._checksum
        for name in ("_result.pklz", "_error.pklz", "_job.pklz"):
            plant(root / ".pydra" / checksum / name, marker)
        plant(root / subject / _failures.ERRORS_DIR / "brain_mask.pkl", marker)
    results = run_subjects(
        steps.pipeline, subjects, root, worker="debug", job_cache=tmp_path / "jobs"
    )
    assert not marker.exists()
    assert results["sub-01"].outputs == "dti(a,mask(a,0.5))"
    failure = results["sub-02"].failure
    assert failure is not None and failure.step == "brain_mask"
    assert isinstance(failure.exception, ValueError) and "cannot mask bad" in str(
        failure.exception
    )
    # the records in the shared root are JSON
    (record,) = (root / "sub-02" / _failures.ERRORS_DIR).iterdir()
    assert record.suffix == ".json"


class LabError(Exception):
    """An exception class of the user's code."""


def test_failure_records_are_json_and_rebuild_no_class_but_builtins(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _failures.record(tmp_path, "step_a", LabError("the scanner was off"))
    plant(tmp_path / _failures.ERRORS_DIR / "step_b.pkl", marker)
    step, exception, traceback = _failures.read(tmp_path) or ("", None, "")
    assert not marker.exists()
    assert step == "step_a" and type(exception) is StepError
    assert isinstance(exception, RuntimeError)  # what code catching the old stand-in expects
    assert (exception.type_name, str(exception)) == (f"{__name__}.LabError", "the scanner was off")
    assert _failures.describe(exception) == "LabError: the scanner was off"
    assert pickle.loads(pickle.dumps(exception)).type_name == exception.type_name
    assert "LabError: the scanner was off" in traceback

    _failures.clear(tmp_path)
    assert not _failures.failure_recorded(tmp_path) and not marker.exists()
    _failures.record(tmp_path, "step_c", KeyError("k"))
    _failures.record(tmp_path, "step_d", UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"))
    (tmp_path / _failures.ERRORS_DIR / "step_e.json").write_text("{not json")
    assert _failures.read(tmp_path) is not None
    step, exception, _ = _failures.read(tmp_path) or ("", None, "")
    assert step == "step_c" and type(exception) is KeyError
    assert _failures.describe(exception) == "KeyError: 'k'"  # as Python prints it, not "'k'"
    (tmp_path / _failures.ERRORS_DIR / "step_c.json").unlink()
    step, exception, _ = _failures.read(tmp_path) or ("", None, "")
    assert step == "step_d" and type(exception) is StepError  # needs more than a message
    assert _failures.describe(exception).startswith("UnicodeDecodeError: 'utf-8' codec")


def test_a_failure_names_the_class_of_the_exception_once(tmp_path: Path) -> None:
    """``step 'x' failed: LabError: message``, as the user's exception would print."""
    _failures.record(tmp_path, "brain_mask", LabError("the scanner was off"))
    _failures.record(tmp_path / "empty", "fit", LabError())
    failure = StepFailure("sub-01", *(_failures.read(tmp_path) or ("", None, "")))
    assert str(failure) == "sub-01: step 'brain_mask' failed: LabError: the scanner was off"
    assert failure.reason == "step 'brain_mask' failed: LabError: the scanner was off"
    empty = StepFailure("sub-02", *(_failures.read(tmp_path / "empty") or ("", None, "")))
    assert empty.reason == "step 'fit' failed: LabError"
    builtin = StepFailure("sub-03", None, ValueError("no b=0 volume"), "")
    assert str(builtin) == "sub-03: the workflow failed: ValueError: no b=0 volume"

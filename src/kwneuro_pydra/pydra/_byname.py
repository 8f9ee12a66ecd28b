"""Our task classes pickled by name: a reference to the step, not the class's code.

Pydra builds a task class at run time (module ``types``), so cloudpickle writes each one by
value into every file Pydra pickles a task into: its fields, its function, its Outputs class
(about 17 KB a step). Pydra pickles each node's job twice and its result once, and a
subject's workflow job carries the class of each of its nodes twice (the workflow and its
execution graph: about 0.5 MB); that pickling was most of Pydra's cost per series of a job
per subject. A task class of a step or pipeline importable by module and qualified name is
named in this module instead (`name_by_reference`); a process unpickling it resolves the
name by importing the function and building its class (`to_task`, `to_workflow`: once per
process, memoized). Classes of functions defined in ``__main__`` or in a function keep
being pickled by value (a worker cannot import them by name).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["name_by_reference"]

_KINDS = ("step", "pipeline")
_PREFIX = "_kwneuro_"


def _importable(module: str, qualname: str) -> Any:
    from kwneuro_pydra.pydra._task import _importable as found

    return found(module, qualname)


def name_by_reference(task_class: Any, kind: str, function: Callable[..., Any]) -> None:
    """Name ``task_class`` (and its Outputs class) in this module, if ``function`` can be
    imported by name: cloudpickle then pickles it by reference.

    Args:
        task_class: The class `to_task` (``kind="step"``) or `to_workflow`
            (``kind="pipeline"``) built for ``function``, and returns for it again.
        kind: ``"step"`` or ``"pipeline"``.
        function: The decorated step or the pipeline function.

    Raises:
        ValueError: An unknown ``kind``.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {', '.join(map(repr, _KINDS))}")
    module, qualname = function.__module__, function.__qualname__
    if module == "__main__" or _importable(module, qualname) is not function:
        return
    name = f"{_PREFIX}{kind}:{module}:{qualname}".replace(".", "/")
    task_class.__module__ = task_class.Outputs.__module__ = __name__
    task_class.__qualname__ = name
    task_class.Outputs.__qualname__ = f"{name}.Outputs"


def __getattr__(name: str) -> Any:
    """The task class `name_by_reference` named ``name`` (pickle looks it up here)."""
    kind, _, rest = name.removeprefix(_PREFIX).partition(":")
    module, _, qualname = rest.replace("/", ".").partition(":")
    function = _importable(module, qualname) if name.startswith(_PREFIX) and qualname else None
    if kind == "step" and function is not None:
        from kwneuro_pydra.pydra._task import to_task

        return to_task(function)
    if kind == "pipeline" and function is not None:
        from kwneuro_pydra.pydra._workflow import to_workflow

        return to_workflow(function)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

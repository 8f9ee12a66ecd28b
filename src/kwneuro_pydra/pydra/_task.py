"""`cacheable` steps as Pydra python tasks (imports Pydra)."""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import os
import shutil
import time
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydra.compose import python  # type: ignore[import-untyped]

from kwneuro_pydra import cache as _cache
from kwneuro_pydra._files import write_new
from kwneuro_pydra._kwneuro import AdoptedStep, adopt, is_upstream_step
from kwneuro_pydra._step import Step
from kwneuro_pydra.pydra import _failures, _pickling  # noqa: F401  (_pickling registers)
from kwneuro_pydra.pydra._byname import name_by_reference
from kwneuro_pydra.pydra._hash import stable_checksums  # registers our hashing in every process
from kwneuro_pydra.resources import accepting

__all__ = [
    "FORCE_ENV",
    "NOT_STORED",
    "RESERVED",
    "SERVE_ENV",
    "absolute_cache_dir",
    "forced_steps",
    "input_name",
    "node_step",
    "output_names",
    "step_function",
    "to_task",
]

_log = logging.getLogger("kwneuro_pydra.pydra")

RESERVED = frozenset({"function", "split", "combine", "cache_dir", "code_digest"})
"""Parameter names a step cannot have: Pydra's own, and the inputs the adapter adds."""
FORCE_ENV = "KWNEURO_PYDRA_FORCE"
"""Environment variable naming (comma-separated) the steps a running node must recompute."""
SERVE_ENV = "KWNEURO_PYDRA_SERVE"
"""Environment variable set (to 1) while `run_subjects` submits: constructing a workflow
then serves the step calls its cache answers instead of adding nodes for them."""


def node_step(function: Callable[..., Any]) -> Step:
    """Return the `Step` of a function decorated by our `cacheable` or upstream kwneuro's.

    Raises:
        TypeError: ``function`` is not a decorated step.
    """
    if is_upstream_step(function):
        function = adopt(function)
    step = _cache.step_of(function)
    if step is None:
        raise TypeError(f"{function!r} is not a @cacheable step")
    return step


SELF_INPUT = "self_"
"""Input name of a decorated method's instance (attrs cannot take a field named ``self``)."""


def input_name(parameter: str) -> str:
    """The name of the task input that carries a step's ``parameter``."""
    return SELF_INPUT if parameter == "self" else parameter


def _importable(module: str, qualname: str) -> Any:
    if "<locals>" in qualname:
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return found


def _not_importable(step: Step) -> str:
    return (
        f"step {step.name!r} ({step.fn.__module__}.{step.fn.__qualname__}) cannot be "
        "imported by name: Pydra workers load tasks by module and name, so define the step "
        "at module level or as a static method of a module-level class"
    )


def step_function(step: Step) -> Callable[..., Any]:
    """Return the importable decorated function whose `Step` is ``step``.

    Raises:
        ValueError: It cannot be imported by its module and qualified name.
    """
    found = _importable(step.fn.__module__, step.fn.__qualname__)
    if found is None or node_step(found) is not step:
        raise ValueError(_not_importable(step))
    return found  # type: ignore[no-any-return]


def _outputs(step: Step) -> tuple[list[str], list[Any], type | None]:
    returned = step.type_hints().get("return", Any)
    if isinstance(step, AdoptedStep) and step.spec is None:
        returned = Any  # kwneuro's _cache_load returns other classes than its steps annotate
    fields = getattr(returned, "_fields", None)
    if isinstance(returned, type) and issubclass(returned, tuple) and fields:
        hints = typing.get_type_hints(returned)
        return list(fields), [hints.get(f, Any) for f in fields], returned
    args = typing.get_args(returned)
    if typing.get_origin(returned) is tuple and args and ... not in args:
        return [f"out{i}" for i in range(1, len(args) + 1)], list(args), None
    return ["out"], [returned], None


def output_names(function: Callable[..., Any]) -> list[str]:
    """Names of the outputs `to_task` gives the task of a step."""
    return _outputs(node_step(function))[0]


def _check(step: Step) -> None:
    for param in step.signature.parameters.values():
        where = f"step {step.name!r}: parameter {param.name!r}"
        if param.name in RESERVED:
            raise ValueError(
                f"{where} has a name reserved by Pydra or by the adapter "
                f"({', '.join(sorted(RESERVED))}): rename it"
            )
        if param.kind is param.POSITIONAL_ONLY:
            raise ValueError(
                f"{where} is positional-only: Pydra passes every input by keyword, remove "
                "the '/' from the signature"
            )
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ValueError(f"{where}: *args and **kwargs cannot be Pydra inputs")
        if param.name == SELF_INPUT and "self" in step.signature.parameters:
            raise ValueError(
                f"{where}: the method's instance is the task input {SELF_INPUT!r}; rename "
                "the parameter"
            )


PYDRA_DOC = "The kwneuro {kind} {name}."
"""Docstring of generated runners: Pydra parses a docstring's sections and chokes on some."""


@functools.cache
def to_task(function: Callable[..., Any]) -> Any:
    """Return the Pydra python task class of a `cacheable` step (cached per step).

    See `kwneuro_pydra.pydra.to_task` for the contract.
    """
    step = node_step(function)
    twin = adopt(function) if is_upstream_step(function) else function
    if twin is not function and _importable(step.fn.__module__, step.fn.__qualname__) is twin:
        return to_task(twin)  # an old reference to a kwneuro step adopted in place
    _check(step)
    if _importable(step.fn.__module__, step.fn.__qualname__) is not function:
        raise ValueError(_not_importable(step))
    names, types, named = _outputs(step)
    hints = step.type_hints()

    # One runner per step, carrying wraps() (Pydra reads the signature through it). The body
    # stays one call of a module-level function: cloudpickle pickles the runner by value.
    @functools.wraps(function, updated=())
    def runner(**kwargs: Any) -> Any:
        return _run_node(function, kwargs)

    runner.__doc__ = PYDRA_DOC.format(kind="step", name=step.name)  # Pydra parses docstrings

    params = [  # a method's instance is an input like any other, by content
        p.replace(name=input_name(p.name), annotation=accepting(hints.get(p.name, Any)))
        for p in step.signature.parameters.values()
    ]
    cache_dir = inspect.Parameter(
        "cache_dir", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=str | None
    )
    returned = types[0] if len(types) == 1 else tuple[tuple(types)]  # type: ignore[misc]
    runner.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [*params, cache_dir], return_annotation=returned
    )
    runner.__annotations__ = {p.name: p.annotation for p in params}
    runner.__annotations__.update(cache_dir=str | None, **{"return": returned})
    for extra in ("__kwneuro_step__", "_cache_info"):  # never pickle a Step by value
        runner.__dict__.pop(extra, None)
    outputs = {
        n: python.out(name=n, type=t, help=f"output {n} of kwneuro step {step.name}")
        for n, t in zip(names, types, strict=True)
    }
    cache_dir_input = python.arg(
        name="cache_dir", type=str | None, default=None, converter=absolute_cache_dir
    )
    task = python.define(
        runner, inputs={"cache_dir": cache_dir_input}, outputs=outputs, name=step.name
    )
    task._kwneuro_named_tuple = named
    stable_checksums(task, step.code, "function")
    name_by_reference(task, "step", function)  # pickled by name, not by value
    return task


def forced_steps() -> set[str]:
    """The steps to recompute in this run (`run_subjects` sets them for every node)."""
    return {s for s in os.environ.get(FORCE_ENV, "").split(",") if s}


def absolute_cache_dir(value: Any) -> Any:
    """Converter of every ``cache_dir`` input: absolute where the task is built.

    Hashed as a location (its string), never by content: it fills up while nodes run. A
    relative one is resolved now, since a node runs with its job directory as working
    directory.
    """
    if isinstance(value, str | os.PathLike):
        return str(Path(value).absolute())
    return value  # None, or what Pydra passes while it splits (a state array, a lazy field)


def _run_node(function: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Run one step as a node: inside ``Cache(cache_dir)``, or plainly without one."""
    step = node_step(function)
    cache_dir = kwargs.pop("cache_dir", None)
    if "self" in step.signature.parameters and SELF_INPUT in kwargs:
        kwargs["self"] = kwargs.pop(SELF_INPUT)
    start = time.perf_counter()
    where = f"[{Path(cache_dir).name}] " if cache_dir else ""
    try:
        if cache_dir is None:
            # a plain call, even inside a surrounding Cache (the debug worker shares the thread)
            with _cache.handling_steps(None):  # type: ignore[arg-type]
                result = step.fn(**kwargs)
        else:
            with (
                _cache.Cache(cache_dir, force=forced_steps() & {step.name}) as cache,
                warnings.catch_warnings(),
            ):
                # said once by run_subjects, in the process that submitted (see _keep)
                warnings.simplefilter("ignore", _cache.NotStoredWarning)
                result = cache.call(step, **kwargs)
                if cache.not_stored:  # the step's, or a step's it called inside
                    result = _keep(step, result, cache_dir, cache.not_stored)
    except BaseException as error:
        error.add_note(f"[kwneuro] step {step.name!r} failed (cache_dir={cache_dir})")
        _log.info("%s%s: failed (%s: %s)", where, step.name, type(error).__name__, error)
        if cache_dir is not None:
            _failures.record(Path(cache_dir), step.name, error)
        raise
    _log.info("%s%s: done in %.2f s", where, step.name, time.perf_counter() - start)
    if len(output_names(function)) > 1:
        return tuple(result)
    return result


NOT_STORED = "kwneuro-not-stored"
"""Folder of a node's job directory holding the result its cache could not store; its
record (the subject's cache folder, and the `NotStoredWarning`'s text by step) is
``kwneuro-not-stored.json`` beside it."""


def _keep(step: Step, result: Any, cache_dir: str, unstored: dict[str, str]) -> Any:
    """The result a cache could not store, saved as the cache saves it, in the node's job
    directory (the working directory Pydra runs the node in, kept until a later run):
    returned file-backed, as a stored one is, for the steps after it and the derivatives.
    Returned as it is, in memory, when it cannot be saved there either (a full disk).
    Either way the warnings (``unstored``: the step's, and those of steps it called inside,
    whose results it used) are recorded beside it, for `run_subjects` to give where the run
    was submitted (a worker's warnings reach no console).
    """
    folder = Path.cwd() / NOT_STORED
    kept = result
    if step.name in unstored:
        try:
            folder.mkdir(mode=0o700)
            step.save(result, folder)
            kept = step.load(folder)
        except OSError as error:
            shutil.rmtree(folder, ignore_errors=True)
            unstored = {
                **unstored,
                step.name: f"{unstored[step.name]}; nor can it be kept in {folder} ({error}): "
                "it is held in memory",
            }
    why = {"cache_dir": cache_dir, "steps": unstored}
    try:
        write_new(folder.with_name(f"{NOT_STORED}.json"), json.dumps(why).encode())
    except OSError as error:
        said = "; ".join(unstored.values())
        _log.warning("%s; nor can this be recorded for the run (%s)", said, error)
    return kept

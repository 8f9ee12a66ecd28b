"""Pipeline functions as Pydra workflows: discovery, code digest, construction (imports Pydra)."""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
from pydra.compose import workflow  # type: ignore[import-untyped]
from pydra.utils.typing import is_lazy  # type: ignore[import-untyped]

from kwneuro_pydra import cache as _cache
from kwneuro_pydra._code import code_fingerprint
from kwneuro_pydra._step import Step
from kwneuro_pydra.pydra._byname import name_by_reference
from kwneuro_pydra.pydra._hash import stable_checksums
from kwneuro_pydra.pydra._lazy import Lazy, is_concrete, producers_of, unwrap
from kwneuro_pydra.pydra._task import (
    PYDRA_DOC,
    RESERVED,
    SERVE_ENV,
    absolute_cache_dir,
    forced_steps,
    input_name,
    node_step,
    output_names,
    step_function,
    to_task,
)
from kwneuro_pydra.resources import CONVERSION_HINT, accepting, is_kwneuro_value

__all__ = ["Calls", "discover", "to_workflow"]


@attrs.frozen
class Calls:
    """What a dry call of a pipeline found: its steps, their dependencies and its outputs.

    (The state of each step in a subject's cache is a `kwneuro_pydra._plan.Plan`.)

    Attributes:
        steps: Decorated function of each step called, by step name.
        depends: Names of the steps each step's arguments come from, by step name.
        n_outputs: 1 for a single returned value, else the length of the returned tuple.
    """

    steps: dict[str, Callable[..., Any]]
    depends: dict[str, frozenset[str]]
    n_outputs: int

    @property
    def digest(self) -> str:
        """Digest of the code and outputs of every step: changes when any step is edited."""
        parts = [
            f"{name}:{node_step(fn).code}:{','.join(output_names(fn))}"
            for name, fn in sorted(self.steps.items())
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def dependents(self, names: set[str]) -> set[str]:
        """Return ``names`` and every step that depends on one of them, transitively."""
        closure = set(names)
        changed = True
        while changed:
            changed = False
            for step, sources in self.depends.items():
                if step not in closure and sources & closure:
                    closure.add(step)
                    changed = True
        return closure


def _lazy_outputs(step: Step, fields: list[Any], node: str) -> Any:
    function = step_function(step)
    names = output_names(function)
    producers = frozenset({step.name})
    if len(names) == 1:
        kind = step.type_hints().get("return")  # as annotated: for its methods
        return Lazy(fields[0], f"the result of step {node!r}", producers, kind)
    values = [
        Lazy(f, f"output {n!r} of step {node!r}", producers)
        for n, f in zip(names, fields, strict=True)
    ]
    named = to_task(function)._kwneuro_named_tuple
    return named(*values) if named is not None else tuple(values)


class _Recorder:
    """Handler of a dry call: records the steps called and what flows between them."""

    def __init__(self) -> None:
        self.steps: dict[str, Callable[..., Any]] = {}
        self.depends: dict[str, frozenset[str]] = {}

    def _run_step(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        function = step_function(step)
        to_task(function)  # refuse what Pydra cannot take, at once
        bound = step.signature.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            unwrap(value, f"argument {name!r} of step {step.name!r}")
        self.steps[step.name] = function
        sources = producers_of(list(bound.arguments.values()))
        self.depends[step.name] = self.depends.get(step.name, frozenset()) | sources
        return _lazy_outputs(step, [None] * len(output_names(function)), step.name)


@functools.cache
def _annotations(pipeline: Callable[..., Any]) -> dict[str, Any]:
    """A pipeline's evaluated annotations; none when they do not evaluate (Pydra: Any)."""
    try:
        return typing.get_type_hints(pipeline)
    except Exception:  # annotations that do not evaluate
        return {}


def discover(pipeline: Callable[..., Any], values: Mapping[str, Any] | None = None) -> Calls:
    """Dry-call ``pipeline``: step calls are recorded, not run.

    Args:
        pipeline: The pipeline function.
        values: Real values of some inputs; the others stand in as lazy values (defaults
            are used where the signature has them).

    Raises:
        LazyValueError: The pipeline uses a step's result other than by passing it on.
    """
    values = dict(values or {})
    arguments = {}
    for name, param in inspect.signature(pipeline).parameters.items():
        if name in values:
            arguments[name] = values[name]
        elif param.default is not param.empty:
            arguments[name] = param.default
        else:
            kind = _annotations(pipeline).get(name)
            arguments[name] = Lazy(None, f"workflow input {name!r}", frozenset(), kind)
    recorder = _Recorder()
    with _cache.handling_steps(recorder):
        returned = pipeline(**arguments)
    n_outputs = len(returned) if type(returned) is tuple else 1
    return Calls(recorder.steps, recorder.depends, n_outputs)


_NOT_STORED = object()


class _Builder:
    """Handler active while Pydra constructs the workflow: step calls become nodes.

    Under `run_subjects` (``SERVE_ENV`` set), a step call whose arguments all exist already
    and whose result the cache holds is served from the cache at once: it is never
    scheduled. (Pydra memoizes constructions per process; `run_subjects` clears that memo
    around its submissions, so a served entry removed since is scheduled again.)
    """

    def __init__(self, cache_dir: Any) -> None:
        self.cache_dir = cache_dir
        self.counts: dict[str, int] = {}

    def _stored(self, step: Step, arguments: dict[str, Any]) -> Any:
        if (
            not os.environ.get(SERVE_ENV)
            or not isinstance(self.cache_dir, str)
            or step.name in forced_steps()
            or not all(is_concrete(value) for value in arguments.values())
        ):
            return _NOT_STORED
        found = _cache.Cache(Path(self.cache_dir)).lookup(step, **arguments)
        return found.value if found.entry is not None else _NOT_STORED

    def _run_step(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        function = step_function(step)
        task = to_task(function)
        bound = step.signature.bind(*args, **kwargs)
        if (stored := self._stored(step, bound.arguments)) is not _NOT_STORED:
            return stored
        inputs = {
            input_name(name): unwrap(value, f"argument {name!r} of step {step.name!r}")
            for name, value in bound.arguments.items()
        }
        n = self.counts[step.name] = self.counts.get(step.name, 0) + 1
        node = step.name if n == 1 else f"{step.name}_{n}"
        try:
            instance = task(**inputs, cache_dir=self.cache_dir)
        except TypeError as error:
            if "'kwneuro." in str(error) or any(map(is_kwneuro_value, inputs.values())):
                error.add_note(CONVERSION_HINT)  # one library's resource where the other's goes
            raise
        outputs = workflow.add(instance, name=node)
        fields = [getattr(outputs, name) for name in output_names(function)]
        return _lazy_outputs(step, fields, node)


def _construct(pipeline: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Body of every workflow constructor (module level: pickled by reference)."""
    cache_dir = kwargs.pop("cache_dir", None)
    kwargs.pop("code_digest", None)
    kinds = _annotations(pipeline)
    arguments = {
        name: Lazy(value, f"workflow input {name!r}", frozenset(), kinds.get(name))
        if is_lazy(value)
        else value
        for name, value in kwargs.items()
    }
    with _cache.handling_steps(_Builder(cache_dir)):
        returned = pipeline(**arguments)
    if type(returned) is tuple:
        return tuple(
            unwrap(v, f"output {i} of {pipeline.__name__}") for i, v in enumerate(returned, 1)
        )
    return unwrap(returned, f"the result of {pipeline.__name__}")


@functools.cache
def to_workflow(pipeline: Callable[..., Any]) -> Any:
    """See `kwneuro_pydra.pydra.to_workflow`."""
    signature = inspect.signature(pipeline)
    for param in signature.parameters.values():
        if param.name in RESERVED or (
            param.kind is not param.POSITIONAL_OR_KEYWORD
            and (param.kind is not param.KEYWORD_ONLY)
        ):
            raise ValueError(
                f"pipeline {pipeline.__qualname__}: parameter {param.name!r} cannot be a Pydra "
                f"input (reserved names: {', '.join(sorted(RESERVED))}; no positional-only "
                "parameters, *args or **kwargs)"
            )
    calls = discover(pipeline)
    hints = _annotations(pipeline)

    @functools.wraps(pipeline, updated=())
    def constructor(**kwargs: Any) -> Any:
        return _construct(pipeline, kwargs)

    constructor.__doc__ = PYDRA_DOC.format(kind="pipeline", name=pipeline.__name__)

    params = [
        p.replace(annotation=accepting(hints.get(p.name, Any)))  # kwneuro's twins too
        for p in signature.parameters.values()
    ]
    extra = [
        inspect.Parameter(
            "cache_dir", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=str | None
        ),
        inspect.Parameter(
            "code_digest", inspect.Parameter.KEYWORD_ONLY, default=calls.digest, annotation=str
        ),
    ]
    constructor.__signature__ = inspect.Signature(params + extra)  # type: ignore[attr-defined]
    constructor.__annotations__ = {p.name: p.annotation for p in params + extra}
    names = ["out"] if calls.n_outputs == 1 else [f"out{i}" for i in range(1, calls.n_outputs + 1)]
    cache_dir_input = workflow.arg(
        name="cache_dir", type=str | None, default=None, converter=absolute_cache_dir
    )
    task = workflow.define(
        constructor, inputs={"cache_dir": cache_dir_input}, outputs=names, name=pipeline.__name__
    )
    stable_checksums(task, code_fingerprint(pipeline), "constructor")
    name_by_reference(task, "pipeline", pipeline)  # pickled by name, not by value
    return task

"""What a pipeline's steps would do for one subject's cache: cached, stale or missing.

Replays the pipeline with a handler that only looks into the cache (never computes), so the
answer costs one lookup per step. The command line uses it for ``status``, to count the work
of a run, and to serve subjects whose every step is cached without scheduling anything;
`kwneuro_pydra.pydra.run_subjects` reads each subject's outputs back with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from kwneuro_pydra._step import Step
from kwneuro_pydra._store import Entry
from kwneuro_pydra.cache import Cache, StepState, handling_steps, step_of

__all__ = ["Plan", "StepState", "plan"]


@attrs.frozen
class Plan:
    """The state of each step of a pipeline for one subject.

    Attributes:
        states: Step name -> its `StepState`, in the order of the ``steps`` given to `plan`
            (else in the order the pipeline calls them, up to the first that is not cached).
        entries: Step name -> the entry that serves it, for the cached steps.
        outputs: What the pipeline returns when every step is cached, else None.
        complete: True when every step is cached (``outputs`` is then what it returns).
    """

    states: dict[str, StepState]
    entries: dict[str, Entry]
    outputs: Any
    complete: bool


class _Stop(Exception):
    """A step is not cached: what follows cannot be looked up."""


class _CacheOnly:
    """Step handler that serves calls from a cache and records what it finds."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.states: dict[str, StepState] = {}
        self.entries: dict[str, Entry] = {}

    def _run_step(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        found = self.cache.lookup(step, *args, **kwargs)
        self.states[step.name] = found.state
        if found.entry is None:
            raise _Stop
        self.entries[step.name] = found.entry
        return found.value


def plan(
    pipeline: Callable[..., Any],
    inputs: Mapping[str, Any],
    cache_dir: Path,
    steps: Sequence[Callable[..., Any]] | None = None,
) -> Plan:
    """Look up every step call of ``pipeline(**inputs)`` in ``Cache(cache_dir)``.

    Nothing is computed and no entry is written (a cache folder that does not exist is not
    made); the digests of large input files are memoised in the cache, as a call in it would,
    so the next look in another process does not read them again. Steps after the first that
    is not cached are `StepState.MISSING`: their inputs do not exist yet.

    Args:
        pipeline: A pipeline of `cacheable` steps.
        inputs: Its arguments.
        cache_dir: The subject's cache folder.
        steps: The `cacheable` functions the pipeline calls, in the order to report them;
            None: the steps the pipeline calls until one is not cached.

    Returns:
        The `Plan`.

    Raises:
        TypeError: One of ``steps`` is not `cacheable`.
    """
    names = []
    for function in steps or ():
        found = step_of(function)
        if found is None:
            raise TypeError(f"{function!r} is not a @cacheable step")
        names.append(found.name)
    if not cache_dir.is_dir():
        return Plan(dict.fromkeys(names, StepState.MISSING), {}, None, complete=False)
    cache = Cache(cache_dir)
    handler = _CacheOnly(cache)
    outputs, stopped = None, False
    try:  # in the cache: the digests of large inputs persist, the next look reads none again
        with cache, handling_steps(handler):
            outputs = pipeline(**inputs)
    except _Stop:
        stopped = True
    reported = names if steps is not None else list(handler.states)
    states = {name: handler.states.get(name, StepState.MISSING) for name in reported}
    complete = not stopped and all(s is StepState.CACHED for s in states.values())
    return Plan(states, handler.entries, outputs if complete else None, complete)

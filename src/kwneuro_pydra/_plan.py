"""What a pipeline's steps would do for one subject's cache: cached, stale or missing.

Replays the pipeline with a handler that only looks into the cache (never computes), so the
answer costs one lookup per step. The command line uses it for ``status``, to count the work
of a run, and to serve subjects whose every step is cached without scheduling anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from kwneuro_pydra._step import Step
from kwneuro_pydra._store import Entry
from kwneuro_pydra.cache import Cache, handling_steps, step_of

__all__ = ["CACHED", "MISSING", "STALE", "Plan", "plan"]

CACHED, STALE, MISSING = "cached", "stale", "missing"
_CODE_CHANGED = "the step's code changed since the entry was made"


@attrs.frozen
class Plan:
    """The state of each step of a pipeline for one subject.

    Attributes:
        states: Step name -> `CACHED`, `STALE` (an entry of other code only) or `MISSING`,
            in the order of the ``steps`` given to `plan`.
        entries: Step name -> the entry that serves it, for the cached steps.
        outputs: What the pipeline returns when every step is cached, else None.
    """

    states: dict[str, str]
    entries: dict[str, Entry]
    outputs: Any

    @property
    def complete(self) -> bool:
        """True when every step is cached."""
        return all(state == CACHED for state in self.states.values())


class _Stop(Exception):
    """A step is not cached: what follows cannot be looked up."""


class _Lookup:
    """Step handler that serves calls from a cache and records what it finds."""

    def __init__(self, cache: Cache, functions: Mapping[str, Callable[..., Any]]) -> None:
        self.cache = cache
        self.functions = functions
        self.states: dict[str, str] = {}
        self.entries: dict[str, Entry] = {}

    def _run_step(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        served = self.cache._served(step, args, kwargs)
        if served is not None:
            self.states[step.name] = CACHED
            self.entries[step.name] = served[0]
            return served[1]
        explanation = self.cache.explain(self.functions[step.name], *args, **kwargs)
        stale = explanation.closest is not None and explanation.reasons == (_CODE_CHANGED,)
        self.states[step.name] = STALE if stale else MISSING
        raise _Stop


def plan(
    pipeline: Callable[..., Any],
    inputs: Mapping[str, Any],
    cache_dir: Path,
    steps: Sequence[Callable[..., Any]],
) -> Plan:
    """Look up every step call of ``pipeline(**inputs)`` in ``Cache(cache_dir)``.

    Nothing is computed and no entry is written (a cache folder that does not exist is not
    made); the digests of large input files are memoised in the cache, as a call in it would,
    so the next look in another process does not read them again. Steps after the first that
    is not cached are `MISSING`: their inputs do not exist yet.

    Args:
        pipeline: A pipeline of `cacheable` steps.
        inputs: Its arguments.
        cache_dir: The subject's cache folder.
        steps: The `cacheable` functions the pipeline calls, in the order to report them.

    Returns:
        The `Plan`.

    Raises:
        TypeError: One of ``steps`` is not `cacheable`.
    """
    functions = {}
    for function in steps:
        found = step_of(function)
        if found is None:
            raise TypeError(f"{function!r} is not a @cacheable step")
        functions[found.name] = function
    if not cache_dir.is_dir():
        return Plan(dict.fromkeys(functions, MISSING), {}, None)
    cache = Cache(cache_dir)
    lookup = _Lookup(cache, functions)
    try:  # in the cache: the digests of large inputs persist, the next look reads none again
        with cache, handling_steps(lookup):
            outputs = pipeline(**inputs)
    except _Stop:
        outputs = None
    states = {name: lookup.states.get(name, MISSING) for name in functions}
    complete = all(s == CACHED for s in states.values())
    return Plan(states, lookup.entries, outputs if complete else None)

"""Steps defined in ``__main__`` (a script, a notebook) travel to workers by value.

cloudpickle pickles a function of ``__main__`` by value, with what it references. A
`cacheable` wrapper references the cache's context variable (through ``ContextVar.get``),
which pickle refuses; registered here, that one variable is pickled by reference, as the
variable of the process that loads it. Every other context variable is still refused.
Imported by `kwneuro_pydra.pydra._task`, which every pickled task of the adapter references,
so worker processes that pickle results register too.
"""

from __future__ import annotations

import contextvars
import copyreg
from typing import Any

from kwneuro_pydra import cache as _cache

__all__: list[str] = []


def _handler_variable() -> contextvars.ContextVar[Any]:
    return _cache._HANDLER


def _reduce(variable: contextvars.ContextVar[Any]) -> tuple[Any, tuple[()]]:
    if variable is _cache._HANDLER:
        return _handler_variable, ()
    raise TypeError(f"cannot pickle {type(variable).__name__!r} object")


copyreg.pickle(contextvars.ContextVar, _reduce)

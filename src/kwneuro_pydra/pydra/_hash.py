"""How Pydra hashes the adapter's tasks and their inputs (imports Pydra).

Registered when this module is imported. Every pickled task of the adapter references
`kwneuro_pydra.pydra._task`, which imports this module, so worker processes (forked, or a
fresh interpreter loading a Slurm job) register too.

**Checksums of our tasks** (`stable_checksums`): Pydra hashes a task's function from its
source (a lookup a worker cannot repeat for a step defined in ``__main__`` or a notebook)
and its Outputs class through each output type's ``__dict__`` and ``__annotations__``
(which change with process history: an ABC's ``_abc_impl`` caches after ``isinstance``
checks, say). Our task classes hash instead an identity fixed when the class is built: the
step's code fingerprint, its name and its outputs' names and types by qualified name. The
class itself, where Pydra hashes one (``Workflow.construct`` keys its memo of constructed
workflows on the workflow's class, ``Task.__eq__`` compares classes), hashes as that identity
too: Pydra's hash of a class walks its fields, their types and their MROs (about 40 ms for a
pipeline's workflow class, once for each subject's workflow run by a worker).

**Inputs of our tasks** are hashed with our `fingerprint` where it applies:

- ``pathlib.Path``: an existing file by content (memoized by stat), like the eager cache
  key; Pydra hashes a path by its string, so a rewritten input file would give a stale hit.
- Dataclasses, attrs classes, classes with ``__fingerprint__`` or registered with
  ``fingerprint.register``: by our fingerprint (Pydra's skips attrs fields with
  ``eq=False`` and hashes a dataclass through its ``__dict__``).

Everything else, and every task that is not ours, keeps Pydra's hashing, with one deliberate
difference for everyone in the process:

- ``numpy.ndarray`` and numpy scalars: Pydra's hash omits dtype and shape (``arange(6)`` and
  its reshape to 2 x 3 collide: one returns the other's cached result, and
  ``Workflow.construct`` reuses a workflow built for the other). Ours mixes in dtype, shape
  and memory order. Object-dtype arrays, which have no fingerprint, keep Pydra's hash.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import pathlib
import typing
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import numpy as np
from pydra.compose.base import Out  # type: ignore[import-untyped]
from pydra.utils.general import get_fields  # type: ignore[import-untyped]
from pydra.utils.hash import Cache as HashCache  # type: ignore[import-untyped]
from pydra.utils.hash import bytes_repr, hash_function, register_serializer

from kwneuro_pydra._fingerprint import fingerprint, has_handler

__all__ = ["ours", "register_pydra_hash", "stable_checksums", "type_name"]

_PREFIX = b"kwneuro-fingerprint:"
_OURS: contextvars.ContextVar[bool] = contextvars.ContextVar("kwneuro_pydra_ours", default=False)

Serializer = Callable[[Any, HashCache], Iterator[bytes]]


def _fingerprint_or(fallback: Serializer, obj: object, cache: HashCache) -> Iterator[bytes]:
    digest = fingerprint(obj)
    if digest is None:  # an object array, a __fingerprint__ returning something unsupported
        yield from fallback(obj, cache)
        return
    # No (path, mtime) key first: that would route through Pydra's persistent hash memo,
    # which keys on (path, mtime) only; our own memo keys on device/inode/size/mtime/ctime.
    yield _PREFIX + digest.encode()


def register_pydra_hash(cls: type) -> type:
    """Make Pydra hash instances of ``cls`` (and its subclasses) by our `fingerprint`.

    For every task in the process, not only the adapter's: use it for your own classes.
    Inputs of the adapter's tasks that are dataclass or attrs instances, or whose class has a
    ``__fingerprint__`` method or was registered with ``fingerprint.register``, are hashed
    that way already, unless Pydra has a serializer of its own for one of their base classes
    (a subclass of ``dict``, ``list``, ``str`` ...): call this for those. Where our
    fingerprint has no answer for an instance, Pydra's previous serializer for ``cls`` is
    used. Process-global; call it at import of the module that defines ``cls`` so that every
    worker process registers too.

    Args:
        cls: The class to register.

    Returns:
        ``cls`` unchanged, so that this works as a class decorator.
    """
    register_serializer(cls, functools.partial(_fingerprint_or, bytes_repr.dispatch(cls)))
    return cls


def _ours_only(fallback: Serializer, applies: Callable[[type], bool]) -> Serializer:
    """A serializer that uses our fingerprint for inputs of our tasks where ``applies``."""

    def serializer(obj: object, cache: HashCache) -> Iterator[bytes]:
        if _OURS.get() and applies(type(obj)):
            return _fingerprint_or(fallback, obj, cache)
        return fallback(obj, cache)

    return serializer


def _fingerprinted_class(cls: type) -> bool:
    return (
        getattr(cls, "__fingerprint__", None) is not None
        or has_handler(cls)
        or dataclasses.is_dataclass(cls)
        or attrs.has(cls)
    )


@contextlib.contextmanager
def ours() -> Iterator[None]:
    """Hash as for the inputs of one of our tasks in this context (see the module doc)."""
    token = _OURS.set(True)
    try:
        yield
    finally:
        _OURS.reset(token)


def type_name(annotation: Any) -> str:
    """A type's qualified name (``module.Qualname``); ``repr`` for a generic or a union."""
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return f"{annotation.__module__}.{annotation.__qualname__}"
    return repr(annotation)


IDENTITY = "_kwneuro_identity"
"""Class attribute of our task classes: the identity hashed in place of code and Outputs."""


def stable_checksums(task_class: Any, code: str, skip: str) -> None:
    """Give an adapter task class checksums that depend only on its inputs and ``code``.

    Args:
        task_class: A class made by ``python.define`` or ``workflow.define``.
        code: Fingerprint of what the task runs (a step's or a pipeline's code).
        skip: The input Pydra adds for the code itself (``function`` or ``constructor``),
            hashed through ``code`` instead.
    """
    outputs = [
        f"{field.name}:{type_name(field.type)}"
        for field in get_fields(task_class.Outputs)
        if isinstance(field, Out)
    ]
    identity = "\n".join([task_class.__name__, code, *outputs])
    setattr(task_class, IDENTITY, (skip, hashlib.sha256(identity.encode()).hexdigest()))
    task_class._compute_hashes = _compute_hashes


def _compute_hashes(self: Any) -> tuple[str, dict[str, str]]:
    """`Task._compute_hashes` of our tasks: inputs by our hashing, code by the identity."""
    skip, identity = getattr(type(self), IDENTITY)
    values: dict[str, Any] = {}
    for field in get_fields(self):
        value = getattr(self, field.name)
        if isinstance(field, Out) or field.name == skip or value is attrs.NOTHING:
            continue
        values[field.name] = value
    values[skip] = identity
    cache = HashCache()
    with ours():
        hashes = {name: hash_function(value, cache=cache) for name, value in values.items()}
    return hash_function(sorted(hashes.items())), hashes


def _identified_or(fallback: Serializer) -> Serializer:
    """A serializer of classes hashing one of our task classes by its identity."""

    def serializer(cls: Any, cache: HashCache) -> Iterator[bytes]:
        identity = cls.__dict__.get(IDENTITY) if isinstance(cls, type) else None
        if identity is None:  # not ours, or a subclass of ours
            return fallback(cls, cache)
        return iter([b"kwneuro-task:" + identity[1].encode()])

    return serializer


def _register() -> None:
    if getattr(bytes_repr.dispatch(object), "_kwneuro", False):
        return
    register_serializer(type, _identified_or(bytes_repr.dispatch(type)))
    register_pydra_hash(np.ndarray)
    register_pydra_hash(np.generic)
    register_serializer(
        pathlib.Path, _ours_only(bytes_repr.dispatch(pathlib.Path), lambda _: True)
    )
    generic = _ours_only(bytes_repr.dispatch(object), _fingerprinted_class)
    generic._kwneuro = True  # type: ignore[attr-defined]
    register_serializer(object, generic)


_register()

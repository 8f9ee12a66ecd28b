"""Pydra's input hashing routed through our `fingerprint` (imports Pydra).

Registered when this module is imported. Every pickled task of the adapter references
`kwneuro_pydra.pydra._task`, which imports this module, so worker processes (forked, or a
fresh interpreter loading a Slurm job) register too.

- ``numpy.ndarray``: Pydra's own hash omits shape and dtype (``arange(6)`` and its reshape
  collide); ours mixes in dtype, shape and memory order.
- ``pathlib.PurePath``: Pydra hashes a path by its string; ours hashes an existing file by
  content (memoized by stat), like the eager cache key. Otherwise a node (or a per-subject
  workflow) whose input file was rewritten would return its stale result.
- Dataclasses, attrs classes, and any other class that has ``__fingerprint__`` or was
  registered with ``fingerprint.register`` (Pydra's own hash of attrs instances skips fields
  declared ``eq=False``): through a wrapper around Pydra's generic default serializer (the
  ``object`` entry). Other classes keep Pydra's default unchanged.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator

import attrs
import numpy as np
from pydra.utils.hash import Cache as HashCache  # type: ignore[import-untyped]
from pydra.utils.hash import bytes_repr, register_serializer

from kwneuro_pydra._fingerprint import _by_type, fingerprint

__all__ = ["register_pydra_hash"]

_PREFIX = b"kwneuro-fingerprint:"
_PYDRA_DEFAULT = bytes_repr.dispatch(object)
_TOKEN_DEFAULT = _by_type.dispatch(object)


def _fingerprint_bytes(obj: object, cache: HashCache) -> Iterator[bytes]:
    digest = fingerprint(obj)
    if digest is None:  # e.g. a __fingerprint__ returning something unsupported
        yield from _PYDRA_DEFAULT(obj, cache)
        return
    # No (path, mtime) key first: that would route through Pydra's persistent hash memo,
    # which keys on (path, mtime) only; our own memo keys on device/inode/size/mtime/ctime.
    yield _PREFIX + digest.encode()


def register_pydra_hash(cls: type) -> type:
    """Make Pydra hash instances of ``cls`` (and its subclasses) by our `fingerprint`.

    Classes with a ``__fingerprint__`` method or registered with ``fingerprint.register``
    are handled already, unless Pydra has a serializer of its own for one of their base
    classes (a subclass of ``dict``, ``list``, ``str`` ...): call this for those.
    Process-global; call it at import of the module that defines ``cls`` so that every
    worker process registers too.

    Args:
        cls: The class to register.

    Returns:
        ``cls`` unchanged, so that this works as a class decorator.
    """
    register_serializer(cls, _fingerprint_bytes)
    return cls


def _generic(obj: object, cache: HashCache) -> Iterator[bytes]:
    cls = type(obj)
    if (
        getattr(cls, "__fingerprint__", None) is not None
        or _by_type.dispatch(cls) is not _TOKEN_DEFAULT
        or dataclasses.is_dataclass(cls)
        or attrs.has(cls)
    ):
        return _fingerprint_bytes(obj, cache)
    return _PYDRA_DEFAULT(obj, cache)  # type: ignore[no-any-return]


def _register() -> None:
    if bytes_repr.dispatch(object) is _generic:
        return
    register_pydra_hash(np.ndarray)
    register_pydra_hash(np.generic)
    register_pydra_hash(pathlib.PurePath)
    register_serializer(object, _generic)


_register()

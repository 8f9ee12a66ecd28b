"""Content fingerprints: any supported value -> 64 hex characters.

A fingerprint is the sha256 of a small, self-describing *token*: a canonical byte record of
the value's type and content. Large payloads (array memory, file content) enter the token as
an xxh3-128 digest, so hashing runs at memory speed while the outer digest stays sha256.
Nothing depends on ``id()``, ``hash()`` randomisation, insertion order or pickle, so equal
values give equal fingerprints in every process and on every machine.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import math
import struct
from collections.abc import Callable, Iterable
from pathlib import Path, PosixPath, PurePath
from typing import Any, TypeVar

import attrs
import numpy as np
import xxhash

from kwneuro_pydra._dirdigest import UndigestableTree, tree_digest
from kwneuro_pydra._filedigest import file_digest

__all__ = ["Unfingerprintable", "fingerprint", "has_handler", "memory_digest"]

_T = TypeVar("_T")


class Unfingerprintable(TypeError):
    """Raised inside tokenisation when a value (or a part of it) has no fingerprint."""


def memory_digest(array: np.ndarray[Any, Any]) -> str:
    """Return the xxh3-128 hex digest of an array's memory, copying only non-contiguous views.

    Args:
        array: Any numpy array whose dtype is not ``object``.

    Returns:
        32 hex characters over the raw bytes in the array's own (C or Fortran) memory order.
    """
    array = np.asarray(array)  # a plain view of a subclass (matrix, memmap): no subclass hooks
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        array = np.ascontiguousarray(array)
    return xxhash.xxh3_128_hexdigest(array.reshape(-1, order="A").view(np.uint8).data)


def _record(tag: str, *parts: bytes) -> bytes:
    """Frame a tag and its parts with length prefixes so no two records can collide."""
    out = [tag.encode(), b"("]
    for part in parts:
        out.append(struct.pack("<Q", len(part)))
        out.append(part)
    out.append(b")")
    return b"".join(out)


def _qualname(cls: type) -> bytes:
    return f"{cls.__module__}.{cls.__qualname__}".encode()


def _token(value: object) -> bytes:
    """Return the canonical token of ``value``; raise `Unfingerprintable` when there is none.

    A ``__fingerprint__`` method wins over everything. A value whose exact class has no
    handler of its own (a subclass of ``str``, ``dict``, ``ndarray`` ...) gets its class
    mixed in, so it never fingerprints like an instance of the base class.
    """
    cls = type(value)
    method = getattr(cls, "__fingerprint__", None)
    if method is not None:
        return _record("custom", _qualname(cls), _token(method(value)))
    token: bytes = _by_type.dispatch(cls)(value)
    return token if cls in _by_type.registry else _record("as", _qualname(cls), token)


@functools.singledispatch
def _by_type(value: object) -> bytes:
    """Tokens of dataclass and attrs instances; the handlers of other types register here."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in dataclasses.fields(value)]
        return _fields_token("dataclass", value, names)
    cls = type(value)
    if attrs.has(cls):
        return _fields_token("attrs", value, [a.name for a in attrs.fields(cls)])
    raise Unfingerprintable(type(value).__qualname__)


def has_handler(cls: type) -> bool:
    """Return True when `fingerprint` has a handler for instances of ``cls`` (of its own,
    of a base class, or registered): not only the default one of dataclass and attrs
    instances.

    Args:
        cls: Any class.
    """
    return _by_type.dispatch(cls) is not _DEFAULT


def _fields_token(tag: str, value: object, names: list[str]) -> bytes:
    parts = [_record("field", name.encode(), _token(getattr(value, name))) for name in names]
    return _record(tag, _qualname(type(value)), *parts)


@_by_type.register(type(None))
def _(value: None) -> bytes:
    return b"none()"


@_by_type.register(bool)
def _(value: bool) -> bytes:
    return b"bool(1)" if value else b"bool(0)"


@_by_type.register(int)
def _(value: int) -> bytes:
    if isinstance(value, enum.Enum):
        return _enum_token(value)
    if type(value) is not int:
        return _record("int-subclass", _qualname(type(value)), str(int(value)).encode())
    return _record("int", str(value).encode())


@_by_type.register(float)
def _(value: float) -> bytes:
    return _record("float", value.hex().encode() if math.isfinite(value) else repr(value).encode())


@_by_type.register(complex)
def _(value: complex) -> bytes:
    return _record("complex", _token(value.real), _token(value.imag))


@_by_type.register(str)
def _(value: str) -> bytes:
    return _record("str", value.encode("utf-8", "surrogatepass"))


@_by_type.register(bytes)
@_by_type.register(bytearray)
def _(value: bytes | bytearray) -> bytes:
    return _record("bytes", xxhash.xxh3_128_digest(value), str(len(value)).encode())


@_by_type.register(memoryview)
def _(value: memoryview) -> bytes:
    """Format, item size and shape with the items in logical (C) order, whatever the strides."""
    raw = value if value.c_contiguous else value.tobytes()  # tobytes(): the items, in C order
    return _record(
        "memoryview",
        value.format.encode(),
        str(value.itemsize).encode(),
        ",".join(map(str, value.shape or ())).encode(),
        xxhash.xxh3_128_digest(raw),
    )


@_by_type.register(enum.Enum)
def _enum_token(value: enum.Enum) -> bytes:
    return _record("enum", _qualname(type(value)), value.name.encode())


@_by_type.register(PurePath)
def _(value: PurePath) -> bytes:
    """An existing file or directory by content; anything else by its string."""
    if isinstance(value, Path):
        try:
            return _record("file", file_digest(value).encode())
        except IsADirectoryError:  # any file that is not a regular one
            if value.is_dir():
                return _directory_token(value)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            pass
    return _record("path", str(value).encode())


def _directory_token(directory: Path) -> bytes:
    try:
        return _record("directory", tree_digest(directory).encode())
    except (OSError, UndigestableTree) as error:
        raise Unfingerprintable(f"directory {directory}: {error}") from error


@_by_type.register(np.ndarray)
def _(value: np.ndarray[Any, Any]) -> bytes:
    if value.dtype.hasobject:
        raise Unfingerprintable("ndarray of dtype object")
    order = b"F" if value.flags.f_contiguous and not value.flags.c_contiguous else b"C"
    return _record(
        "ndarray",
        _dtype_descr(value.dtype),
        ",".join(map(str, value.shape)).encode(),
        order,
        memory_digest(value).encode(),
    )


_by_type.register(np.memmap, _by_type.dispatch(np.ndarray))  # a mapped array is an array


@_by_type.register(np.ma.MaskedArray)
def _(value: np.ma.MaskedArray[Any, Any]) -> bytes:
    """Data (masked items included), mask, fill value and whether the mask is hard."""
    return _record(
        "masked",
        _token(value.data),
        _token(np.ma.getmaskarray(value)),  # type: ignore[no-untyped-call,unused-ignore]
        _token(value.fill_value),
        _token(bool(value.hardmask)),
    )


@_by_type.register(np.generic)
def _(value: np.generic) -> bytes:
    if value.dtype.hasobject:
        raise Unfingerprintable("numpy object scalar")
    raw = np.asarray(value).reshape(1).view(np.uint8).tobytes()
    return _record("npscalar", _dtype_descr(value.dtype), raw)


@_by_type.register(np.dtype)
def _(value: np.dtype[Any]) -> bytes:
    return _record("dtype", _dtype_descr(value))


def _dtype_descr(dtype: np.dtype[Any]) -> bytes:
    """Byte order, kind, size and unit; for structured dtypes every field, by offset."""
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return _record("subarray", _dtype_descr(base), repr(shape).encode())
    if dtype.fields is None:
        return dtype.str.encode()
    fields = sorted(dtype.fields.items(), key=lambda item: item[1][1])
    parts = [
        _record("field", name.encode(), _dtype_descr(f[0]), str(f[1]).encode())
        for name, f in fields
    ]
    return _record("struct", str(dtype.itemsize).encode(), *parts)


def _sequence(tag: str, items: Iterable[object]) -> bytes:
    return _record(tag, *(_token(item) for item in items))


@_by_type.register(list)
def _(value: list[Any]) -> bytes:
    return _sequence("list", value)


@_by_type.register(tuple)
def _(value: tuple[Any, ...]) -> bytes:
    if type(value) is not tuple:  # named tuples keep their class identity
        return _record("namedtuple", _qualname(type(value)), _sequence("tuple", value))
    return _sequence("tuple", value)


@_by_type.register(set)
@_by_type.register(frozenset)
def _(value: set[Any] | frozenset[Any]) -> bytes:
    return _record(type(value).__name__, *sorted(_token(item) for item in value))


@_by_type.register(dict)
def _(value: dict[Any, Any]) -> bytes:
    pairs = sorted(_record("item", _token(k), _token(v)) for k, v in value.items())
    return _record("dict", *pairs)


class _Fingerprint:
    """The public `fingerprint` callable, with a registry for user types."""

    def __call__(self, value: object) -> str | None:
        """Return the 64-hex content fingerprint of ``value``, or None when it has none.

        Supported: None, bool, int, float (exact), complex, str, bytes, memoryviews (format,
        item size, shape and items), enums, numpy arrays of any non-object dtype and memory
        order, masked arrays (data, mask, fill value, hardness), numpy scalars and dtypes,
        paths (an existing file by content, an existing directory by its tree of names,
        types and file contents, anything else by its string), list, tuple, dict,
        set, frozenset,
        dataclass and attrs instances (class and every field), types registered with
        `fingerprint.register`, and objects with a ``__fingerprint__`` method. A value
        containing anything else (or a reference cycle) has no fingerprint.

        Args:
            value: The value to fingerprint.

        Returns:
            64 lowercase hex characters, or None.
        """
        try:
            token = _token(value)
        except (TypeError, ValueError, RecursionError):  # Unfingerprintable is a TypeError
            return None
        return hashlib.sha256(token).hexdigest()

    def register(
        self, cls: type[_T]
    ) -> Callable[[Callable[[_T], object]], Callable[[_T], object]]:
        """Register how to fingerprint instances of ``cls`` (and its subclasses).

        The decorated function returns a *stand-in*: any fingerprintable value that captures
        everything the instance's meaning depends on (for example a tuple of an array and a
        dict of parameters, or the `Path` of a file). The class identity is mixed in.

        Example:
            >>> from kwneuro_pydra import fingerprint
            >>> class Roi:
            ...     def __init__(self, label: int) -> None:
            ...         self.label = label
            >>> @fingerprint.register(Roi)
            ... def _roi(roi: Roi) -> object:
            ...     return roi.label
            >>> fingerprint(Roi(3)) == fingerprint(Roi(3)) != fingerprint(Roi(4))
            True

        Args:
            cls: The class to register.

        Returns:
            A decorator that registers the stand-in function and returns it unchanged.
        """

        def decorator(function: Callable[[_T], object]) -> Callable[[_T], object]:
            def token(value: _T) -> bytes:
                return _record("registered", _qualname(type(value)), _token(function(value)))

            _by_type.register(cls, token)
            return function

        return decorator


fingerprint = _Fingerprint()
_DEFAULT = _by_type.dispatch(object)


def _prime() -> None:
    """Do the one-time work of a first call at import: dispatch of common types, OpenSSL."""
    for cls in (PosixPath, np.ndarray, str, int, float, bool, type(None), tuple, list, dict):
        _by_type.dispatch(cls)
    hashlib.sha256(b"").hexdigest()


_prime()

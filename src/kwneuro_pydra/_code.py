"""Fingerprint of a step's code, insensitive to comments, docstrings and formatting.

Two moments count. When a step is decorated, `capture` reads the *source* of its function
(and of its save and load functions), so an edit of the file afterwards does not change the
fingerprint of the code that runs. When the step is first used, `code_fingerprint` adds the
*values* that code reads: its closure cells and the module-level constants it names, read
then because a module may define them below the step.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import dis
import enum
import functools
import hashlib
import inspect
import textwrap
import types
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from kwneuro_pydra._fingerprint import fingerprint

__all__ = ["Code", "capture", "code_fingerprint"]


@dataclasses.dataclass(frozen=True)
class Code:
    """A callable and its source as `capture` read it.

    Attributes:
        function: The callable (a bound or class method is replaced by its function).
        source: Its syntax tree without docstrings, positions and ``@cacheable``, or its
            compiled code when it has no source.
    """

    function: Callable[..., Any]
    source: bytes


_SOURCES: weakref.WeakKeyDictionary[Callable[..., Any], bytes] = weakref.WeakKeyDictionary()


def capture(function: Callable[..., Any]) -> Code:
    """Read the source of ``function`` now (once per function object).

    Args:
        function: Any callable: a function, a method, a `functools.partial`, a callable
            object.

    Returns:
        Its `Code`.
    """
    target = getattr(function, "__func__", function)  # a method's function
    try:
        source = _SOURCES[target]
    except (KeyError, TypeError):  # TypeError: not weakly referenceable (a builtin, say)
        source = _source(target)
        with contextlib.suppress(TypeError):
            _SOURCES[target] = source
    return Code(function, source)


def code_fingerprint(
    main: Code | Callable[..., Any], *companions: Code | Callable[..., Any]
) -> str:
    """Return a 64-hex fingerprint of the code of ``main`` and its ``companions``.

    It covers each function's module and qualified name, its captured source, the values
    its closure captures (functions by their own code fingerprint), and the values of the
    module-level names its code reads, nested functions, lambdas and comprehensions
    included: ``THRESHOLD``, and ``config.THRESHOLD`` of a module or class ``config`` (one
    level deep). Such a value counts when it is a constant: a number (numpy scalars too), a
    string, bytes, None, an enum member (with its value), or a tuple, frozenset or frozen
    dataclass of constants. Module attributes such as ``__file__`` (where the code is
    installed), other values (lists, dicts, arrays, classes, instances) and the helper
    functions the code calls by name are not covered.

    Args:
        main: The step's function, as `capture` read it (a callable is captured now).
        *companions: Functions whose code also decides the result (save and load).

    Returns:
        64 lowercase hex characters.
    """
    seen: set[int] = set()
    codes = [c if isinstance(c, Code) else capture(c) for c in (main, *companions)]
    parts = [_digest(code, seen) for code in codes]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _digest(code: Code, seen: set[int]) -> str:
    function = getattr(code.function, "__func__", code.function)
    seen.add(id(function))
    parts = [_name(function).encode(), code.source]
    bound = getattr(code.function, "__self__", None)
    if bound is not None and not isinstance(bound, type | types.ModuleType):
        parts.append(_value(bound))  # the object a method is bound to (its settings)
    if isinstance(function, functools.partial):
        parts.append(_digest(capture(function.func), seen).encode())
        parts.append(_value((function.args, function.keywords)))
    elif not isinstance(function, types.FunctionType | types.BuiltinFunctionType):
        parts.append(_value(function))  # a callable object: its class and, if it has one,
        # its fingerprint (the code of its __call__ is not covered)
    for cell in getattr(function, "__closure__", None) or ():
        parts.append(_cell(cell, seen))
    if isinstance(function, types.FunctionType):
        parts.extend(_constants_read(function))
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


def _name(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", None) or type(function).__module__
    qualname = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{module}.{qualname}"


def _source(function: Callable[..., Any]) -> bytes:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return _code_bytes(function)
    for outer in tree.body[:1]:
        if isinstance(outer, _DEFINITIONS):
            outer.decorator_list = [d for d in outer.decorator_list if not _is_cacheable(d)]
    for node in ast.walk(tree):
        if isinstance(node, _DEFINITIONS) and _is_docstring(node.body[0]):
            node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False).encode()


def _cell(cell: types.CellType, seen: set[int]) -> bytes:
    try:
        value = cell.cell_contents
    except ValueError:  # an empty cell
        return b"<empty>"
    if isinstance(value, types.FunctionType):
        return b"<self>" if id(value) in seen else _digest(capture(value), seen).encode()
    return _value(value)


def _value(value: object) -> bytes:
    digest = fingerprint(value)
    return digest.encode() if digest is not None else type(value).__qualname__.encode()


# --- module-level constants --------------------------------------------------------------------

_GLOBAL_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_ATTRIBUTE_LOADS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})


def _constants_read(function: types.FunctionType) -> Iterator[bytes]:
    """``name=fingerprint`` of every module-level constant the function's code reads."""
    namespace = function.__globals__
    for name in sorted(_names_read(function.__code__)):
        head, _, attribute = name.partition(".")
        if head not in namespace or head.startswith("__"):
            continue  # a builtin, a name bound later, or __file__ (where it is installed)
        value = namespace[head]
        if attribute:
            if not isinstance(value, types.ModuleType | type):
                continue
            try:
                with warnings.catch_warnings():  # a deprecated name the code may never reach
                    warnings.simplefilter("ignore")
                    value = getattr(value, attribute)
            except Exception:  # a lazy module's __getattr__, a descriptor: anything
                continue
        digest = _constant(value)
        if digest is not None:
            yield f"{name}={digest}".encode()


def _names_read(code: types.CodeType) -> set[str]:
    """Global names the code loads, and ``name.attribute`` for an attribute loaded next."""
    names: set[str] = set()
    previous, previous_name = "", ""
    for instruction in dis.get_instructions(code):
        if instruction.opname in _GLOBAL_LOADS:
            names.add(instruction.argval)
        elif instruction.opname in _ATTRIBUTE_LOADS and previous in _GLOBAL_LOADS:
            names.add(f"{previous_name}.{instruction.argval}")
        previous, previous_name = instruction.opname, instruction.argval
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_read(const)
    return names


_ATOMS = (type(None), bool, int, float, complex, str, bytes)


def _constant(value: object) -> str | None:
    """The digest of a constant value (see `code_fingerprint`), or None for anything else."""
    try:
        return _constant_digest(value)
    except RecursionError:
        return None


def _constant_digest(value: object) -> str | None:
    cls = type(value)
    if isinstance(value, enum.Enum):
        return _hash("enum", _name(cls), value.name, _constant_digest(value.value) or "")
    if isinstance(value, _ATOMS) or (isinstance(value, np.generic) and not value.dtype.hasobject):
        return fingerprint(value)
    if isinstance(value, tuple | frozenset):
        items = [_constant_digest(item) for item in value]
    elif dataclasses.is_dataclass(value) and _is_frozen(cls):
        items = []
        for field in dataclasses.fields(value):
            digest = _constant_digest(getattr(value, field.name))
            items.append(f"{field.name}={digest}" if digest is not None else None)
    else:
        return None
    present = [item for item in items if item is not None]
    if len(present) < len(items):
        return None
    return _hash(_name(cls), *(sorted(present) if isinstance(value, frozenset) else present))


def _is_frozen(cls: type) -> bool:
    params = getattr(cls, "__dataclass_params__", None)
    return bool(getattr(params, "frozen", False))


def _hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


# --- source ------------------------------------------------------------------------------------

_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _is_cacheable(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
    return name == "cacheable"


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _code_bytes(function: Callable[..., Any]) -> bytes:
    code = getattr(function, "__code__", None)
    if not isinstance(code, types.CodeType):
        return _name(function).encode()
    return _code_object_bytes(code)


def _code_object_bytes(code: types.CodeType) -> bytes:
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for const in code.co_consts:
        is_code = isinstance(const, types.CodeType)
        parts.append(_code_object_bytes(const) if is_code else repr(const).encode())
    return b"\x00".join(parts)

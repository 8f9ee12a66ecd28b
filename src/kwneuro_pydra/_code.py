"""Fingerprint of a step's code, insensitive to comments, docstrings and formatting."""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
import types
from collections.abc import Callable
from typing import Any

from kwneuro_pydra._fingerprint import fingerprint

__all__ = ["code_fingerprint"]


def code_fingerprint(function: Callable[..., Any]) -> str:
    """Return a 64-hex fingerprint of ``function``'s code.

    It covers the function's module and qualified name, its source parsed into a syntax tree
    without docstrings, positions and the ``@cacheable`` decorator (so comments, docstrings
    and formatting do not count, while every other decorator does), and the values its
    closure captures (functions by their own code fingerprint). Without source (a function
    built by ``exec``, say) the compiled code object stands in for it. Helpers the function
    calls by name are not covered.

    Args:
        function: A plain Python function.

    Returns:
        64 lowercase hex characters.
    """
    return _fingerprint(function, set())


def _fingerprint(function: Callable[..., Any], seen: set[int]) -> str:
    seen.add(id(function))
    parts = [f"{function.__module__}.{function.__qualname__}".encode(), _source(function)]
    for cell in getattr(function, "__closure__", None) or ():
        parts.append(_cell(cell, seen))
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


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
        return b"<self>" if id(value) in seen else _fingerprint(value, seen).encode()
    digest = fingerprint(value)
    return digest.encode() if digest is not None else type(value).__qualname__.encode()


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
        return f"{function.__module__}.{function.__qualname__}".encode()
    return _code_object_bytes(code)


def _code_object_bytes(code: types.CodeType) -> bytes:
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for const in code.co_consts:
        is_code = isinstance(const, types.CodeType)
        parts.append(_code_object_bytes(const) if is_code else repr(const).encode())
    return b"\x00".join(parts)

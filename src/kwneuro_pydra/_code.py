"""Fingerprint of a step's code, insensitive to comments, docstrings and formatting."""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
import types
from collections.abc import Callable
from typing import Any

__all__ = ["code_fingerprint"]


def code_fingerprint(function: Callable[..., Any]) -> str:
    """Return a 64-hex fingerprint of ``function``'s code.

    The source is parsed and its syntax tree dumped without docstrings, decorators and
    positions, so edits to comments, docstrings, formatting or the decorator line do not
    count. Without source (built in a REPL, say) the compiled code object is used instead.

    Args:
        function: A plain Python function.

    Returns:
        64 lowercase hex characters.
    """
    try:
        source = textwrap.dedent(inspect.getsource(function))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return hashlib.sha256(_code_bytes(function)).hexdigest()
    for node in ast.walk(tree):
        if isinstance(node, _DEFINITIONS):
            node.decorator_list = []
            if _is_docstring(node.body[0]):
                node.body = node.body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


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

"""Failure records of nodes: JSON files in the subject's cache, never code.

A node whose step raises writes ``<cache_dir>/.kwneuro-pydra-errors/<step>.json`` with the
step name, the exception's type and message and the formatted traceback; `run_subjects`
reads them back. A cache directory may be shared by a lab, so nothing in it is unpickled
and no module a record names is imported: an exception comes back as an instance of its
built-in class (``ValueError``, ``OSError`` ...) or as a `StepError` carrying its class's
name and its message. `describe` renders either as ``ClassName: message``.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import traceback
from pathlib import Path
from typing import Any

from kwneuro_pydra._files import write_atomic

__all__ = ["ERRORS_DIR", "StepError", "clear", "describe", "failure_recorded", "read", "record"]

ERRORS_DIR = ".kwneuro-pydra-errors"
"""Directory under a node's cache directory where a failing step records its exception."""


class StepError(RuntimeError):
    """A step's exception of a class that is not built in, rebuilt from its JSON record.

    Only the class's name and the message come back: the class itself is neither unpickled
    nor imported. A `RuntimeError`, so code catching that keeps working.

    Attributes:
        type_name: The original class's qualified name, ``module.QualName`` (e.g.
            ``kwneuro_pydra.resources.ResourceFileError``).
        message: The original exception's message (also ``str()`` of this one).
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[type[StepError], tuple[str, str]]:
        return type(self), (self.type_name, self.message)


def describe(exception: BaseException) -> str:
    """``ClassName: message`` for an exception, a `StepError` by its original class's name.

    Args:
        exception: Any exception, e.g. a `StepFailure`'s.

    Returns:
        The class's short name, then the message when there is one.
    """
    name = (
        exception.type_name.rpartition(".")[2]
        if isinstance(exception, StepError)
        else type(exception).__name__
    )
    message = str(exception)
    return f"{name}: {message}" if message else name


def record(cache_dir: Path, step: str, error: BaseException) -> None:
    """Record that ``step`` raised ``error`` (atomically replacing an earlier record)."""
    kind = type(error)
    payload = {
        "step": step,
        "module": kind.__module__,
        "type": kind.__qualname__,
        "message": str(error),
        "args": _plain(error.args),
        "traceback": "".join(traceback.format_exception(error)),
    }
    directory = cache_dir / ERRORS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / f"{step}.json", json.dumps(payload).encode())


def _records(cache_dir: Path) -> list[Path]:
    directory = cache_dir / ERRORS_DIR
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir() if not p.name.startswith(".")]


def failure_recorded(cache_dir: Path) -> bool:
    """True when a step of this subject recorded a failure since the last `clear`."""
    return bool(_records(cache_dir))


def clear(cache_dir: Path) -> None:
    """Remove the subject's failure records (of any format, unread)."""
    for path in _records(cache_dir):
        path.unlink(missing_ok=True)


def read(cache_dir: Path) -> tuple[str, BaseException, str] | None:
    """The oldest readable record: step name, exception stand-in and traceback; or None."""
    found = []
    for path in _records(cache_dir):
        with contextlib.suppress(OSError, ValueError):
            if path.suffix == ".json" and path.is_file():
                found.append((path.stat().st_mtime_ns, json.loads(path.read_text())))
    for _, data in sorted(found, key=lambda pair: pair[0]):
        with contextlib.suppress(KeyError, TypeError):
            exception = _exception(
                str(data["module"]),
                str(data["type"]),
                str(data["message"]),
                _plain(data.get("args")),
            )
            return str(data["step"]), exception, str(data["traceback"])
    return None


def _plain(args: Any) -> list[str | int | float]:
    """``args`` when they are strings and numbers (what JSON keeps as they are), else []."""
    if isinstance(args, list | tuple) and all(isinstance(a, str | int | float) for a in args):
        return list(args)
    return []


def _exception(
    module: str, name: str, message: str, args: list[str | int | float]
) -> BaseException:
    """The built-in exception class rebuilt with its message, else a `StepError`.

    Rebuilt from its arguments when they print the recorded message (``KeyError('k')``
    prints ``'k'``: rebuilt from its message it would print ``"'k'"``).
    """
    kind: Any = getattr(builtins, name, None) if module == "builtins" else None
    if isinstance(kind, type) and issubclass(kind, Exception):
        with contextlib.suppress(Exception):
            rebuilt = kind(*args)
            if args and str(rebuilt) == message:
                return rebuilt
        with contextlib.suppress(Exception):  # some need more arguments (UnicodeDecodeError)
            return kind(message)
    return StepError(f"{module}.{name}", message)

"""A decorated step: its name, its outputs (protocol or `CacheSpec`) and its argument key."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import re
import types
import typing
import warnings
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any, Generic, TypeGuard, TypeVar

from kwneuro_pydra._code import Code, capture, code_fingerprint
from kwneuro_pydra._fingerprint import fingerprint
from kwneuro_pydra._sidecar import encode_scalar, sidecar_name

__all__ = ["CacheSpec", "Step", "StepArguments"]

T = TypeVar("T")

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*\Z")
_SCALARS = (bool, int, float, str, type(None))
_PROTOCOL = ("_cache_files", "_cache_save", "_cache_load")


@dataclasses.dataclass
class CacheSpec(Generic[T]):
    """Explicit cache spec for @cacheable when the return type does not implement the cache protocol.

    Use the bare @cacheable decorator instead when the return type implements ``_cache_files``,
    ``_cache_save``, and ``_cache_load``.

    Example:
        >>> import json
        >>> spec = CacheSpec(
        ...     files=["stats.json"],
        ...     save=lambda r, d: (d / "stats.json").write_text(json.dumps(r)),
        ...     load=lambda d: json.loads((d / "stats.json").read_text()),
        ... )
    """  # noqa: E501

    files: list[str]
    """Output filenames relative to the cache directory."""
    save: Callable[[T, Path], None]
    """Callable that persists the result to the cache directory."""
    load: Callable[[Path], T]
    """Callable that reconstructs the result from the cache directory."""
    step_name: str = ""
    """Step name used to identify this step in the params sidecar. Defaults to the decorated
    function name."""


@dataclasses.dataclass(frozen=True)
class StepArguments:
    """The cache key material of one call: the sidecar's two sections.

    Attributes:
        scalars: JSON-encoded scalar arguments (bool, int, float, str, None) by name.
        hashes: 64-hex fingerprints of every other argument by name.
    """

    scalars: dict[str, Any]
    hashes: dict[str, str]


class Step:
    """What `cacheable` knows about one decorated function.

    Args:
        fn: The undecorated function.
        spec: Its `CacheSpec`, or None to use its return type's cache protocol.

    Raises:
        ValueError: The step name is not a safe file name, or a ``CacheSpec`` output file is
            absolute or leaves the entry directory.
    """

    def __init__(self, fn: Callable[..., Any], spec: CacheSpec[Any] | None) -> None:
        self.fn = fn
        self.spec = spec
        self.name = _check_name(
            (spec.step_name if spec is not None else "") or fn.__name__, fn.__qualname__
        )
        self.function = f"{fn.__module__}.{fn.__qualname__}"
        """The function's module and qualified name: with the name, the step's identity
        (two functions may share a step name, and its directory, never their entries)."""
        self._source = capture(fn)
        self._companions: list[Code] | None = None  # the code of save and load
        if spec is not None:
            _check_files(self.name, spec.files, "CacheSpec.files")
            self._companions = [capture(spec.save), capture(spec.load)]
        elif _implements_protocol(returned := _return_now(fn)):
            _protocol_files(self.name, returned)  # else checked on first use
            self._companions = _protocol_code(returned)
        self.signature = inspect.signature(fn)
        self._code: str | None = None

    @property
    def code(self) -> str:
        """Fingerprint of the code that runs: the step's, its save and load functions'.

        Sources (comments, docstrings, formatting ignored) are read when the step is
        decorated, so an edit of a file afterwards does not change it; closure values and
        the module-level constants the code reads are read on first use (see
        `kwneuro_pydra._code.code_fingerprint`).
        """
        if self._code is None:
            if self._companions is None:
                try:
                    self._companions = _protocol_code(self.return_type)
                except TypeError:  # no usable return type: the step can never store
                    return code_fingerprint(self._source)
            self._code = code_fingerprint(self._source, *self._companions)
        return self._code

    @functools.cached_property
    def _evaluated(self) -> tuple[dict[str, Any], dict[str, Exception]]:
        """The annotations evaluated one by one, and the errors of those that cannot be."""
        hints: dict[str, Any] = {}
        errors: dict[str, Exception] = {}
        for name in getattr(self.fn, "__annotations__", {}):
            try:
                hints[name] = _evaluate(self.fn, name)
            except Exception as error:  # any error of user code evaluating an annotation
                errors[name] = error
        return hints, errors

    def type_hints(self) -> dict[str, Any]:
        """The function's annotations, evaluated one by one.

        An annotation that cannot be evaluated (a name imported only under
        ``if TYPE_CHECKING:``, say) is left out, as if the parameter had none: the call keys
        its argument without normalising it, and the Pydra adapter types it ``Any``. Only the
        return annotation of a bare step (no `CacheSpec`) must resolve.

        Raises:
            TypeError: The step is bare and its return annotation cannot be evaluated.
        """
        hints, errors = self._evaluated
        if self.spec is None and "return" in errors:
            raise TypeError(
                f"@cacheable step {self.fn.__qualname__}: its return annotation cannot be "
                f"resolved ({errors['return']})"
            ) from errors["return"]
        return dict(hints)

    @functools.cached_property
    def return_type(self) -> type:
        """The return annotation, checked to implement the cache protocol.

        Raises:
            TypeError: It is missing, unresolvable, or lacks the protocol.
        """
        where = f"@cacheable step {self.fn.__qualname__}"
        annotation = self.type_hints().get("return", inspect.Signature.empty)
        if annotation is inspect.Signature.empty:
            raise TypeError(
                f"{where} has no return annotation: annotate a type implementing the cache "
                "protocol (_cache_files, _cache_save, _cache_load) or use "
                "@cacheable(CacheSpec(...))"
            )
        if not _implements_protocol(annotation):
            raise TypeError(
                f"{where} returns {annotation!r}, which does not implement the cache protocol "
                "(_cache_files, _cache_save, _cache_load): use @cacheable(CacheSpec(...))"
            )
        return annotation

    def files(self) -> list[str]:
        """Output files of an entry, relative to the entry directory."""
        if self.spec is not None:
            return list(self.spec.files)
        return _protocol_files(self.name, self.return_type)

    def save(self, result: Any, directory: Path) -> None:
        """Persist ``result`` into ``directory``.

        Raises:
            TypeError: A protocol step returned something other than its return type.
        """
        if self.spec is not None:
            self.spec.save(result, directory)
            return
        if not isinstance(result, self.return_type):
            raise TypeError(
                f"@cacheable step {self.fn.__qualname__} returned {type(result).__qualname__}, "
                f"expected {self.return_type.__qualname__} (its return annotation)"
            )
        result._cache_save(directory, self.name)  # type: ignore[attr-defined]

    def load(self, directory: Path) -> Any:
        """Reconstruct a result from an entry directory."""
        if self.spec is not None:
            return self.spec.load(directory)
        return self.return_type._cache_load(directory, self.name)  # type: ignore[attr-defined]

    @functools.cached_property
    def _accepted(self) -> dict[str, set[Any]]:
        hints = self._evaluated[0]
        return {name: _classes(hint) for name, hint in hints.items() if name != "return"}

    @functools.cached_property
    def _simple_signature(self) -> tuple[tuple[str, ...], dict[str, Any]] | None:
        """Positional names and defaults, when every parameter is plain (the common case)."""
        parameters = self.signature.parameters.values()
        if any(p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in parameters):
            return None
        positional = tuple(p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD)
        defaults = {p.name: p.default for p in parameters if p.default is not p.empty}
        return positional, defaults

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Map a call's arguments to parameter names, defaults applied (`Signature.bind`)."""
        simple = self._simple_signature
        if simple is not None and len(args) <= len(simple[0]):
            positional, defaults = simple
            bound = dict(zip(positional, args, strict=False))
            if not bound.keys() & kwargs.keys():
                bound.update(kwargs)
                for name, default in defaults.items():
                    bound.setdefault(name, default)
                if bound.keys() == self.signature.parameters.keys():
                    return bound
        try:
            full = self.signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{self.fn.__qualname__}(): {error}") from None
        full.apply_defaults()
        return full.arguments

    def arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> StepArguments | None:
        """Return the key material of a call, or None (with a warning) if it cannot be keyed.

        Positional, keyword and explicit-default spellings of one call give equal results.
        Values are normalised the way Pydra converts its inputs (``3`` for a ``float``
        parameter counts as ``3.0``, a ``str`` for a ``Path`` as that path, a tuple for a
        ``list`` as that list), so an eager call and a workflow node share entries.

        Raises:
            TypeError: The arguments do not fit the signature.
        """
        accepted = self._accepted
        scalars: dict[str, Any] = {}
        hashes: dict[str, str] = {}
        for name, raw in self._bind(args, kwargs).items():
            value = _normalise(accepted.get(name), raw)
            if type(value) in _SCALARS:
                scalars[name] = encode_scalar(value)
                continue
            digest = fingerprint(value)
            if digest is None:
                warnings.warn(
                    f"argument {name!r} of step {self.name!r} ({type(raw).__qualname__}) cannot "
                    "be fingerprinted; this call runs without the cache",
                    UserWarning,
                    stacklevel=4,
                )
                return None
            hashes[name] = digest
        return StepArguments(scalars, hashes)


MAX_STEP_NAME = 128
"""Longest step name (characters): it names a directory and, with ``.params.json``, a file."""

_NAME_MAX = 255  # bytes in one path component (Linux, macOS and Windows file systems)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_name(name: object, function: str) -> str:
    """Return ``name`` if it can name the step's directory in every cache, else raise."""
    where = f"step name {name!r} of {function} (CacheSpec(step_name=...) or the function name)"
    if not isinstance(name, str):
        raise TypeError(f"{where} must be a str")
    if not _SAFE_NAME.match(name):
        raise ValueError(
            f"{where} is not a safe file name: expected letters, digits, '_', '.', '+' or '-', "
            "not starting with '.', '+' or '-'"
        )
    if len(name) > MAX_STEP_NAME:
        raise ValueError(f"{where} is {len(name)} characters long: at most {MAX_STEP_NAME}")
    return name


def _return_now(fn: Callable[..., Any]) -> Any:
    """The return annotation if it resolves already (at decoration), else None."""
    try:
        return _evaluate(fn, "return")
    except Exception:  # missing, or a forward reference to a class defined later, say
        return None


def _protocol_code(returned: type) -> list[Code]:
    """The code of the cache protocol's methods of a return type."""
    return [capture(getattr(returned, method)) for method in _PROTOCOL]


def _implements_protocol(annotation: Any) -> TypeGuard[type]:
    return isinstance(annotation, type) and all(hasattr(annotation, m) for m in _PROTOCOL)


def _protocol_files(step: str, returned: type) -> list[str]:
    """The checked output files of a step whose return type has the cache protocol."""
    files = returned._cache_files(step)  # type: ignore[attr-defined]
    strings = isinstance(files, list) and all(type(name) is str for name in files)
    if strings and (step, *files) in _CHECKED:  # every call asks: a set lookup
        return list(files)
    checked = _check_files(step, files, f"{returned.__qualname__}._cache_files")
    _CHECKED.add((step, *checked))
    return checked


_CHECKED: set[tuple[Any, ...]] = set()
"""Step names with output files that passed `_check_files` (a protocol's depend on context)."""


def _check_files(step: str, files: object, where: str) -> list[str]:
    """Return ``files`` as a list if every name can be an output file of an entry, else raise.

    Args:
        step: Step name.
        files: The output file names.
        where: Where the names come from, for messages (``CacheSpec.files``, say).
    """
    if isinstance(files, str | bytes) or not isinstance(files, list | tuple):
        raise TypeError(f"step {step!r}: {where} must be a list of file names, not {files!r}")
    taken = {sidecar_name(step).casefold(): sidecar_name(step)}  # case-folded -> as given
    directories: dict[str, str] = {}  # case-folded -> a file inside
    for name in files:
        problem = _file_problem(name) or _clash(step, name, taken, directories)
        if problem is not None:
            raise ValueError(
                f"step {step!r}: {where} holds {name!r}, which {problem}; expected a relative "
                "path inside the cache entry such as 'fa.nii.gz' or 'maps/fa.nii.gz'"
            )
        taken[name.casefold()] = name
        directories.update((parent.casefold(), name) for parent in _parents(name))
    return list(files)


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _clash(step: str, name: str, taken: dict[str, str], directories: dict[str, str]) -> str | None:
    """Why ``name`` cannot sit beside the files already ``taken``, or None."""
    other = taken.get(name.casefold())
    if other is not None:
        sidecar = other == sidecar_name(step)
        what = "the entry's sidecar" if sidecar else f"output file {other!r}"
        case = "" if other == name else " (names equal but for case collide on macOS, Windows)"
        return f"collides with {what}{case}" if sidecar or case else "appears twice"
    if name.casefold() in directories:
        return f"is also a directory of output file {directories[name.casefold()]!r}"
    inside = [taken[p.casefold()] for p in _parents(name) if p.casefold() in taken]
    return f"would be inside {inside[0]!r}, which is a file" if inside else None


def _file_problem(name: object) -> str | None:
    """Why ``name`` cannot be a path inside an entry directory, or None."""
    if not isinstance(name, str):
        return "is not a str"
    if _CONTROL.search(name):
        return "contains a control character (NUL, newline, ...)"
    if "\\" in name:
        return "contains a backslash (separate directories with '/')"
    if name.startswith("/"):
        return "is absolute"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "has an empty, '.' or '..' component (or is empty)"
    try:
        longest = max(len(os.fsencode(part)) for part in name.split("/"))
    except UnicodeEncodeError:
        return "is not valid text for a file name"
    if longest > _NAME_MAX:
        return f"has a component of {longest} bytes (file systems allow {_NAME_MAX})"
    return None


def _evaluate(fn: Callable[..., Any], name: str) -> Any:
    """Evaluate one annotation of ``fn`` in its module, as `typing.get_type_hints` does."""
    one = types.SimpleNamespace(__annotations__={name: fn.__annotations__[name]})
    namespace = getattr(inspect.unwrap(fn), "__globals__", {})
    return typing.get_type_hints(one, globalns=namespace)[name]


def _classes(annotation: Any) -> set[Any]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set().union(*(_classes(a) for a in typing.get_args(annotation)))
    return {typing.get_origin(annotation) or annotation}


def _exact(value: int) -> bool:
    """True when ``float(value)`` is ``value`` exactly (Pydra's conversion loses nothing)."""
    try:
        return float(value) == value
    except OverflowError:
        return False


def _normalise(accepted: set[Any] | None, value: Any) -> Any:
    if accepted is None:
        return value
    if type(value) is int and float in accepted and int not in accepted and _exact(value):
        return float(value)
    if type(value) is str and str not in accepted and accepted & {Path, PurePath}:
        return Path(value)
    if type(value) is tuple and list in accepted and tuple not in accepted:
        return list(value)
    return value

"""A decorated step: its name, its outputs (protocol or `CacheSpec`) and its argument key."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import types
import typing
import warnings
from collections.abc import Callable
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, Generic, TypeVar

from kwneuro_pydra._code import code_fingerprint
from kwneuro_pydra._fingerprint import fingerprint
from kwneuro_pydra._store import encode_scalar

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
        self.name = (spec.step_name if spec is not None else "") or fn.__name__
        if not _SAFE_NAME.match(self.name):
            raise ValueError(
                f"step name {self.name!r} of {fn.__qualname__} is not a safe file name: "
                "use letters, digits, '_', '.', '+' or '-' (set CacheSpec(step_name=...))"
            )
        if spec is not None:
            _check_files(self.name, spec.files)
        self.signature = inspect.signature(fn)
        self.code = code_fingerprint(fn)
        """Fingerprint of the code that runs (comments, docstrings, formatting ignored), taken
        when the function is decorated: an edit of its file afterwards does not change it."""

    @functools.cached_property
    def _hints(self) -> dict[str, Any] | Exception:
        try:
            return typing.get_type_hints(self.fn)
        except Exception as error:  # any error of user code evaluating annotations
            return error

    def type_hints(self) -> dict[str, Any]:
        """The function's annotations, evaluated.

        Raises:
            TypeError: They cannot be evaluated (an undefined name, say).
        """
        if isinstance(self._hints, Exception):
            raise TypeError(
                f"@cacheable step {self.fn.__qualname__}: its annotations cannot be resolved "
                f"({self._hints})"
            ) from self._hints
        return self._hints

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
        if not isinstance(annotation, type) or not all(hasattr(annotation, m) for m in _PROTOCOL):
            raise TypeError(
                f"{where} returns {annotation!r}, which does not implement the cache protocol "
                "(_cache_files, _cache_save, _cache_load): use @cacheable(CacheSpec(...))"
            )
        return annotation

    def files(self) -> list[str]:
        """Output files of an entry, relative to the entry directory."""
        if self.spec is not None:
            return list(self.spec.files)
        files: list[str] = list(self.return_type._cache_files(self.name))  # type: ignore[attr-defined]
        _check_files(self.name, files)
        return files

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
        hints = self._hints if isinstance(self._hints, dict) else {}
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


def _check_files(step: str, files: list[str]) -> None:
    for name in files:
        path = PurePosixPath(name)
        if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
            raise ValueError(
                f"step {step!r}: output file {name!r} must be a relative path inside the "
                "cache entry (no absolute path, no '..')"
            )


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

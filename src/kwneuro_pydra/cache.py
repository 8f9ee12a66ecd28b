"""The eager cache API: `Cache`, `CacheSpec` and `cacheable`.

``with Cache("derivatives/sub-01"): dti = estimate_dti(dwi)`` stores the result of every
`cacheable` step called inside the block under the cache directory and reuses it when the
step is called again with the same arguments (by content) and the same code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import functools
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar, Token
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar, overload

import attrs

from kwneuro_pydra._filedigest import digests_by_content, memo_directory, unsteady_count
from kwneuro_pydra._lock import ReentrantLockError
from kwneuro_pydra._step import CacheSpec, Step, StepArguments
from kwneuro_pydra._store import (
    Entry,
    Store,
    decode_scalar,
    discard,
    encode_scalar,
    entry_key,
    sharing_problem,
)

__all__ = [
    "Cache",
    "CacheSpec",
    "Explanation",
    "Lookup",
    "MissReason",
    "NotStoredWarning",
    "StepState",
    "cacheable",
    "current_cache",
    "handling_steps",
    "step_of",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_log = logging.getLogger("kwneuro_pydra")


class StepHandler(Protocol):
    """Whatever runs `cacheable` steps while it is active: a `Cache`, or a workflow builder."""

    def _run_step(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any: ...


_HANDLER: ContextVar[StepHandler | None] = ContextVar("kwneuro_pydra_handler", default=None)
_STEPS: dict[str, dict[str, Step]] = {}
"""The decorated steps by step name, then by function (module and qualified name)."""
_WARNED: set[str] = set()
"""Warnings given once per process: a shared root with the wrong umask, a thread."""
_ENTERED = [0]
"""How many ``with Cache(...)`` blocks are open, in every thread."""


@contextlib.contextmanager
def handling_steps(handler: StepHandler) -> Iterator[None]:
    """Route every `cacheable` call in this context to ``handler`` (used by the Pydra adapter).

    Args:
        handler: An object with ``_run_step(step, args, kwargs)``.
    """
    token = _HANDLER.set(handler)
    try:
        yield
    finally:
        _HANDLER.reset(token)


def current_cache() -> Cache | None:
    """Return the innermost active `Cache`, or None outside any ``with Cache(...)`` block."""
    handler = _HANDLER.get()
    return handler if isinstance(handler, Cache) else None


def step_of(fn: Callable[..., Any]) -> Step | None:
    """Return the `Step` behind a `cacheable`-decorated function, or None for any other."""
    step = getattr(fn, "__kwneuro_step__", None)
    return step if isinstance(step, Step) else None


class StepState(enum.StrEnum):
    """What a cache holds for one call of a step (equal to its lower-case name as a string).

    .. versionadded:: 0.1
    """

    CACHED = "cached"
    """An intact entry serves the call."""
    STALE = "stale"
    """Only entries made by other code of the step hold these arguments: its code changed."""
    MISSING = "missing"
    """Nothing serves the call: no entry, a damaged one, a forced step, or an argument that
    cannot be fingerprinted."""
    FAILED = "failed"
    """The step raised in the last run that asked for it (a run's record says so:
    `Cache.lookup` never answers it)."""


class MissReason(enum.StrEnum):
    """Why a call is not served, one per reason of an `Explanation`.

    .. versionadded:: 0.1
    """

    UNKEYABLE = "unkeyable"
    """An argument cannot be fingerprinted: the call is never cached."""
    FORCED = "forced"
    """The step is forced (``Cache(force=...)``)."""
    NO_ENTRY = "no entry"
    """No entry of the step is stored."""
    ARGUMENT = "argument"
    """A scalar argument differs from the closest entry's."""
    CONTENT = "content"
    """The content (fingerprint) of an argument differs from the closest entry's."""
    CODE = "code"
    """The step's code changed since the closest entry was made."""
    DAMAGED = "damaged"
    """The closest entry has the call's arguments and code but is damaged."""


@attrs.frozen
class Lookup:
    """What serves one call of a step, as `Cache.lookup` finds it.

    .. versionadded:: 0.1

    Attributes:
        state: `StepState.CACHED` when an entry serves the call, else why not.
        entry: The entry that serves it, or None.
        value: The call's result loaded from that entry, or None.
    """

    state: StepState
    entry: Entry | None = None
    value: Any = None


@attrs.frozen
class Explanation:
    """Why a call of a step would hit or miss, as `Cache.explain` finds it.

    Attributes:
        step: Step name.
        key: Entry key the call selects ("" when it cannot be keyed).
        hit: True when the call would be served from the cache.
        reasons: What differs from the closest stored entry (empty on a hit).
        closest: The stored entry compared against, or None.
        causes: The kind of each of ``reasons``, in the same order.
    """

    step: str
    key: str
    hit: bool
    reasons: tuple[str, ...]
    closest: Entry | None
    causes: tuple[MissReason, ...] = ()

    def __str__(self) -> str:
        """The verdict as a person reads it: ``step: hit (entry ...)``, or the reasons."""
        if self.hit:
            return f"{self.step}: hit (entry {self.key[:12]})"
        lines = [f"{self.step}: miss"] + [f"  - {reason}" for reason in self.reasons]
        return "\n".join(lines)


@dataclasses.dataclass
class Cache:
    """Context manager that activates caching for all @cacheable-decorated functions.

    Scalar arguments and imaging data arguments are fingerprinted automatically. Changes to
    either trigger a cache miss on the next run. Arguments that cannot be fingerprinted issue
    a UserWarning. Each distinct set of arguments gets its own entry under
    ``<cache_dir>/<step_name>/<key>/``; several processes may share one cache directory.

    Example:
        >>> import tempfile
        >>> @cacheable(CacheSpec(
        ...     files=["n.txt"],
        ...     save=lambda n, d: (d / "n.txt").write_text(str(n)),
        ...     load=lambda d: int((d / "n.txt").read_text()),
        ... ))
        ... def square(n: int) -> int:
        ...     return n * n
        >>> with Cache(tempfile.mkdtemp()) as cache:
        ...     square(4), square(4), cache.status([square])
        (16, 16, {'square': True})

    A cache directory that this process cannot write (a lab's shared cache, another
    user's, a read-only file system) still serves its hits; a miss is computed and returned
    without being stored, with one `UserWarning` per step. So is a miss when the disk is
    full.

    Raises:
        NotADirectoryError: ``cache_dir``, or a ``read_only`` directory, exists and is not a
            directory.
        FileNotFoundError: A ``read_only`` directory does not exist.
        PermissionError: ``cache_dir`` does not exist and cannot be created.
        TypeError: ``force`` is neither a bool nor a set of step names, or ``read_only`` is
            not a list.
        ValueError: ``verify_inputs`` is neither "stat" nor "content".
    """

    cache_dir: Path
    """Directory where cached outputs and per-step sidecar files are stored. Created
    automatically."""
    force: bool | set[str] = False
    """Cache bypass control. False uses all cached outputs, True recomputes everything, a set
    of step names recomputes only those steps. A step is named by its step name (every
    function of that name), or by its function's module and qualified name
    (``"mymodule.smooth"``: that function only, where two modules define a step ``smooth``)."""
    _: dataclasses.KW_ONLY
    check_code: bool = True
    """When True (default), an entry made by other code of the step is a miss. When False,
    entries are reused whatever code made them (the sidecar still records it).

    .. versionadded:: 0.1"""
    nifti_compression: bool = True
    """Store images of cache entries as ``.nii.gz`` (True) or uncompressed ``.nii`` (False).

    .. versionadded:: 0.1"""
    read_only: Sequence[str | Path] = ()
    """Other cache directories (a lab's shared cache, say) consulted on a miss, in order.
    Their entries are served as hits but never written; a result computed here is stored in
    ``cache_dir`` only.

    .. versionadded:: 0.1"""
    verify_inputs: Literal["stat", "content"] = "stat"
    """How an on-disk input is checked for changes. ``"stat"`` (default) trusts the file
    digest memo while a file's (device, inode, size, mtime, ctime) is unchanged; ``"content"``
    reads every input file again on every call. Writes through a shared memory map
    (``np.memmap(mode="r+")``) can change a file without changing its timestamps: use
    ``"content"`` when inputs may be written that way.

    .. versionadded:: 0.1"""

    def __post_init__(self) -> None:
        """Check the options, open the store and warn once about a shared root's umask."""
        self.cache_dir = _prepare_directory(Path(self.cache_dir))
        if self.verify_inputs not in ("stat", "content"):
            raise ValueError(
                f"Cache(verify_inputs=...) takes 'stat' or 'content', not {self.verify_inputs!r}"
            )
        if isinstance(self.read_only, str | Path):
            raise TypeError("Cache(read_only=...) takes a list of cache directories")
        self._shared = [Store(_existing_directory(Path(d))) for d in self.read_only]
        self.read_only = [store.root for store in self._shared]
        self._unstored: dict[str, str] = {}
        if isinstance(self.force, str) or not isinstance(self.force, bool | Iterable):
            raise TypeError(
                f"Cache(force=...) takes a bool or a set of step names, not {self.force!r}"
            )
        if not isinstance(self.force, bool):
            self.force = set(self.force)
            unknown = sorted(self.force - _STEPS.keys() - {f for s in _STEPS.values() for f in s})
            if unknown:
                warnings.warn(
                    f"Cache(force=...) names steps that no @cacheable function defines: "
                    f"{', '.join(unknown)} (known: {', '.join(sorted(_STEPS)) or 'none'})",
                    UserWarning,
                    stacklevel=3,
                )
        self._store = Store(self.cache_dir)
        if (problem := sharing_problem(self.cache_dir)) and problem not in _WARNED:
            _WARNED.add(problem)
            warnings.warn(problem, UserWarning, stacklevel=3)
        self._tokens: list[tuple[Token[StepHandler | None], contextlib.ExitStack]] = []

    def __enter__(self) -> Cache:
        """Make this the active cache of the current context; return it."""
        memo = contextlib.ExitStack()
        memo.enter_context(memo_directory(self._store.memo_dir))
        self._tokens.append((_HANDLER.set(self), memo))
        _ENTERED[0] += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Restore the cache that was active before; exceptions propagate."""
        token, memo = self._tokens.pop()
        _ENTERED[0] -= 1
        memo.close()
        _HANDLER.reset(token)

    def is_forced(self, step_name: str) -> bool:
        """Return True if this step should bypass the cache."""
        return self.force is True or (not isinstance(self.force, bool) and step_name in self.force)

    def _forced(self, step: Step) -> bool:
        """True when ``force`` names this step, by its name or by its function."""
        return self.is_forced(step.name) or self.is_forced(step.function)

    def is_cached(
        self,
        step_name: str,
        files: list[str],
        scalars: dict[str, Any] | None = None,
        hashes: dict[str, str] | None = None,
    ) -> bool:
        """Return True when all output files exist, the step is not forced, and the stored fingerprint matches.

        The sidecar file stores two sections: "scalars" for human-readable scalar argument
        values and "hashes" for sha256 content fingerprints. A mismatch in either section, or
        a missing sidecar when params are expected, is treated as a cache miss.

        Args:
            step_name: Name of the cache step, used to locate the sidecar file.
            files: Output filenames relative to the entry directory that must all exist (and
                be intact) for a cache hit.
            scalars: Scalar argument values to compare against the stored sidecar, or None.
            hashes: Content fingerprints to compare against the stored sidecar, or None.

        Returns:
            True on a cache hit, False on a miss.
        """  # noqa: E501
        if self.is_forced(step_name):
            return False
        encoded = {name: encode_scalar(value) for name, value in (scalars or {}).items()}
        arguments = StepArguments(encoded, dict(hashes or {}))
        steps = _STEPS.get(step_name)
        if not steps:  # not decorated here: the newest entry of any code
            stores = (self._store, *self._shared)
            return any(_newest(store, step_name, arguments, files) for store in stores)
        return any(self._entry(s, arguments, files=files) for s in steps.values())

    def status(self, steps: list[Callable[..., Any]]) -> dict[str, bool]:
        """Return a mapping of each step's qualified name to whether all its cached output files exist.

        A step counts as cached when it has at least one complete, intact entry (made by its
        current code, unless ``check_code`` is False). Non-decorated callables in steps are
        silently skipped.

        Args:
            steps: List of cacheable-decorated functions to check.

        Returns:
            Dict mapping ``fn.__qualname__`` to True if all cached outputs exist, False
            otherwise.
        """  # noqa: E501
        result = {}
        for fn in steps:
            step = step_of(fn)
            if step is not None:
                files = step.files()
                result[fn.__qualname__] = any(
                    self._store.lookup(step.name, e.key, files)
                    for e in self.entries(fn)
                    if e.code == step.code or (not self.check_code and _made_by(e, step))
                )
        return result

    def steps(self) -> list[str]:
        """Return the names of the steps that have a directory in this cache.

        .. versionadded:: 0.1
        """
        return self._store.steps()

    def entries(self, step: Callable[..., Any] | str) -> list[Entry]:
        """Return the stored entries of a step, oldest first.

        .. versionadded:: 0.1

        Args:
            step: A `cacheable` function or a step name.
        """
        return list(self._store.entries(_step_name(step)))

    def explain(self, step: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Explanation:
        """Tell whether ``step(*args, **kwargs)`` would hit, and if not, what differs.

        The call is not run. On a miss, the reasons compare it with the closest stored
        entry: which arguments changed (old and new scalar values, or fingerprints), whether
        the step's code changed, or whether the entry was damaged.

        .. versionadded:: 0.1

        Args:
            step: A `cacheable` function.
            *args: Positional arguments of the call.
            **kwargs: Keyword arguments of the call.

        Raises:
            TypeError: ``step`` is not a `cacheable` function.
        """
        found = _as_step(step)
        arguments = self._arguments(found, args, kwargs)
        if arguments is None:
            return _explanation(found.name, "", None, [_UNKEYABLE])
        key = entry_key(arguments.scalars, arguments.hashes, found.code)
        stored = [e for e in self.entries(found.name) if _made_by(e, found)]
        closest = min(
            stored, key=lambda e: len(_differences(found, arguments, e, self)), default=None
        )
        if self._forced(found):
            return _explanation(found.name, key, closest, [_FORCED])
        if closest is None:
            return _explanation(found.name, key, None, [_NO_ENTRY])
        differences = _differences(found, arguments, closest, self)
        return _explanation(found.name, key, closest, differences)

    def clear(self, step: Callable[..., Any] | str | None = None) -> int:
        """Remove every entry of ``step`` (or of every step); return how many were removed.

        .. versionadded:: 0.1
        """
        names = [_step_name(step)] if step is not None else self.steps()
        removed = 0
        for name in names:
            for entry in self._store.entries(name):
                self._store.remove(entry)
                removed += 1
        return removed

    def prune(
        self,
        *,
        keep: int | None = None,
        older_than: float | None = None,
        stale_code: bool = False,
        dry_run: bool = False,
    ) -> list[Path]:
        """Remove leftovers of crashed writes and entries beyond a retention policy.

        Leftovers are temporary entries and memo files older than an hour. Damaged entries
        (an unreadable or malformed sidecar) are skipped with a warning.

        .. versionadded:: 0.1

        Args:
            keep: Keep only this many most recent entries per step.
            older_than: Remove entries created more than this many seconds ago.
            stale_code: Remove the entries made by other code than the step's current code:
                those of the functions decorated in this process (an entry records its
                function's module and qualified name), so a step of the same name in
                another module keeps its entries.
            dry_run: Remove nothing; return what would be removed.

        Returns:
            The paths removed (or that would be).
        """
        removed: list[Path] = []
        cutoff = time.time() - older_than if older_than is not None else None
        for name in self.steps():
            entries = list(self._store.entries(name))
            doomed = entries[: max(len(entries) - keep, 0)] if keep is not None else []
            if cutoff is not None:
                doomed += [e for e in entries if _timestamp(e) < cutoff]
            if stale_code:
                steps = _STEPS.get(name, {})
                doomed += [
                    e
                    for e in entries
                    if (step := steps.get(e.function or "")) is not None and e.code != step.code
                ]
            for entry in {e.path: e for e in doomed}.values():
                if not dry_run:
                    self._store.remove(entry)
                removed.append(entry.path)
        for leftover in self._store.leftovers():
            if not dry_run:
                discard(leftover)
            removed.append(leftover)
        return removed

    def _entry(
        self,
        step: Step,
        arguments: StepArguments,
        *,
        key: str | None = None,
        stores: Sequence[Store] | None = None,
        files: list[str] | None = None,
        warn: bool = True,
    ) -> Entry | None:
        """The intact entry of a call in ``stores`` (default: this cache, then the
        ``read_only`` ones) holding ``files`` (default: the step's): of the step's current
        code when ``check_code`` holds (``key``, when given, is its entry key), else the
        newest entry of any code.
        """
        files = step.files() if files is None else files
        for store in (self._store, *self._shared) if stores is None else stores:
            if self.check_code:
                key = key or entry_key(arguments.scalars, arguments.hashes, step.code)
                found = store.lookup(step.name, key, files, warn=warn)
            else:
                found = _newest(store, step.name, arguments, files, warn=warn, step=step)
            if found is not None:
                return found
        return None

    def _arguments(
        self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> StepArguments | None:
        """The call's arguments as ``step`` keys them, input files read as ``verify_inputs``
        says.
        """
        if self.verify_inputs == "content":
            with digests_by_content():
                return step.arguments(args, kwargs)
        return step.arguments(args, kwargs)

    def lookup(self, step: Callable[..., Any] | Step, /, *args: Any, **kwargs: Any) -> Lookup:
        """Find what serves ``step(*args, **kwargs)``, never computing it nor waiting.

        The one way to ask the cache whether a call is served, and by which entry: `load`,
        `kwneuro_pydra.pydra.run_subjects` and the plan of a pipeline use it. No lock is
        taken; an entry replaced while it is read is not served.

        .. versionadded:: 0.1

        Args:
            step: A `cacheable` function, or its `Step` (`step_of`).
            *args: Positional arguments of the call.
            **kwargs: Keyword arguments of the call.

        Returns:
            `StepState.CACHED` with the entry and the result loaded from it, exactly as a
            hit returns it; else `StepState.STALE` when only entries of other code of the
            step (in this cache, with ``check_code``) hold these arguments, else
            `StepState.MISSING`.

        Raises:
            TypeError: ``step`` is not a `cacheable` function.
        """
        found = _as_step(step)
        arguments = self._arguments(found, args, kwargs)
        if arguments is None:
            return Lookup(StepState.MISSING)
        served = self._serve(found, arguments)
        if served is not None:
            return Lookup(StepState.CACHED, *served)
        stale = (
            self.check_code
            and not self._forced(found)
            and any(
                e.code != found.code
                and _made_by(e, found)
                and e.selected_by(arguments.scalars, arguments.hashes)
                for e in self._store.entries(found.name, warn=False)
            )
        )
        return Lookup(StepState.STALE if stale else StepState.MISSING)

    def load(self, step: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Return the stored result of ``step(*args, **kwargs)`` without ever computing it.

        .. versionadded:: 0.1

        Args:
            step: A `cacheable` function.
            *args: Positional arguments of the call.
            **kwargs: Keyword arguments of the call.

        Returns:
            The result, loaded from its entry, exactly as a hit returns it.

        Raises:
            TypeError: ``step`` is not a `cacheable` function.
            KeyError: The call has no intact entry (or the step is forced).
        """
        found = self.lookup(step, *args, **kwargs)
        if found.state is not StepState.CACHED:
            name = _as_step(step).name
            raise KeyError(f"no stored result of step {name!r} for these arguments")
        return found.value

    def call(self, step: Callable[..., Any] | Step, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``step(*args, **kwargs)`` in this cache, as a call of the decorated function
        inside ``with cache:`` does: served when an entry holds it, else computed and stored.

        For a `Step` at hand (a Pydra node runs its step this way) or a decorated function.
        The steps it calls in turn go to this cache only inside ``with cache:``.

        .. versionadded:: 0.1

        Args:
            step: A `cacheable` function, or its `Step` (`step_of`).
            *args: Positional arguments of the call.
            **kwargs: Keyword arguments of the call.

        Returns:
            The call's result.

        Raises:
            TypeError: ``step`` is not a `cacheable` function.
        """
        return self._run_step(_as_step(step), args, kwargs)

    def _serve(
        self, step: Step, arguments: StepArguments, key: str | None = None
    ) -> tuple[Entry, Any] | None:
        """The entry that serves a call and its loaded result, without the lock; None when
        the step is forced or nothing serves it.
        """
        if self._forced(step) or not (entry := self._entry(step, arguments, key=key)):
            return None
        try:
            before = os.stat(entry.path).st_ino
            loaded = step.load(entry.path)
            after = os.stat(entry.path).st_ino
        except OSError:
            return None
        return (entry, loaded) if before == after else None  # swapped: ask under the lock

    def _run_step(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        unsteady = unsteady_count()
        arguments = self._arguments(step, args, kwargs)
        if arguments is None or unsteady_count() != unsteady:  # warned: runs uncached
            return step.fn(*args, **kwargs)
        files = step.files()
        forced = self._forced(step)
        key = entry_key(arguments.scalars, arguments.hashes, step.code)
        if (served := self._serve(step, arguments, key)) is not None:
            return served[1]
        lock = self._store.lock(step.name, key)
        try:
            lock.acquire()
        except ReentrantLockError as error:
            message = f"step {step.name!r}: {error}; this inner call runs without the cache"
            warnings.warn(message, UserWarning, stacklevel=3)
            return step.fn(*args, **kwargs)
        except OSError as error:
            if error.errno not in _CANNOT_STORE:
                raise
            self._warn_unstored(step, error)
            return step.fn(*args, **kwargs)
        try:
            self._store.recover(step.name, key)
            if not forced and (
                entry := self._entry(step, arguments, key=key, stores=[self._store], warn=False)
            ):
                return step.load(entry.path)
            _log.info("%s: computing entry %s in %s", step.name, key[:12], self.cache_dir)
            start = time.perf_counter()
            result = step.fn(*args, **kwargs)
            duration = time.perf_counter() - start
            # Scalars are immutable: only a call with other arguments can have changed them.
            after = self._arguments(step, args, kwargs) if arguments.hashes else arguments
            changed = _changed(arguments, after)
            if changed or unsteady_count() != unsteady:
                what = f"argument {changed!r}" if changed else "an input file"
                warnings.warn(
                    f"step {step.name!r}: {what} changed while it ran; the result is "
                    "returned but not stored",
                    UserWarning,
                    stacklevel=3,
                )
                return result
            record = {
                "scalars": arguments.scalars,
                "hashes": arguments.hashes,
                "code": step.code,
                "function": step.function,
                "duration": duration,
            }
            try:
                entry = self._store.publish(
                    step.name, key, files, functools.partial(step.save, result), record
                )
            except OSError as error:
                if error.errno not in _CANNOT_STORE:
                    raise
                self._warn_unstored(step, error)
                return result
        finally:
            lock.release()
        return step.load(entry.path)

    @property
    def not_stored(self) -> dict[str, str]:
        """The steps whose results this cache computed but could not store (a folder it
        cannot write, a full disk): step name -> the `NotStoredWarning` it gave.

        .. versionadded:: 0.1
        """
        return dict(self._unstored)

    def _warn_unstored(self, step: Step, error: OSError) -> None:
        """Warn, once per step and `Cache`, that results are computed but not stored."""
        if step.name not in self._unstored:
            message = (
                f"step {step.name!r}: cannot store results in {self.cache_dir} "
                f"({_cause(error)}); they are computed and returned without being stored"
            )
            self._unstored[step.name] = message
            warnings.warn(message, NotStoredWarning, stacklevel=4)


class NotStoredWarning(UserWarning):
    """A step's result was computed and returned but could not be stored: the cache folder
    cannot be written (permissions, a read-only file system, a planted link) or the disk is
    full. The message names the step, the folder and the cause (``Permission denied:
    <path>``).

    .. versionadded:: 0.1
    """


_CANNOT_STORE = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ELOOP}
)
"""Errors that mean the cache directory cannot take a new entry (read-only, full, a link
planted where a file is written)."""


def _cause(error: OSError) -> str:
    """``<strerror>: <path>``, the path when the error names one."""
    return f"{error.strerror}: {error.filename}" if error.filename else str(error.strerror)


def _changed(before: StepArguments, after: StepArguments | None) -> str | None:
    """Name the first argument whose value differs between two keyings of one call."""
    if after is before:
        return None
    if after is None:
        return "<unfingerprintable>"
    for name in sorted(before.scalars.keys() | before.hashes.keys()):
        if (before.scalars.get(name), before.hashes.get(name)) != (
            after.scalars.get(name),
            after.hashes.get(name),
        ):
            return name
    return None


def _prepare_directory(path: Path) -> Path:
    path = path.absolute()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"Cache(cache_dir={str(path)!r}): exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)  # one it cannot write is a read-only cache
    except OSError as error:
        raise PermissionError(
            f"Cache(cache_dir={str(path)!r}): cannot create the directory ({error.strerror})"
        ) from error
    return path


def _existing_directory(path: Path) -> Path:
    path = path.absolute()
    if not path.exists():
        raise FileNotFoundError(f"Cache(read_only=[...]): {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"Cache(read_only=[...]): {str(path)!r} is not a directory")
    return path


def _as_step(step: Callable[..., Any] | Step) -> Step:
    found = step if isinstance(step, Step) else step_of(step)
    if found is None:
        raise TypeError(f"{step!r} is not a @cacheable step")
    return found


def _step_name(step: Callable[..., Any] | str) -> str:
    return step if isinstance(step, str) else _as_step(step).name


def _newest(
    store: Store,
    name: str,
    arguments: StepArguments,
    files: list[str],
    *,
    warn: bool = True,
    step: Step | None = None,
) -> Entry | None:
    """The newest intact entry of step ``name`` in ``store`` holding these arguments, made
    by any code (of ``step``'s function, when given).
    """
    for entry in reversed(list(store.entries(name, warn=warn))):
        mine = step is None or _made_by(entry, step)
        if mine and entry.selected_by(arguments.scalars, arguments.hashes):
            return store.lookup(name, entry.key, files, warn=warn)
    return None


def _made_by(entry: Entry, step: Step) -> bool:
    """True unless the entry records another function than the step's (one of the same step
    name in another module, say).
    """
    return entry.function is None or entry.function == step.function


_Reason = tuple[MissReason, str]
_UNKEYABLE = (
    MissReason.UNKEYABLE,
    "an argument cannot be fingerprinted: the call is never cached",
)
_FORCED = (MissReason.FORCED, "the step is forced")
_NO_ENTRY = (MissReason.NO_ENTRY, "no entry of this step is stored")


def _explanation(
    step: str, key: str, closest: Entry | None, reasons: Sequence[_Reason]
) -> Explanation:
    return Explanation(
        step,
        key,
        not reasons,
        tuple(text for _, text in reasons),
        closest,
        tuple(cause for cause, _ in reasons),
    )


def _timestamp(entry: Entry) -> float:
    return datetime.fromisoformat(entry.created).timestamp()


def _differences(
    step: Step, arguments: StepArguments, entry: Entry, cache: Cache
) -> list[_Reason]:
    reasons = []
    for name in sorted(arguments.scalars.keys() | entry.scalars.keys()):
        new, old = arguments.scalars.get(name, "<absent>"), entry.scalars.get(name, "<absent>")
        if name not in entry.scalars or name not in arguments.scalars or new != encode_scalar(old):
            text = f"argument {name!r} changed: {old!r} -> {decode_scalar(new)!r}"
            reasons.append((MissReason.ARGUMENT, text))
    for name in sorted(arguments.hashes.keys() | entry.hashes.keys()):
        new_hash, old_hash = (
            arguments.hashes.get(name, "<absent>"),
            entry.hashes.get(name, "<absent>"),
        )
        if new_hash != old_hash:
            text = (
                f"argument {name!r} content changed: "
                f"fingerprint {old_hash[:12]} -> {new_hash[:12]}"
            )
            reasons.append((MissReason.CONTENT, text))
    if cache.check_code and entry.code != step.code:
        reasons.append((MissReason.CODE, "the step's code changed since the entry was made"))
    if not reasons:
        damage = cache._store.damage(entry, step.files())
        if damage is not None:
            reasons.append((MissReason.DAMAGED, damage))
    return reasons


@overload
def cacheable(fn_or_spec: F) -> F: ...
@overload
def cacheable(fn_or_spec: CacheSpec[T]) -> Callable[[F], F]: ...
def cacheable(fn_or_spec: Callable[..., Any] | CacheSpec[Any]) -> Any:
    """Decorator that adds transparent caching when a Cache context is active.

    Outside a ``with Cache(...)`` block the function runs normally with no overhead. Scalar
    and dataclass arguments are fingerprinted automatically; a change in either causes a
    cache miss. Arguments that cannot be fingerprinted trigger a UserWarning (and that call
    runs without the cache).

    Can be used in two ways. As a bare decorator when the return type implements the cache
    protocol (``_cache_files``, ``_cache_save``, ``_cache_load``)::

        @cacheable
        def estimate_dti(dwi: Dwi, mask: VolumeResource | None = None) -> Dti: ...

    Or with an explicit `CacheSpec` for return types that cannot carry the protocol::

        @cacheable(CacheSpec(files=[...], save=..., load=...))
        def compute_csd_peaks(...) -> tuple[VolumeResource, VolumeResource]: ...

    Args:
        fn_or_spec: The function to decorate, or a `CacheSpec`.

    Returns:
        The wrapped function (``functools.wraps`` semantics), or a decorator.

    Raises:
        ValueError: The step name is not a safe file name, or ``CacheSpec.files`` holds an
            absolute path or ``..``.
        TypeError: (on first use inside a cache) the return annotation is missing,
            unresolvable, or its type lacks the cache protocol.
    """
    if isinstance(fn_or_spec, CacheSpec):
        spec = fn_or_spec
        return lambda fn: _decorate(fn, spec)
    return _decorate(fn_or_spec, None)


def _decorate(fn: Callable[..., Any], spec: CacheSpec[Any] | None) -> Callable[..., Any]:
    step = Step(fn, spec)
    _STEPS.setdefault(step.name, {})[step.function] = step
    get_handler = _HANDLER.get

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        handler = get_handler()
        if handler is None:
            if _ENTERED[0] and threading.current_thread() is not threading.main_thread():
                _warn_thread(step)
            return fn(*args, **kwargs)
        return handler._run_step(step, args, kwargs)

    wrapper.__kwneuro_step__ = step  # type: ignore[attr-defined]
    return wrapper


def _warn_thread(step: Step) -> None:
    """Warn, once per process, that a thread runs a step uncached while a `Cache` is open."""
    if "thread" not in _WARNED:
        _WARNED.add("thread")
        warnings.warn(
            f"step {step.name!r} runs without the cache in thread "
            f"{threading.current_thread().name!r}: threads do not inherit `with Cache(...)`; "
            "submit the thread's work through contextvars.copy_context().run (see the guide)",
            UserWarning,
            stacklevel=3,
        )

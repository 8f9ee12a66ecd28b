"""Upstream kwneuro 1.0's own ``@cacheable`` steps, adopted by our cache and workflows.

kwneuro's decorator wraps a function in a closure that consults kwneuro's own active cache
(``kwneuro.cache._active_cache``) and nothing else, so inside ``with kwneuro_pydra.Cache(...)``
it would run uncached, and while a workflow is built it would run on stand-ins. *Adopting* a
kwneuro step puts a thin wrapper in front of it: inside one of our caches or workflow builders
the call goes to our handler (our store, our content fingerprints, a Pydra node); anywhere
else it goes to kwneuro's own wrapper unchanged (kwneuro's ``Cache`` keeps working).

Adoption happens by itself: once ``kwneuro_pydra`` is imported, every kwneuro step already
imported is replaced in place (module attributes of ``kwneuro.*`` and the attributes of their
classes, static methods included), and ``kwneuro.cache.cacheable`` itself is replaced, so every
step kwneuro (or a user module) decorates later is adopted when it is decorated. When
``kwneuro`` is imported after ``kwneuro_pydra``, an import hook does the same as soon as
``kwneuro.cache`` has run. A reference taken before adoption (``from kwneuro.csd import
compute_csd_peaks`` in a module imported before ``kwneuro_pydra``) still points to kwneuro's
wrapper: `adopt` returns its adopted twin, and calling the old reference inside our cache says
so once with a `UserWarning` (it runs uncached, as kwneuro would).

Adopted steps keep kwneuro's step names (``estimate_dti``, ``denoise`` ...). Their code
fingerprint covers kwneuro's function (source, closure, constants, as for our steps) and
kwneuro's version: a kwneuro upgrade recomputes its steps. Helper functions kwneuro's steps
call (``kwneuro.denoise.denoise_dwi`` for ``Dwi.denoise``) are covered by the version only.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.abc
import importlib.machinery
import inspect
import json
import os
import sys
import types
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kwneuro_pydra import cache as _cache
from kwneuro_pydra._filedigest import file_digest
from kwneuro_pydra._fingerprint import fingerprint
from kwneuro_pydra._step import CacheSpec, Step

__all__ = [
    "AdoptedStep",
    "adopt",
    "flat_cache_steps",
    "install",
    "is_upstream_step",
    "kwneuro_version",
]

_PACKAGE = "kwneuro"


def kwneuro_version() -> str:
    """The version of the imported kwneuro package ("" when it is not imported)."""
    return str(getattr(sys.modules.get(_PACKAGE), "__version__", ""))


class AdoptedStep(Step):
    """The `Step` of an adopted kwneuro step: kwneuro's function, keyed by our fingerprints.

    Args:
        upstream: kwneuro's decorated wrapper.
        spec: Our `CacheSpec` for a kwneuro ``CacheSpec`` step, None for a bare one.
    """

    def __init__(self, upstream: Callable[..., Any], spec: CacheSpec[Any] | None) -> None:
        super().__init__(upstream.__wrapped__, spec)  # type: ignore[attr-defined]
        self.upstream = upstream

    @property
    def code(self) -> str:
        """Fingerprint of kwneuro's function (see `Step.code`) and of kwneuro's version."""
        own = super().code
        return hashlib.sha256(f"kwneuro {kwneuro_version()}\0{own}".encode()).hexdigest()

    @property
    def contents(self) -> str:
        """The entry file listing the digests of the files kwneuro writes without declaring
        them (the ANTs files of a ``TransformResource``, say).
        """
        return f"{self.name}.contents.json"

    def files(self) -> list[str]:
        """kwneuro's declared output files, and `contents`."""
        return [*super().files(), self.contents]

    def save(self, result: Any, directory: Path) -> None:
        """Save as kwneuro does, then digest every file it wrote beyond the declared ones."""
        super().save(result, directory)
        declared = set(super().files())
        undeclared = sorted(
            name
            for path in directory.rglob("*")
            if path.is_file() and (name := path.relative_to(directory).as_posix()) not in declared
        )
        digests = {name: file_digest(directory / name) for name in undeclared}
        (directory / self.contents).write_text(json.dumps(digests, indent=1, sort_keys=True))

    def load(self, directory: Path) -> Any:
        """Load as kwneuro does, once the undeclared files are checked against their digests.

        Raises:
            ValueError: One of them changed since the entry was made.
        """
        digests = json.loads((directory / self.contents).read_text())
        for name, digest in digests.items():
            path = directory / name
            if not path.is_file() or file_digest(path) != digest:
                raise ValueError(
                    f"cache entry {directory}: {name} was changed or removed after step "
                    f"{self.name!r} stored it; remove the entry (Cache.clear) or force the step"
                )
        return super().load(directory)


def flat_cache_steps(folder: Path) -> list[str]:
    """The steps of a flat kwneuro 1.0 cache in ``folder`` (``<step>.params.json`` files).

    kwneuro 1.0's `Cache` keeps one result per step, flat in its folder; this library does
    not read those files (its entries are ``<step>/<key>/``), so such steps are computed
    once more in a folder shared with kwneuro.

    Args:
        folder: A cache folder.

    Returns:
        The step names, sorted; none when ``folder`` holds no flat kwneuro cache.
    """
    suffix = ".params.json"
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(
        name[: -len(suffix)]
        for name in names
        if name.endswith(suffix) and os.path.isfile(os.path.join(folder, name))
    )


def is_upstream_step(function: object) -> bool:
    """True for a function decorated by kwneuro's own ``cacheable`` (adopted or not)."""
    info = getattr(function, "_cache_info", None)
    return (
        callable(function)
        and isinstance(getattr(info, "step_name", None), str)
        and callable(getattr(function, "__wrapped__", None))
    )


_ADOPTED: weakref.WeakKeyDictionary[Callable[..., Any], Callable[..., Any]] = (
    weakref.WeakKeyDictionary()
)
"""kwneuro's wrapper -> its adopted twin (one per wrapper, so every path finds one Step)."""


def _upstream_spec(upstream: Callable[..., Any], step_name: str) -> CacheSpec[Any] | None:
    """Our `CacheSpec` for a kwneuro ``CacheSpec`` step (a free variable of its wrapper)."""
    spec = inspect.getclosurevars(upstream).nonlocals.get("spec")
    if spec is None:
        if step_name != upstream.__wrapped__.__name__:  # type: ignore[attr-defined]
            raise TypeError(f"{upstream!r}: unexpected upstream kwneuro @cacheable wrapper")
        return None
    return CacheSpec(list(spec.files), spec.save, spec.load, step_name)


def adopt(function: Callable[..., Any]) -> Callable[..., Any]:
    """Return the adopted twin of a kwneuro-decorated step (the step itself if it is ours).

    Inside ``with kwneuro_pydra.Cache(...)`` the twin is cached by our store with our
    content fingerprints; while `kwneuro_pydra.pydra.to_workflow` builds a workflow it
    becomes a node; anywhere else it calls kwneuro's wrapper (kwneuro's own ``Cache``
    works as before). The twin keeps kwneuro's name, signature, ``__wrapped__`` and
    ``_cache_info``. Adopting twice returns the same twin.

    Args:
        function: A function decorated by ``kwneuro.cacheable`` (or by ours).

    Returns:
        The adopted step.

    Raises:
        TypeError: ``function`` is decorated by neither.
    """
    own = _cache.step_of(function)
    if own is not None and (isinstance(own, AdoptedStep) or not is_upstream_step(function)):
        return function  # adopted already, or ours
    if not is_upstream_step(function):
        raise TypeError(
            f"{function!r} is not a step decorated by kwneuro's (or kwneuro_pydra's) "
            "@cacheable: only those can be adopted"
        )
    try:
        return _ADOPTED[function]
    except KeyError:
        pass
    step_name: str = function._cache_info.step_name  # type: ignore[attr-defined]
    step = AdoptedStep(function, _upstream_spec(function, step_name))
    get_handler = _cache._HANDLER.get

    @functools.wraps(function)
    def adopted(*args: Any, **kwargs: Any) -> Any:
        handler = get_handler()
        if handler is None:
            return function(*args, **kwargs)  # kwneuro's wrapper: its own Cache, or plainly
        return handler._run_step(step, args, kwargs)

    adopted.__wrapped__ = step.fn  # kwneuro's convention
    adopted.__kwneuro_step__ = step  # type: ignore[attr-defined]
    _ADOPTED[function] = adopted
    _cache._STEPS.setdefault(step.name, {})[step.function] = step
    return adopted


def _upstream_of(value: object) -> Callable[..., Any] | None:
    """kwneuro's wrapper if ``value`` is one not adopted yet, else None."""
    if is_upstream_step(value) and _cache.step_of(value) is None:  # type: ignore[arg-type]
        return value  # type: ignore[return-value]
    return None


def _adopt_namespace(owner: types.ModuleType | type) -> None:
    """Replace kwneuro's steps among the attributes of a module or class by their twins."""
    for name, value in list(vars(owner).items()):
        if isinstance(value, staticmethod) and (upstream := _upstream_of(value.__func__)):
            setattr(owner, name, staticmethod(adopt(upstream)))
        elif upstream := _upstream_of(value):
            setattr(owner, name, adopt(upstream))
        elif (
            isinstance(owner, types.ModuleType)
            and isinstance(value, type)
            and value.__module__ == owner.__name__
        ):
            _adopt_namespace(value)


def _adopting_cacheable(original: Callable[..., Any]) -> Callable[..., Any]:
    """kwneuro's ``cacheable``, returning adopted steps."""

    @functools.wraps(original)
    def cacheable(fn_or_spec: Any) -> Any:
        decorated = original(fn_or_spec)
        if is_upstream_step(decorated):
            return adopt(decorated)
        return lambda fn: adopt(decorated(fn))

    cacheable.__kwneuro_pydra_adopting__ = True  # type: ignore[attr-defined]
    return cacheable


class _WatchedCache:
    """Stands for ``kwneuro.cache._active_cache``: warns once per step when an unadopted
    kwneuro step runs inside one of our caches (it would run uncached, silently), and
    refuses one called while a workflow is built (it would run on stand-ins).
    """

    def __init__(self, variable: Any) -> None:
        self.variable = variable
        self.warned: set[str] = set()

    def get(self, *default: Any) -> Any:
        value = self.variable.get(*default)
        handler = _cache._HANDLER.get()
        if value is None and handler is not None:
            caller = sys._getframe(1).f_locals  # kwneuro's wrapper
            name = str(caller.get("step_name", "?"))
            if not isinstance(handler, _cache.Cache):  # a workflow being built
                raise TypeError(
                    f"kwneuro step {name!r} cannot become a workflow node: this reference to "
                    "it was taken before kwneuro_pydra adopted kwneuro's steps; call it "
                    "through kwneuro_pydra.adopt(step) (or import kwneuro_pydra first)"
                )
            if name not in self.warned:
                self.warned.add(name)
                warnings.warn(
                    f"kwneuro step {name!r} runs without the kwneuro_pydra cache: this "
                    "reference to it was taken before kwneuro_pydra adopted kwneuro's steps; "
                    "call it through kwneuro_pydra.adopt(step) (or import kwneuro_pydra "
                    "first)",
                    UserWarning,
                    stacklevel=3,
                )
        return value

    def set(self, value: Any) -> Any:
        return self.variable.set(value)

    def reset(self, token: Any) -> None:
        self.variable.reset(token)


def _register_fingerprints(reg: types.ModuleType) -> None:
    """Content fingerprints of kwneuro's `TransformResource` (by its files) and ANTs
    transforms in memory (by their parameters).
    """
    import ants  # type: ignore[import-untyped]  # kwneuro.reg imported it already

    @fingerprint.register(ants.core.ants_transform.ANTsTransform)
    def _transform(transform: Any) -> object:
        return (
            transform.transform_type,
            transform.dimension,
            transform.precision,
            transform.parameters,
            transform.fixed_parameters,
        )

    @fingerprint.register(reg.TransformResource)
    def _transform_resource(resource: Any) -> object:
        forward = [Path(p) for p in resource._ants_fwd_paths]  # each file by its content
        inverse = [Path(p) for p in resource._ants_inv_paths]
        if all(path.is_file() for path in (*forward, *inverse)):
            return (forward, inverse)  # what is loaded from them is no news
        # a file is gone (ANTs' temporary folder): what is loaded in memory stands for it
        return (forward, inverse, resource._matrices, resource._warps)


def _on_import(module: Any) -> None:
    """Adopt what a newly imported ``kwneuro`` module defines."""
    if module.__name__ == f"{_PACKAGE}.cache":
        cacheable = module.cacheable
        if not getattr(cacheable, "__kwneuro_pydra_adopting__", False):
            module.cacheable = _adopting_cacheable(cacheable)
        if not isinstance(module._active_cache, _WatchedCache):
            module._active_cache = _WatchedCache(module._active_cache)
    if module.__name__ == f"{_PACKAGE}.reg":
        _register_fingerprints(module)
    if f"{_PACKAGE}.cache" not in sys.modules:  # kwneuro._version runs first
        return
    adopting = sys.modules[f"{_PACKAGE}.cache"].cacheable
    for name, value in list(vars(module).items()):
        if name == "cacheable" and value is not adopting and callable(value):
            setattr(module, name, adopting)  # `from kwneuro import cacheable`, later
    _adopt_namespace(module)


def _is_kwneuro(name: str) -> bool:
    return name == _PACKAGE or name.startswith(f"{_PACKAGE}.")


class _Loader(importlib.abc.Loader):
    """A kwneuro module's own loader, adopting the module's steps once it has run."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: types.ModuleType) -> None:
        self.loader.exec_module(module)
        _on_import(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... unchanged
        return getattr(self.loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds kwneuro's modules with the other finders, and hands back adopting loaders."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if not _is_kwneuro(fullname):
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec  # type: ignore[no-any-return]


def install() -> None:
    """Adopt kwneuro's steps now (those imported) and later (an import hook); idempotent."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    if f"{_PACKAGE}.cache" in sys.modules:
        loaded = [m for n, m in sorted(sys.modules.items()) if _is_kwneuro(n) and m]
        _on_import(sys.modules[f"{_PACKAGE}.cache"])
        for module in loaded:
            _on_import(module)

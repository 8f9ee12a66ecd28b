"""Stand-ins for values that do not exist yet while a workflow is being built."""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any, NoReturn

__all__ = ["Lazy", "LazyValueError", "is_concrete", "producers_of", "unwrap"]


class LazyValueError(TypeError):
    """A value computed by a workflow node was used while the workflow was being built."""


class Lazy:
    """A Pydra lazy field seen by a pipeline function while its workflow is built.

    It can be passed to `cacheable` steps and returned; any other use raises
    `LazyValueError` naming the value and the use.

    A method of its class (``kind``), a decorated step (``dwi.denoise()``) or a plain method
    calling steps (kwneuro's ``dwi.estimate_dti(mask)``), can be called on it: the method
    runs with the stand-in as ``self``.

    Args:
        field: The Pydra lazy field (None during a dry discovery run).
        description: What the value is, e.g. "the result of step 'brain_mask'".
        producers: Names of the steps the value depends on.
        kind: The class the value will have (its annotation), or None when unknown.
    """

    __slots__ = ("_description", "_field", "_kind", "_producers")

    def __init__(
        self, field: Any, description: str, producers: frozenset[str], kind: Any = None
    ) -> None:
        object.__setattr__(self, "_field", field)
        object.__setattr__(self, "_description", description)
        object.__setattr__(self, "_producers", producers)
        object.__setattr__(self, "_kind", kind)

    def _fail(self, use: str) -> NoReturn:
        raise LazyValueError(
            f"{self._description} is not computed yet while the workflow is being built: it "
            f"can only be passed to @cacheable steps or returned, not used for {use}. Move "
            "this code into a @cacheable step."
        )

    def __getattr__(self, name: str) -> Any:
        method = _method_of(self._kind, name)
        if method is None:
            self._fail(f"attribute access .{name}")
        where = f"{self._kind.__qualname__}.{name}()"

        def bound(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except LazyValueError as error:
                error.add_note(f"in {where}, called on {self._description}")
                raise

        return bound

    def __setattr__(self, name: str, value: object) -> NoReturn:
        self._fail(f"setting attribute .{name}")

    def __bool__(self) -> NoReturn:
        self._fail("truth testing (if/while/and/or/not)")

    def __iter__(self) -> NoReturn:
        self._fail("iteration or unpacking")

    def __len__(self) -> NoReturn:
        self._fail("len()")

    def __getitem__(self, key: object) -> NoReturn:
        self._fail("indexing")

    def __contains__(self, item: object) -> NoReturn:
        self._fail("'in'")

    def __call__(self, *args: object, **kwargs: object) -> NoReturn:
        self._fail("calling")

    def __array__(self, *args: object, **kwargs: object) -> NoReturn:
        self._fail("conversion to a numpy array")

    def __fspath__(self) -> NoReturn:
        self._fail("use as a file system path")

    def __str__(self) -> NoReturn:
        self._fail("str()")

    def __format__(self, spec: str) -> NoReturn:
        self._fail("formatting (f-string or format())")

    def __int__(self) -> NoReturn:
        self._fail("int()")

    def __float__(self) -> NoReturn:
        self._fail("float()")

    def __index__(self) -> NoReturn:
        self._fail("use as an index")

    def __eq__(self, other: object) -> NoReturn:
        self._fail("comparison ==")

    def __ne__(self, other: object) -> NoReturn:
        self._fail("comparison !=")

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<lazy: {self._description}>"


def _method_of(kind: Any, name: str) -> Callable[..., Any] | None:
    """The function defined as method ``name`` of class ``kind`` (not static, not a class
    method, not a property), or None.
    """
    if not isinstance(kind, type) or name.startswith("__"):
        return None
    attribute = inspect.getattr_static(kind, name, None)
    return attribute if isinstance(attribute, types.FunctionType) else None


def _operator(symbol: str) -> Any:
    def method(self: Lazy, *args: object) -> NoReturn:
        self._fail(f"operator {symbol}")

    return method


for _name, _symbol in {
    "lt": "<",
    "le": "<=",
    "gt": ">",
    "ge": ">=",
    "add": "+",
    "radd": "+",
    "sub": "-",
    "rsub": "-",
    "mul": "*",
    "rmul": "*",
    "truediv": "/",
    "rtruediv": "/",
    "floordiv": "//",
    "rfloordiv": "//",
    "mod": "%",
    "rmod": "%",
    "pow": "**",
    "rpow": "**",
    "matmul": "@",
    "rmatmul": "@",
    "and": "&",
    "rand": "&",
    "or": "|",
    "ror": "|",
    "xor": "^",
    "rxor": "^",
    "neg": "unary -",
    "pos": "unary +",
    "abs": "abs()",
    "invert": "~",
}.items():
    setattr(Lazy, f"__{_name}__", _operator(_symbol))


def _leaves(value: object) -> list[object]:
    """The values inside (possibly nested) lists, tuples, sets and dict values."""
    if isinstance(value, list | tuple | set | frozenset):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return [value]


def producers_of(value: object) -> frozenset[str]:
    """Return the steps a (possibly nested) argument value depends on."""
    lazy = [leaf for leaf in _leaves(value) if isinstance(leaf, Lazy)]
    return frozenset().union(*(leaf._producers for leaf in lazy))


def is_concrete(value: object) -> bool:
    """True when a (possibly nested) value holds no stand-in: it exists already."""
    return not any(isinstance(leaf, Lazy) for leaf in _leaves(value))


def unwrap(value: object, where: str) -> Any:
    """Return the Pydra lazy field behind ``value``, or ``value`` itself if it is not lazy.

    Raises:
        LazyValueError: ``value`` is a container holding lazy values (Pydra connects a
            node's output to an input only as a whole).
    """
    if isinstance(value, Lazy):
        return value._field
    if producers_of(value):
        raise LazyValueError(
            f"{where}: a {type(value).__name__} containing results of other steps cannot be "
            "passed while the workflow is being built; pass each result as its own argument"
        )
    return value

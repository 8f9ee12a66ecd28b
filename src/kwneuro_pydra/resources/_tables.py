"""Gradient tables (one row of numbers per DWI volume) in memory and in FSL text files.

One implementation serves b-values and b-vectors: `GradientTable` is the abstract base of
`BvalResource` and `BvecResource` (loading and the cache protocol), `InMemoryTable` and
`FslTable` implement their in-memory and file-backed kinds. What differs between the two is a
`TableFormat`: the noun used in messages, the file suffix, the validation, and how the table
is laid out in its FSL text file.

FSL text files are written with the shortest exact decimal form of each value (float64), so
a table round-trips bit for bit.
"""

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

import numpy as np
from numpy.typing import NDArray

from kwneuro_pydra._files import NotRegularFileError, read_regular
from kwneuro_pydra.resources._base import Resource
from kwneuro_pydra.resources._files import (
    PathLike,
    ResourceFileError,
    missing,
    normalize_path,
    require_file,
)

Table = NDArray[np.floating[Any]]
"""A gradient table: shape (N,) for b-values, (N, 3) for b-vectors."""


def format_number(value: float) -> str:
    """Shortest decimal that reads back as exactly ``value`` (float64)."""
    return np.format_float_positional(np.float64(value), trim="-")


def read_table(path: Path, what: str) -> list[list[float]]:
    """Rows of numbers from a whitespace-separated text file of ``what`` (e.g. "b-value")."""
    try:
        require_file(path, f"{what} file")
        text = read_regular(path).decode("utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise missing(path, f"{what} file") from None
    except NotRegularFileError as error:  # replaced by a FIFO since it was checked
        raise ResourceFileError(f"{what} file is {error.strerror}: {path}") from None
    except UnicodeDecodeError:
        msg = f"not a text {what} file: {path}"
        raise ResourceFileError(msg) from None
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        try:
            rows.append([float(token) for token in tokens])
        except ValueError:
            msg = f"malformed {what} file: {path}, line {number}: {line.strip()[:60]!r}"
            raise ResourceFileError(msg) from None
    if not rows:
        msg = f"empty {what} file: {path}"
        raise ResourceFileError(msg)
    return rows


def real_array(array: Any, what: str) -> Table:
    """``array`` as a numpy array; `ValueError` naming ``what`` unless its numbers are real."""
    values = np.asarray(array)
    if values.dtype.kind not in "biuf":
        msg = f"{what} must be real numbers, got dtype {values.dtype}"
        raise ValueError(msg)
    return values


@dataclass(frozen=True)
class TableFormat:
    """What tells one kind of gradient table from another.

    Attributes:
        what: The noun for one entry, used in messages ("b-value").
        suffix: The suffix of the table's file in a cache entry (".bval").
        validate: Checks an array-like and returns it as an array (`ValueError` if invalid).
        from_rows: The table from the rows of numbers of its file (the path is for
            messages); `ResourceFileError` when the rows do not form such a table.
        to_rows: The rows of numbers an FSL text file holds for a table.
    """

    what: str
    suffix: str
    validate: Callable[[Any], Table]
    from_rows: Callable[[list[list[float]], Path], Table]
    to_rows: Callable[[Table], Table]


_InMemory = TypeVar("_InMemory", bound="InMemoryTable")
_InFile = TypeVar("_InFile", bound="FslTable")


class GradientTable(Resource, Generic[_InMemory, _InFile]):
    """A table of one row of numbers per DWI volume (b-values or b-vectors).

    Implements the cache protocol: ``<step_name><suffix>`` (``.bval`` or ``.bvec``), FSL
    text, loaded back as the file-backed kind.

    Each kind binds its `TableFormat`, in-memory class and file-backed class with `_bind`.
    """

    _table_format: ClassVar[TableFormat]
    _in_memory: ClassVar[type[Any]]
    _in_file: ClassVar[type[Any]]

    @classmethod
    def _bind(
        cls, table_format: TableFormat, in_memory: type[_InMemory], in_file: type[_InFile]
    ) -> None:
        """Give this kind of table its format and its in-memory and file-backed classes."""
        cls._table_format, cls._in_memory, cls._in_file = table_format, in_memory, in_file

    @abstractmethod
    def get(self) -> Table:
        """Return the table.

        Returns:
            Array of shape (N,) for b-values, (N, 3) for b-vectors.
        """

    def load(self) -> _InMemory:
        """Return the table held in memory.

        Returns:
            An `InMemoryBvalResource` or `InMemoryBvecResource`.
        """
        return cast(_InMemory, self._in_memory(self.get()))

    @classmethod
    def _cache_files(cls, step_name: str) -> list[str]:
        """Cache protocol: ``[f"{step_name}.bval"]`` or ``[f"{step_name}.bvec"]``."""
        return [f"{step_name}{cls._table_format.suffix}"]

    def _cache_save(self, cache_dir: Path, step_name: str) -> None:
        """Cache protocol: write the table into ``cache_dir`` as FSL text."""
        self._in_file._write(self, cache_dir / self._cache_files(step_name)[0])

    @classmethod
    def _cache_load(cls, cache_dir: Path, step_name: str) -> _InFile:
        """Cache protocol: a `FslBvalResource` or `FslBvecResource` over the entry's file."""
        return cast(_InFile, cls._in_file(cache_dir / cls._cache_files(step_name)[0]))


@dataclass(frozen=True, eq=False)
class InMemoryTable(GradientTable[Any, Any]):
    """A gradient table held in memory, validated on construction.

    Args:
        array: The table.

    Raises:
        ValueError: the array is not a valid table of its kind.

    Fingerprint: the array's content.
    """

    is_loaded: ClassVar[bool] = True

    array: Table

    def __post_init__(self) -> None:
        object.__setattr__(self, "array", self._table_format.validate(self.array))

    def get(self) -> Table:
        """Return the table.

        Returns:
            The array itself (no copy).
        """
        return self.array

    def load(self) -> Self:
        """Return itself: already in memory.

        Returns:
            ``self``.
        """
        return self

    def __fingerprint__(self) -> Table:
        """Fingerprint stand-in: the array.

        Returns:
            The table's array.
        """
        return self.array


@dataclass(frozen=True, init=False)
class FslTable(GradientTable[Any, Any]):
    """A gradient table in an FSL text file, read on every `get`.

    Args:
        path: The file; made absolute (``~`` expanded, links resolved).

    Fingerprint: the file's content.
    """

    is_loaded: ClassVar[bool] = False

    path: Path

    def __init__(self, path: PathLike) -> None:
        object.__setattr__(self, "path", normalize_path(path))

    def get(self) -> Table:
        """Read and return the table.

        Returns:
            float64 array of shape (N,) for b-values, (N, 3) for b-vectors.

        Raises:
            FileNotFoundError: the file does not exist.
            ResourceFileError: the file is malformed (the message names the file).
            ValueError: the values are invalid (the message names the file).
        """
        kind = self._table_format
        table = kind.from_rows(read_table(self.path, kind.what), self.path)
        try:
            return kind.validate(table)
        except ValueError as exc:
            raise ValueError(f"{self.path}: {exc}") from None

    def __fingerprint__(self) -> Path:
        """Fingerprint stand-in: the file, hashed by content.

        Returns:
            The path of the (existing) file.

        Raises:
            FileNotFoundError: the file does not exist.
        """
        require_file(self.path, f"{self._table_format.what} file")
        return self.path

    @classmethod
    def _write(cls, table: GradientTable[Any, Any], path: PathLike) -> Self:
        """Write ``table`` as FSL text (exact float64 decimals); a resource over the file."""
        target = normalize_path(path)
        rows = cls._table_format.to_rows(table.get())
        lines = (" ".join(format_number(value) for value in row) for row in rows)
        target.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return cls(target)

"""The sidecar format of a cache entry: entry keys, scalar encoding, validation, `Entry`.

A sidecar (``<step>.params.json`` in the entry's directory) is one line of JSON that
describes the entry: its arguments (scalars verbatim, fingerprints of the rest), the code
fingerprint, and the size and content digest of every output file. Nothing here touches the
file system; `kwneuro_pydra._store` reads and writes the files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from kwneuro_pydra._version import __version__

__all__ = [
    "DIGEST_PREFIX",
    "FORMAT_VERSION",
    "Entry",
    "Scalar",
    "SidecarError",
    "decode_scalar",
    "dump",
    "encode_scalar",
    "entry_from",
    "entry_key",
    "library",
    "parse",
    "sidecar_name",
    "validate",
]

FORMAT_VERSION = 1
"""Version of the sidecar format; a sidecar of another version is a miss."""

DIGEST_PREFIX = "xxh3_128:"
"""Prefix of a file record's digest: the digests are self-describing."""

Scalar = bool | int | float | str | None
_NONFINITE = "float"


def encode_scalar(value: Scalar) -> Any:
    """Return the JSON form of a scalar; non-finite floats become ``{"float": "nan"}`` etc."""
    if isinstance(value, float) and not math.isfinite(value):
        return {_NONFINITE: repr(value)}
    return value


def decode_scalar(value: Any) -> Scalar:
    """Invert `encode_scalar`."""
    if isinstance(value, dict):
        return float(value[_NONFINITE])
    return value  # type: ignore[no-any-return]


def entry_key(scalars: Mapping[str, Any], hashes: Mapping[str, str], code: str) -> str:
    """Return the 64-hex key of the entry of these (JSON-encoded) arguments and this code."""
    text = _KEY_ENCODER.encode({"scalars": scalars, "hashes": hashes, "code": code})
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


_KEY_ENCODER = json.JSONEncoder(sort_keys=True, allow_nan=False, ensure_ascii=False)


def sidecar_name(step: str) -> str:
    """Return the file name of the sidecar of an entry of ``step``."""
    return f"{step}.params.json"


@attrs.frozen
class Entry:
    """One stored entry of a step, as its sidecar describes it.

    Attributes:
        step: Step name.
        key: Entry key (64 hex).
        path: Entry directory.
        scalars: Scalar arguments, decoded.
        hashes: Fingerprints of the other arguments.
        code: Fingerprint of the step's code when the entry was made, or None.
        files: Output file name -> {"size": int, "digest": str}.
        created: Creation time, ISO 8601 UTC.
        duration: Seconds the step took to compute.
        library: Library name and version that wrote the entry.
        function: Module and qualified name of the function that made it, or None when
            the sidecar does not say.
    """

    step: str
    key: str
    path: Path
    scalars: dict[str, Scalar]
    hashes: dict[str, str]
    code: str | None
    files: dict[str, dict[str, Any]]
    created: str
    duration: float
    library: str
    function: str | None = None

    def selected_by(self, scalars: Mapping[str, Any], hashes: Mapping[str, str]) -> bool:
        """True when these (JSON-encoded) arguments are the entry's."""
        stored = {name: encode_scalar(value) for name, value in self.scalars.items()}
        return self.hashes == hashes and stored == scalars

    def lacks(self, files: list[str]) -> bool:
        """Return True when some of ``files`` are not outputs of this entry."""
        return not self.files.keys() >= set(files)

    @property
    def nbytes(self) -> int:
        """Total size of the output files in bytes."""
        return sum(int(f["size"]) for f in self.files.values())


class SidecarError(ValueError):
    """A sidecar that is not one this library wrote: unknown format or malformed fields."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    """True for what `encode_scalar` writes."""
    if isinstance(value, dict):
        return value.keys() == {_NONFINITE} and value[_NONFINITE] in ("nan", "inf", "-inf")
    return value is None or isinstance(value, bool | str) or _is_number(value)


def _is_file_record(value: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("digest"), str):
        return False
    size = value.get("size")
    return isinstance(size, int) and not isinstance(size, bool) and size >= 0


def _is_timestamp(value: Any) -> bool:
    try:
        datetime.fromisoformat(value).timestamp()
    except (TypeError, ValueError, OverflowError):
        return False
    return True


_FIELDS: dict[str, Callable[[Any], bool]] = {
    "scalars": lambda v: isinstance(v, dict) and all(map(_is_scalar, v.values())),
    "hashes": lambda v: isinstance(v, dict) and all(isinstance(h, str) for h in v.values()),
    "code": lambda v: v is None or isinstance(v, str),
    "files": lambda v: isinstance(v, dict) and all(map(_is_file_record, v.values())),
    "created": _is_timestamp,
    "duration": _is_number,
    "library": lambda v: isinstance(v, str),
}
"""Every field an entry needs, with what a well-formed value is."""


def validate(raw: Any, key: str) -> dict[str, Any]:
    """Return ``raw`` if it is a sidecar this library wrote for the entry ``key``.

    Args:
        raw: The parsed JSON of a sidecar.
        key: The key of the entry whose directory holds it.

    Returns:
        ``raw``.

    Raises:
        SidecarError: Another format, a missing or malformed field, or arguments that do not
            select ``key`` (a sidecar edited or moved from another entry).
    """
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION:
        version = raw.get("format") if isinstance(raw, dict) else None
        raise SidecarError(f"unknown sidecar format version {version!r}")
    for name, valid in _FIELDS.items():
        if name not in raw:
            raise SidecarError(f"field {name!r} is missing")
        if not valid(raw[name]):
            raise SidecarError(f"field {name!r} is malformed: {repr(raw[name])[:80]}")
    if entry_key(raw["scalars"], raw["hashes"], raw["code"]) != key:
        raise SidecarError("its arguments and code do not select this entry's key")
    return raw


def parse(data: bytes, step: str, key: str, entry_dir: Path) -> Entry:
    """Return the entry a sidecar's bytes describe.

    Raises:
        SidecarError: The sidecar is not one this library wrote for ``key`` (`validate`).
        ValueError: The bytes are not JSON.
    """
    return entry_from(validate(json.loads(data), key), step, key, entry_dir)


def entry_from(raw: dict[str, Any], step: str, key: str, entry_dir: Path) -> Entry:
    """Return the `Entry` of a validated (or freshly made) sidecar."""
    return Entry(
        step=step,
        key=key,
        path=entry_dir,
        scalars={k: decode_scalar(v) for k, v in raw["scalars"].items()},
        hashes=dict(raw["hashes"]),
        code=raw["code"],
        files=dict(raw["files"]),
        created=raw["created"],
        duration=float(raw["duration"]),
        library=raw["library"],
        function=raw.get("function") if isinstance(raw.get("function"), str) else None,
    )


_ENCODER = json.JSONEncoder(sort_keys=True, allow_nan=False)


def dump(sidecar: Mapping[str, Any]) -> bytes:
    """One line of JSON (json's C encoder; ``python -m json.tool`` shows it indented)."""
    return (_ENCODER.encode(sidecar) + "\n").encode()


@functools.cache
def library() -> str:
    """This library's name and version, as the ``library`` field records it."""
    return f"kwneuro-pydra {__version__}"

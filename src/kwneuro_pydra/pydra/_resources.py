"""Per-step scheduler requests (memory, CPUs, wall time) and the sbatch options they become.

A resources mapping names steps and what each of their jobs asks for::

    {"estimate_dti": {"mem": "2G", "cpus": 2, "time": "00:30:00"},
     "brain_mask": {"mem": 500, "options": "--partition=short"}}

``mem`` is a Slurm size (``"500M"``, ``"2G"``; a bare number is megabytes), ``cpus`` a
positive integer, ``time`` a Slurm duration (``"30"`` minutes, ``"MM:SS"``, ``"HH:MM:SS"``,
``"D-HH"``, ``"D-HH:MM"``, ``"D-HH:MM:SS"``; an integer is minutes) and ``options`` further
sbatch options for that step only. The same mapping can be read from a TOML or JSON file
(`load_resources`).
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeGuard

import attrs

__all__ = ["Request", "in_sequence", "load_resources", "requests"]

_KEYS = ("mem", "cpus", "time", "options")
_MEM = re.compile(r"(\d+)([KMGT]?)B?\Z", re.IGNORECASE)
_UNIT_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\Z")


@attrs.frozen
class Request:
    """What one job asks the scheduler for (None: the cluster's default).

    Attributes:
        mem_mb: Memory in megabytes.
        cpus: CPUs for the job's one task.
        seconds: Wall-time limit in seconds.
        options: Further sbatch options, as separate arguments.
    """

    mem_mb: int | None = None
    cpus: int | None = None
    seconds: int | None = None
    options: tuple[str, ...] = ()

    def sbatch_args(self) -> list[str]:
        """The sbatch options of this request."""
        args = []
        if self.mem_mb is not None:
            args.append(f"--mem={self.mem_mb}M")
        if self.cpus is not None:
            args.append(f"--cpus-per-task={self.cpus}")
        if self.seconds is not None:
            args.append(f"--time={_duration(self.seconds)}")
        return args + list(self.options)

    def and_then(self, other: Request) -> Request:
        """The request of a job that runs this one's work, then ``other``'s, in sequence.

        Memory and CPUs are the larger of the two; the time limit is the sum (none when
        either has none); options are both, in order, without repeats.
        """

        def larger(a: int | None, b: int | None) -> int | None:
            return b if a is None else a if b is None else max(a, b)

        seconds = None
        if self.seconds is not None and other.seconds is not None:
            seconds = self.seconds + other.seconds
        options = self.options + tuple(o for o in other.options if o not in self.options)
        return Request(larger(self.mem_mb, other.mem_mb), larger(self.cpus, other.cpus),
                       seconds, options)  # fmt: skip


def in_sequence(requests: Iterable[Request]) -> Request:
    """The request of one job running all of ``requests``' work in turn (see `and_then`)."""
    given = list(requests)
    return functools.reduce(Request.and_then, given) if given else Request()


def requests(
    resources: Mapping[str, Mapping[str, Any]] | None, steps: Iterable[str]
) -> dict[str, Request]:
    """Validate a resources mapping against a pipeline's steps; return a request per step named.

    Args:
        resources: Step name -> ``{"mem": ..., "cpus": ..., "time": ..., "options": ...}``
            (see the module docstring); None for no per-step requests.
        steps: The names of the steps the pipeline calls.

    Returns:
        A `Request` per step named in ``resources``.

    Raises:
        ValueError: A step is not one of ``steps``, a key is unknown or a value malformed
            (the message names the step, the key and what was expected).
    """
    known = set(steps)
    found = {}
    for step, given in (resources or {}).items():
        if step not in known:
            raise ValueError(
                f"resources name a step the pipeline does not call: {step!r} "
                f"(its steps: {', '.join(sorted(known))})"
            )
        if not isinstance(given, Mapping):
            raise ValueError(
                f"resources[{step!r}] must be a mapping of {', '.join(_KEYS)}, "
                f"not {type(given).__name__}"
            )
        unknown = sorted(set(given) - set(_KEYS))
        if unknown:
            raise ValueError(
                f"resources[{step!r}]: unknown key(s) {', '.join(map(repr, unknown))} "
                f"(expected some of {', '.join(_KEYS)})"
            )
        found[step] = Request(
            _mem_mb(step, given.get("mem")),
            _cpus(step, given.get("cpus")),
            _seconds(step, given.get("time")),
            _options(step, given.get("options")),
        )
    return found


def load_resources(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a resources mapping from a TOML (a table per step) or JSON file.

    Example TOML::

        [estimate_dti]
        mem = "2G"
        cpus = 2
        time = "00:30:00"

    Args:
        path: A ``.toml`` or ``.json`` file.

    Returns:
        The mapping, to pass as ``resources=`` (validated when a run starts).

    Raises:
        ValueError: The file is neither TOML nor JSON by its suffix, cannot be parsed, or
            does not hold a table per step.
    """
    path = Path(path)
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"{path}: resources file must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read resources: {error}") from error
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: expected a table of options per step name")
    return data


def _positive_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _mem_mb(step: str, value: Any) -> int | None:
    if value is None or _positive_int(value):
        return value
    found = _MEM.match(value) if isinstance(value, str) else None
    if not found or int(found.group(1)) == 0:
        raise ValueError(
            f"resources[{step!r}]['mem'] = {value!r}: expected a size such as '500M' or '2G' "
            "(a bare number is megabytes)"
        )
    return max(1, round(int(found.group(1)) * _UNIT_MB[found.group(2).upper()]))


def _cpus(step: str, value: Any) -> int | None:
    if value is None or _positive_int(value):
        return value
    raise ValueError(f"resources[{step!r}]['cpus'] = {value!r}: expected a positive integer")


def _seconds(step: str, value: Any) -> int | None:
    if value is None or _positive_int(value):
        return None if value is None else value * 60
    found = _TIME.match(value) if isinstance(value, str) else None
    if not found:
        raise ValueError(
            f"resources[{step!r}]['time'] = {value!r}: expected a Slurm duration such as "
            "'30' (minutes), '00:30:00' or '1-12:00:00'"
        )
    days, first, second, third = (int(g) if g else None for g in found.groups())
    assert first is not None
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + first * 3600 + (second or 0) * 60 + (third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = first * 3600 + (second or 0) * 60 + third
    elif second is not None:  # MM:SS
        seconds = first * 60 + second
    else:  # minutes
        seconds = first * 60
    if seconds <= 0:
        raise ValueError(f"resources[{step!r}]['time'] = {value!r}: expected a positive duration")
    return seconds


def _options(step: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, str):
        raise ValueError(
            f"resources[{step!r}]['options'] = {value!r}: expected a string of sbatch options"
        )
    return tuple(shlex.split(value))


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"

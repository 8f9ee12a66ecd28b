"""Per-step scheduler requests (memory, CPUs, wall time) and the sbatch options they become.

A resources mapping names steps and what each of their jobs asks for::

    {"estimate_dti": {"mem": "2G", "cpus": 2, "time": "00:30:00"},
     "brain_mask": {"mem": 500, "options": "--partition=short"}}

``mem`` is a Slurm size (``"500M"``, ``"2G"``; a bare number is megabytes), ``cpus`` a
positive integer, ``time`` a Slurm duration (``"30"`` minutes, ``"MM:SS"``, ``"HH:MM:SS"``,
``"D-HH"``, ``"D-HH:MM"``, ``"D-HH:MM:SS"``; an integer is minutes) and ``options`` further
sbatch options for that step only. The same mapping can be read from a TOML or JSON file
(`load_resources`).

A job that runs all of a subject's steps (`for_subject`) asks for the largest memory and CPUs
of its steps, the sum of their times (``UNNAMED_STEP_TIME`` for a step without one; no limit
only when no step has one) and the options of all, refused when two steps set one option to
different values. Options the worker sets itself are refused everywhere (`refuse_owned`).
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeGuard

import attrs

__all__ = [
    "OWNED_OPTIONS",
    "UNNAMED_STEP_TIME",
    "Request",
    "for_subject",
    "load_resources",
    "refuse_owned",
    "requests",
]

_KEYS = ("mem", "cpus", "time", "options")
_MEM = re.compile(r"(\d+)([KMGT]?)B?\Z", re.IGNORECASE)
_UNIT_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\Z")
UNNAMED_STEP_TIME = 3600
"""Seconds a job per subject counts for a step without a ``time`` when another step has one."""
_ARRAYS = "the worker submits a job per subject as job arrays itself; throttle them with "
_ARRAYS += "max_running (--max-running), which becomes the array's %N"
_NAMES = "the worker names each job after its subject (kwneuro-pydra:sub-01), as reruns, "
_NAMES += "squeue and sacct find them"
_FILES = "each job's output and error go next to its script in the job cache, where why a "
_FILES += "job failed is read; the steps' log lines are in <cache_root>/.logs/<subject>.log"
OWNED_OPTIONS = {
    "--array": _ARRAYS,
    "-a": _ARRAYS,
    "--job-name": _NAMES,
    "-J": _NAMES,
    "--output": _FILES,
    "-o": _FILES,
    "--error": _FILES,
    "-e": _FILES,
    "--parsable": "the worker reads the job id from sbatch's own answer",
    "--wrap": "the worker submits its own job script",
}
"""sbatch options the worker sets itself, and why each is refused from users."""
_SHORT = {
    "-p": "--partition",
    "-A": "--account",
    "-q": "--qos",
    "-C": "--constraint",
    "-w": "--nodelist",
    "-x": "--exclude",
    "-G": "--gpus",
    "-N": "--nodes",
    "-n": "--ntasks",
    "-c": "--cpus-per-task",
    "-t": "--time",
}
"""Short sbatch options with a value, by the long name they stand for."""


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


def for_subject(
    requests: Mapping[str, Request], steps: Iterable[str], unnamed_time: int = UNNAMED_STEP_TIME
) -> Request:
    """The request of one job running all of a subject's ``steps`` in turn.

    Args:
        requests: The per-step requests (steps not named ask for nothing).
        steps: The names of the steps the job runs.
        unnamed_time: Seconds counted for a step without a time limit when another step has
            one.

    Returns:
        The largest memory and CPUs; the sum of the steps' times, ``unnamed_time`` for each
        step without one (no limit when no step has one); the options of all steps, each once.

    Raises:
        ValueError: Two steps set one option to different values (the message names both).
    """
    names = list(dict.fromkeys([*steps, *requests]))
    given = {step: requests.get(step, Request()) for step in names}
    mems = [r.mem_mb for r in given.values() if r.mem_mb is not None]
    cpus = [r.cpus for r in given.values() if r.cpus is not None]
    seconds = None
    if any(r.seconds is not None for r in given.values()):
        seconds = sum(unnamed_time if r.seconds is None else r.seconds for r in given.values())
    options: list[str] = []
    set_by: dict[str, tuple[str, str | None]] = {}
    for step, request in given.items():
        for name, value, words in _parsed(request.options):
            if name in set_by and set_by[name][1] != value:
                other, before = set_by[name]
                raise ValueError(
                    f"resources: steps {other!r} and {step!r} run in one job per subject but "
                    f"ask for different {name} ({before} and {value}): give both the same "
                    "value, or use granularity='node'"
                )
            if name not in set_by:
                set_by[name] = (step, value)
                options += words
    return Request(max(mems, default=None), max(cpus, default=None), seconds, tuple(options))


def _parsed(options: Iterable[str]) -> list[tuple[str, str | None, list[str]]]:
    """sbatch options as (long name, value or None, the words giving it)."""
    words = list(options)
    found: list[tuple[str, str | None, list[str]]] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            name, has, value = word.partition("=")
            if not has and i + 1 < len(words) and not words[i + 1].startswith("-"):
                found.append((name, words[i + 1], words[i : i + 2]))
                i += 2
                continue
            found.append((name, value if has else None, [word]))
        elif word[:2] in _SHORT:
            if len(word) > 2:
                found.append((_SHORT[word[:2]], word[2:], [word]))
            else:
                following = words[i + 1] if i + 1 < len(words) else None
                found.append((_SHORT[word], following, words[i : i + 2]))
                i += 1
        else:
            found.append((word, None, [word]))
        i += 1
    return found


def refuse_owned(args: Iterable[str], where: str) -> None:
    """Refuse the sbatch options the worker sets itself (`OWNED_OPTIONS`).

    Args:
        args: sbatch options, as separate arguments.
        where: What gave them, for the message (``"sbatch_args"``, a step's options).

    Raises:
        ValueError: One is owned: the message names it and says why.
    """
    for arg in args:
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]
        if name in OWNED_OPTIONS:
            raise ValueError(f"{where}: {arg!r} is not accepted: {OWNED_OPTIONS[name]}")


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
    options = tuple(shlex.split(value))
    refuse_owned(options, f"resources[{step!r}]['options']")
    return options


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"

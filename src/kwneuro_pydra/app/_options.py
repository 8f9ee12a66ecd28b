"""The BIDS app's DTI parameters: their checks and defaults, and the run's record of them.

A run records the parameters it ran with (and its work folder) in
``OUTPUT_DIR/logs/kwneuro-pydra-options.json``; `app_status` looks the cache up with them
unless told otherwise, so ``status`` needs no option repeated. An output folder written by an
earlier version holds the record at its root (`LEGACY_OPTIONS_FILE`): it is read while the
new one is absent and removed when a run writes the new one.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from kwneuro_pydra._files import read_regular
from kwneuro_pydra.app._errors import AppError
from kwneuro_pydra.bids import write_json

__all__ = [
    "LEGACY_OPTIONS_FILE",
    "OPTIONS_FILE",
    "Parameter",
    "check_parameters",
    "natural",
    "parameters",
    "positive_float",
    "positive_int",
    "read_options",
    "recorded_work_dir",
    "status_parameters",
    "write_options",
]

OPTIONS_FILE = "logs/kwneuro-pydra-options.json"
"""The file in OUTPUT_DIR recording the DTI options and work folder of the last run: in the
``logs/`` folder BIDS reserves for a derivative dataset's records (the validator does not
look inside it), next to the run's job cache (`kwneuro_pydra.app.LOGS`)."""

LEGACY_OPTIONS_FILE = "kwneuro-pydra-options.json"
"""Where versions up to 0.1.0 recorded them, at OUTPUT_DIR's root (which the BIDS validator
reports as a sidecar without a data file): read while `OPTIONS_FILE` is absent, removed when
a run writes `OPTIONS_FILE`."""

_log = logging.getLogger(__name__)
T = TypeVar("T", int, float)


def _at_least(
    convert: Callable[[str], T], low: T, kind: str, *, strict: bool = False
) -> Callable[[str], T]:
    """A converter: ``convert(text)``, at least ``low`` (above it when ``strict``)."""

    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise ValueError(f"expected {kind}, got {text!r}") from None
        if value < low or (strict and value == low) or value != value:
            bound = "above" if strict else "at least"
            raise ValueError(f"must be {bound} {low:g}, got {text}")
        return value

    return parse


positive_int = _at_least(int, 1, "a whole number")
"""Converter: an integer of at least 1 (ValueError otherwise)."""
natural = _at_least(int, 0, "a whole number")
"""Converter: an integer of at least 0 (ValueError otherwise)."""
positive_float = _at_least(float, 0.0, "a number", strict=True)
"""Converter: a number above 0 (ValueError otherwise)."""


@attrs.frozen
class Parameter:
    """One DTI parameter of the pipeline and the command line's flag for it.

    Attributes:
        flag: The command line's option, e.g. ``--bmax``.
        name: The pipeline's keyword argument, e.g. ``bmax``.
        convert: Text to value; ValueError with a reason when the text is not one.
        default: The pipeline's default.
        help: What it is, one line.
        metavar: The value's name in the command line's help.
        choices: The values allowed, when they are few.
    """

    flag: str
    name: str
    convert: Callable[[str], Any]
    default: Any
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None

    def check(self, value: Any) -> Any:
        """``value`` as the command line would have parsed it.

        Args:
            value: A number or text.

        Returns:
            The value converted.

        Raises:
            ValueError: It is not a value of this parameter (the message names it).
        """
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"{self.name}: expected a value, got {value!r}")
        try:
            parsed = self.convert(str(value))
        except ValueError as error:
            raise ValueError(f"{self.name}: {error}") from None
        if self.choices is not None and parsed not in self.choices:
            expected = ", ".join(self.choices)
            raise ValueError(f"{self.name}: expected one of {expected}, got {value!r}")
        return parsed

    @property
    def default_text(self) -> str:
        """The default as a user types it (``1500``)."""
        return text(self.default)

    def shown(self, value: Any) -> str:
        """``--bmax 1500``: the option as a user types it."""
        return f"{self.flag} {text(value)}"


def text(value: Any) -> str:
    """A parameter's value as a user types it (``1500``, not ``1500.0``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


@functools.cache
def parameters() -> tuple[Parameter, ...]:
    """The DTI parameters, their defaults those of the BIDS app's pipeline (`bids_dti`).

    Returns:
        The parameters in the order the command line lists them.
    """
    from kwneuro_pydra.workflows.bids_app import bids_dti
    from kwneuro_pydra.workflows.dti import FIT_METHODS, MASK_METHODS

    default = {n: p.default for n, p in inspect.signature(bids_dti).parameters.items()}
    return (
        Parameter(
            "--fit-method",
            "fit_method",
            str,
            default["fit_method"],
            "tensor fit",
            choices=FIT_METHODS,
        ),
        Parameter(
            "--bmax", "bmax", positive_float, default["bmax"], "highest shell to fit, s/mm²", "B"
        ),
        Parameter(
            "--mask-method",
            "mask_method",
            str,
            default["mask_method"],
            "brain mask: shells (every volume, as MRtrix3's dwi2mask) or median-otsu (dipy's)",
            choices=MASK_METHODS,
        ),
        Parameter(
            "--mask-median-radius",
            "median_radius",
            natural,
            default["median_radius"],
            "median filter radius of the median-otsu brain mask, voxels",
            "R",
        ),
        Parameter(
            "--mask-numpass",
            "numpass",
            positive_int,
            default["numpass"],
            "median filter passes of the median-otsu brain mask",
            "N",
        ),
    )


def check_parameters(given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every DTI parameter: those given, checked, and the pipeline's defaults for the rest.

    Args:
        given: Parameter name -> value (None: all defaults).

    Returns:
        Name -> value for every parameter of `parameters`.

    Raises:
        AppError: A name is not a parameter, or a value is not one of it.
    """
    given = dict(given or {})
    known = {p.name: p for p in parameters()}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise AppError(
            f"parameters: unknown {', '.join(unknown)} (the parameters: {', '.join(known)})"
        )
    try:
        return {
            name: p.check(given[name]) if name in given else p.default for name, p in known.items()
        }
    except ValueError as error:
        raise AppError(f"parameters: {error}") from None


def write_options(
    output_dir: Path, values: Mapping[str, Any], *, version: str, work_dir: Path
) -> Path:
    """Record a run's DTI parameters and work folder in `OPTIONS_FILE`.

    The record an earlier version left at OUTPUT_DIR's root (`LEGACY_OPTIONS_FILE`) is
    removed: this one replaces it.

    Args:
        output_dir: The run's output folder.
        values: The pipeline's DTI parameters (`check_parameters`).
        version: kwneuro-pydra's version.
        work_dir: The run's cache folder (absolute).

    Returns:
        The file written (atomically; untouched when it already says the same).
    """
    path = output_dir / OPTIONS_FILE
    write_json(
        path,
        {
            "Description": "DTI options and work folder of the last 'kwneuro-pydra run' into this "
            "folder; 'kwneuro-pydra status' uses them",
            "GeneratedBy": {"Name": "kwneuro-pydra", "Version": version},
            "Parameters": dict(values),
            "WorkDir": str(work_dir),
        },
    )
    with contextlib.suppress(OSError):  # one left behind is harmless: this one is read first
        (output_dir / LEGACY_OPTIONS_FILE).unlink()
    return path


def _record_path(output_dir: Path) -> Path:
    """The record of the last run: `OPTIONS_FILE`, else an earlier version's, if there."""
    path, legacy = output_dir / OPTIONS_FILE, output_dir / LEGACY_OPTIONS_FILE
    return legacy if not os.path.lexists(path) and os.path.lexists(legacy) else path


def _record(path: Path) -> dict[str, Any] | None:
    """The record at ``path`` (None when there is none); ValueError naming it if unusable."""
    try:
        raw = read_regular(path).decode("utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ValueError(f"{path}: {error.strerror}") from None
    try:
        record = json.loads(raw)
        if not isinstance(record, dict) or not isinstance(record["Parameters"], dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: not a record of kwneuro-pydra run's options") from None
    return record


def read_options(output_dir: Path) -> dict[str, Any] | None:
    """The DTI parameters the last run into ``output_dir`` recorded (`write_options`).

    Args:
        output_dir: The run's output folder.

    Returns:
        Parameter -> value, for the parameters recorded; None when there is no record.

    Raises:
        ValueError: The record cannot be read or holds a value no parameter takes.
    """
    path = _record_path(output_dir)
    record = _record(path)
    if record is None:
        return None
    recorded = record["Parameters"]
    try:
        return {p.name: p.check(recorded[p.name]) for p in parameters() if p.name in recorded}
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def recorded_work_dir(output_dir: Path) -> Path | None:
    """The work folder the last run into ``output_dir`` recorded, if any (and readable)."""
    try:
        record = _record(_record_path(output_dir))
    except ValueError:
        return None
    work_dir = (record or {}).get("WorkDir")
    return Path(work_dir) if isinstance(work_dir, str) else None


def status_parameters(given: Mapping[str, Any], output_dir: Path) -> tuple[dict[str, Any], str]:
    """The parameters `app_status` looks up: those given, else the run's, else the defaults.

    Logs a warning for each parameter given that differs from the run's record, and when the
    record cannot be read (the defaults stand in).

    Args:
        given: Parameter name -> value; a parameter left out (or None) is the run's.
        output_dir: The run's output folder.

    Returns:
        The parameters, and a line saying what they are (``--fit-method OLS ...``) and where
        they come from.

    Raises:
        AppError: A value given is not one of its parameter.
    """
    checked = check_parameters({k: v for k, v in given.items() if v is not None})
    origin = f"the defaults: no run recorded its options in {output_dir}"
    path = _record_path(output_dir)
    try:
        recorded = read_options(output_dir)
    except ValueError as error:
        _log.warning("ignoring the run's recorded options: %s", error)
        recorded, origin = None, f"the defaults: {path} cannot be used"
    values, shown = {}, []
    for parameter in parameters():
        mine = checked[parameter.name] if given.get(parameter.name) is not None else None
        ran = (recorded or {}).get(parameter.name)
        if mine is not None and ran is not None and mine != ran:
            _log.warning(
                "%s: the run recorded %s in %s; showing the cache for %s",
                parameter.flag,
                parameter.shown(ran),
                path,
                parameter.shown(mine),
            )
        values[parameter.name] = next(v for v in (mine, ran, parameter.default) if v is not None)
        shown.append(parameter.shown(values[parameter.name]))
    if recorded is not None:
        origin = f"the run's, recorded in {path}"
    return values, f"DTI options: {' '.join(shown)} (as given, else {origin})"

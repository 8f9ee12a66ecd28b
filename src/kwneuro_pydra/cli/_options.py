"""The BIDS app's DTI options: their flags, the pipeline's parameters, and the run's record.

``run`` records the parameters it ran with in ``OUTPUT_DIR/kwneuro-pydra-options.json``;
``status`` looks the cache up with them unless told otherwise, so it needs no options repeated.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from kwneuro_pydra.bids import write_json
from kwneuro_pydra.cli._common import natural, positive_float, positive_int

__all__ = [
    "OPTIONS_FILE",
    "add_dti_options",
    "parameters_of",
    "read_options",
    "status_parameters",
    "write_options",
]

OPTIONS_FILE = "kwneuro-pydra-options.json"
"""The file in OUTPUT_DIR recording the DTI options of the last ``run`` into it."""

_log = logging.getLogger(__name__)


@attrs.frozen
class _Option:
    """One DTI option: ``flag`` on the command line, ``parameter`` of the pipeline."""

    flag: str
    parameter: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None

    def check(self, value: Any) -> Any:
        """``value`` as the command line would have parsed it; ValueError if it is not one."""
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"{self.parameter}: expected a value, got {value!r}")
        try:
            parsed = self.parse(str(value))
        except (argparse.ArgumentTypeError, ValueError) as error:
            raise ValueError(f"{self.parameter}: {error}") from None
        if self.choices is not None and parsed not in self.choices:
            expected = ", ".join(self.choices)
            raise ValueError(f"{self.parameter}: expected one of {expected}, got {value!r}")
        return parsed

    def shown(self, value: Any) -> str:
        """``--bmax 1500``: the option as a user types it."""
        return f"{self.flag} {_text(value)}"


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@functools.cache
def _options() -> tuple[_Option, ...]:
    """The options, their defaults those of the BIDS app's pipeline (`bids_dti`)."""
    from kwneuro_pydra.workflows.bids_app import bids_dti
    from kwneuro_pydra.workflows.dti import FIT_METHODS

    default = {n: p.default for n, p in inspect.signature(bids_dti).parameters.items()}
    return (
        _Option("--fit-method", "fit_method", str, default["fit_method"], "tensor fit",
                choices=FIT_METHODS),
        _Option("--bmax", "bmax", positive_float, default["bmax"],
                "highest shell to fit, s/mm²", "B"),
        _Option("--mask-median-radius", "median_radius", natural, default["median_radius"],
                "median filter radius of the median-Otsu brain mask, voxels", "R"),
        _Option("--mask-numpass", "numpass", positive_int, default["numpass"],
                "median filter passes of the brain mask", "N"),
    )  # fmt: skip


def add_dti_options(parser: argparse.ArgumentParser, *, recorded: bool = False) -> None:
    """Add the pipeline's options (``run``'s; ``status`` looks up the same entries).

    Args:
        parser: The command's parser.
        recorded: The options default to what the last run recorded (``status``): an
            option left out is None in the parsed arguments.
    """
    group = parser.add_argument_group("DTI")
    for option in _options():
        default = _text(option.default)
        if recorded:
            default = f"the run's, else {default}"
        group.add_argument(
            option.flag, dest=option.parameter, type=option.parse, choices=option.choices,
            default=None if recorded else option.default, metavar=option.metavar,
            help=f"{option.help} (default: {default})",
        )  # fmt: skip


def parameters_of(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline's keyword arguments from the DTI options of parsed arguments."""
    return {option.parameter: getattr(args, option.parameter) for option in _options()}


def write_options(output_dir: Path, parameters: Mapping[str, Any], *, version: str) -> Path:
    """Record the DTI parameters of a run in ``OUTPUT_DIR/kwneuro-pydra-options.json``.

    Args:
        output_dir: The run's output folder.
        parameters: The pipeline's DTI parameters (`parameters_of`).
        version: kwneuro-pydra's version.

    Returns:
        The file written (atomically; untouched when it already says the same).
    """
    path = output_dir / OPTIONS_FILE
    write_json(path, {
        "Description": "DTI options of the last 'kwneuro-pydra run' into this folder; "
        "'kwneuro-pydra status' uses them",
        "GeneratedBy": {"Name": "kwneuro-pydra", "Version": version},
        "Parameters": dict(parameters),
    })  # fmt: skip
    return path


def read_options(output_dir: Path) -> dict[str, Any] | None:
    """The DTI parameters the last run into ``output_dir`` recorded (`write_options`).

    Args:
        output_dir: The run's output folder.

    Returns:
        Parameter -> value, for the parameters recorded; None when there is no record.

    Raises:
        ValueError: The record cannot be read or holds a value no option takes.
    """
    path = output_dir / OPTIONS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ValueError(f"{path}: {error.strerror}") from None
    try:
        recorded = json.loads(text)["Parameters"]
        if not isinstance(recorded, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: not a record of kwneuro-pydra run's options") from None
    try:
        return {o.parameter: o.check(recorded[o.parameter]) for o in _options()
                if o.parameter in recorded}  # fmt: skip
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def status_parameters(args: argparse.Namespace, output_dir: Path) -> tuple[dict[str, Any], str]:
    """The parameters ``status`` looks up: those given, else the run's, else the defaults.

    Logs a warning for each option given that differs from the run's record, and when the
    record cannot be read (the defaults stand in).

    Args:
        args: ``status``'s parsed arguments (DTI options None when left out).
        output_dir: The run's output folder.

    Returns:
        The parameters, and a line saying what they are (``--fit-method OLS ...``) and where
        they come from.
    """
    origin = f"the defaults: no run recorded its options in {output_dir}"
    try:
        recorded = read_options(output_dir)
    except ValueError as error:
        _log.warning("ignoring the run's recorded options: %s", error)
        recorded, origin = None, f"the defaults: {output_dir / OPTIONS_FILE} cannot be used"
    parameters, shown = {}, []
    for option in _options():
        given = getattr(args, option.parameter)
        ran = (recorded or {}).get(option.parameter)
        if given is not None and ran is not None and given != ran:
            _log.warning(
                "%s: the run recorded %s in %s; showing the cache for %s",
                option.flag, option.shown(ran), output_dir / OPTIONS_FILE, option.shown(given),
            )  # fmt: skip
        parameters[option.parameter] = next(
            v for v in (given, ran, option.default) if v is not None
        )
        shown.append(option.shown(parameters[option.parameter]))
    if recorded is not None:
        origin = f"the run's, recorded in {output_dir / OPTIONS_FILE}"
    return parameters, f"DTI options: {' '.join(shown)} (as given, else {origin})"


def add_cluster_options(group: Any) -> None:
    """Add ``--max-running``, ``--max-poll-delay``, ``--detach`` (``--worker slurm``) and
    ``--job-cache``.

    Args:
        group: An argparse parser or argument group (``run``'s cluster options).
    """
    group.add_argument(
        "--max-running", type=positive_int, metavar="N",
        help="at most N of the run's jobs at once (a job array's %%N)",
    )  # fmt: skip
    group.add_argument(
        "--max-poll-delay", type=positive_float, metavar="SECONDS",
        help="longest delay between looks at the queue while nothing changes (default 60)",
    )  # fmt: skip
    group.add_argument(
        "--detach", action="store_true", default=None,
        help="submit the jobs (--granularity subject) and exit; a later run collects them",
    )  # fmt: skip
    group.add_argument(
        "--job-cache", type=Path, metavar="DIR",
        help="Pydra's job cache (default ~/.cache/kwneuro-pydra/jobs/...): private to you, "
        "visible from the nodes",
    )  # fmt: skip


def cluster_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `run_subjects` keyword arguments of `add_cluster_options`' options, when given."""
    names = ("max_running", "max_poll_delay", "detach", "job_cache")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}

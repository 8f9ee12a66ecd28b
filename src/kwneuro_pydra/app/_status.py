"""`app_status`: each series' steps as the cache holds them, for the options of the last run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from kwneuro_pydra.app._options import recorded_work_dir, status_parameters
from kwneuro_pydra.app._series import describe, look_up, pipeline, read_record, units
from kwneuro_pydra.cache import StepState

__all__ = ["STATES", "AppStatus", "SeriesStatus", "app_status"]

STATES = ("cached", "stale", "missing", "failed")
"""A step's states in `SeriesStatus.states`: served by the cache; in the cache for code that
changed since; not in the cache; failed in the last run."""


@attrs.frozen
class SeriesStatus:
    """One series' steps as the cache holds them.

    Attributes:
        name: The series' source entities (``sub-02_ses-1``).
        subject: The subject label (without ``sub-``).
        source: The DWI's path in the dataset.
        states: Step -> one of `STATES`, in the pipeline's order (empty when the DWI cannot
            be loaded).
        failure: Why the DWI cannot be loaded, or why the last run of the series failed.
    """

    name: str
    subject: str
    source: str
    states: Mapping[str, str]
    failure: str | None = None


@attrs.frozen
class AppStatus:
    """What `app_status` found.

    Attributes:
        steps: The pipeline's steps, in order.
        series: Every series selected, sorted by path.
        no_dwi: Selected subjects (labels) without a DWI series.
        work_dir: The cache looked into.
        parameters: The DTI parameters looked up.
        options: One line: those parameters as options, and where they come from.
    """

    steps: tuple[str, ...]
    series: tuple[SeriesStatus, ...]
    no_dwi: tuple[str, ...]
    work_dir: Path
    parameters: Mapping[str, Any]
    options: str

    @property
    def counts(self) -> dict[str, int]:
        """State -> steps in it over every series (a series that cannot load counts one
        failed).
        """
        counts = dict.fromkeys(STATES, 0)
        for series in self.series:
            for state in series.states.values():
                counts[state] += 1
            counts["failed"] += not series.states
        return counts

    @property
    def summary(self) -> str:
        """``3 subjects, 4 DWI series`` (and the subjects without DWI)."""
        return describe({s.subject for s in self.series}, len(self.series), self.no_dwi)


def app_status(
    bids_dir: str | Path,
    output_dir: str | Path,
    *,
    participants: Sequence[str] = (),
    sessions: Sequence[str] = (),
    work_dir: str | Path | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> AppStatus:
    """Look up every step of every series in the cache; compute and write nothing.

    Args:
        bids_dir: The BIDS dataset.
        output_dir: The output folder of the runs.
        participants: Only these subject labels; all when empty.
        sessions: Only these session labels; all when empty.
        work_dir: The cache; default: the one the last run into ``output_dir`` recorded,
            else ``OUTPUT_DIR/.kwneuro-cache``.
        parameters: DTI parameters to look up; those left out are the last run's (recorded
            in ``output_dir``), else the defaults. A parameter given that differs from the
            run's is logged as a warning.

    Returns:
        The `AppStatus`.

    Raises:
        BidsError: The dataset cannot be used, or a label does not exist or has no DWI.
        AppError: A parameter is unknown or its value is not one of it.
    """
    output_dir = Path(output_dir).absolute()
    found = units(Path(bids_dir), participants, sessions)
    if work_dir is None:
        work_dir = recorded_work_dir(output_dir) or output_dir / ".kwneuro-cache"
    work = Path(work_dir).absolute()
    values, options = status_parameters(parameters or {}, output_dir)
    record = read_record(work)
    steps = tuple(s.__name__ for s in pipeline().STEPS)
    series = []
    for unit in found.units:
        recorded = record.get(unit.name, {})
        if unit.dwi is None:
            series.append(
                SeriesStatus(unit.name, unit.series.subject, unit.series.source, {}, unit.failure)
            )
            continue
        states = dict(look_up(unit, work, values).states)
        failed_step = recorded.get("step")
        if failed_step in states and states[failed_step] != StepState.CACHED:
            states[failed_step] = StepState.FAILED
        reason = recorded.get("reason") if StepState.FAILED in states.values() else None
        series.append(
            SeriesStatus(
                unit.name,
                unit.series.subject,
                unit.series.source,
                states,
                None if reason is None else str(reason),
            )
        )
    return AppStatus(steps, tuple(series), found.no_dwi, work, values, options)

"""The BIDS app's units of work: discovered series, their caches, plans and run records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from kwneuro_pydra._files import read_regular, write_atomic
from kwneuro_pydra._plan import Plan, plan
from kwneuro_pydra.bids import BidsError, DwiSeries, SeriesError, discover
from kwneuro_pydra.cli._common import UsageError, plural
from kwneuro_pydra.resources import Dwi

__all__ = [
    "RECORD",
    "Unit",
    "app",
    "describe",
    "look_up",
    "read_record",
    "units",
    "write_record",
]

RECORD = "last-run.json"
"""The work folder's record of the last run's failures (for ``status``)."""


def app() -> Any:
    """The BIDS app's pipeline module (`kwneuro_pydra.workflows.bids_app`)."""
    from kwneuro_pydra.workflows import bids_app

    return bids_app


@attrs.define
class Unit:
    """One series as a unit of work.

    Attributes:
        series: The discovered series.
        dwi: Its `Dwi`, or None when it cannot be loaded.
        failure: Why it cannot be loaded (or why its run failed), one line.
        failed_step: The step that failed, if any.
        plan: What its cache holds, once looked up.
    """

    series: DwiSeries
    dwi: Dwi | None = None
    failure: str | None = None
    failed_step: str | None = None
    plan: Plan | None = None

    @property
    def name(self) -> str:
        """The unit's name: the series' source entities (its cache folder's name)."""
        return self.series.name


def units(bids_dir: Path, participants: Sequence[str], sessions: Sequence[str]) -> list[Unit]:
    """Discover the series and load each (a series that cannot load is a failed unit).

    Args:
        bids_dir: The dataset.
        participants: Subject labels to keep (all when empty).
        sessions: Session labels to keep (all when empty).

    Returns:
        The units, sorted by path.

    Raises:
        UsageError: The dataset cannot be used, a label does not exist, or no DWI is found.
    """
    try:
        found = discover(bids_dir, participants=participants, sessions=sessions)
    except BidsError as error:
        raise UsageError(str(error)) from None
    if not found:
        raise UsageError(
            f"no DWI series in {bids_dir.absolute()} (looked for "
            "sub-<label>/[ses-<label>/]dwi/*_dwi.nii[.gz])"
        )
    result = []
    for series in found:
        try:
            result.append(Unit(series, series.load()))
        except SeriesError as error:
            result.append(Unit(series, failure=str(error)))
    return result


def look_up(unit: Unit, work_dir: Path, parameters: dict[str, Any]) -> Plan:
    """Plan ``unit`` against its cache (``work_dir/<name>``) and keep the plan on it."""
    assert unit.dwi is not None
    bids_app = app()
    unit.plan = plan(
        bids_app.bids_dti, {"dwi": unit.dwi, **parameters}, work_dir / unit.name, bids_app.STEPS
    )
    return unit.plan


def write_record(work_dir: Path, all_units: Sequence[Unit]) -> None:
    """Remember which units failed in this run, and why (read by ``status``)."""
    failed = {u.name: {"step": u.failed_step, "reason": u.failure} for u in all_units if u.failure}
    write_atomic(work_dir / RECORD, (json.dumps(failed, indent=2) + "\n").encode())


def read_record(work_dir: Path) -> dict[str, dict[str, Any]]:
    """The failures of the last run in ``work_dir`` (empty when there was none)."""
    try:
        raw = json.loads(read_regular(work_dir / RECORD))
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def describe(all_units: Sequence[Unit]) -> str:
    """``3 subjects, 4 DWI series``."""
    subjects = {u.series.subject for u in all_units}
    series = plural(len(all_units), "DWI series", "DWI series")
    return f"{plural(len(subjects), 'subject')}, {series}"

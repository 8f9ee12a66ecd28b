"""The BIDS app's units of work: discovered series, their caches and plans, and the record of
every series run into an output folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from kwneuro_pydra._files import open_shared, read_regular, write_atomic
from kwneuro_pydra._plan import Plan, plan
from kwneuro_pydra.app._errors import BidsError
from kwneuro_pydra.app._words import plural
from kwneuro_pydra.bids import DwiSeries, SeriesError, discover, participants_of
from kwneuro_pydra.resources import Dwi

__all__ = [
    "RECORD",
    "Unit",
    "describe",
    "look_up",
    "pipeline",
    "read_record",
    "recording",
    "units",
]

RECORD = "last-run.json"
"""The work folder's record of every series run into it: its source, and why it failed in
its last run (read by `app_status` and by the group report)."""

_BIDS_NAME = re.compile(r"[A-Za-z0-9]+-[A-Za-z0-9]+(_[A-Za-z0-9]+-[A-Za-z0-9]+)*\Z")
"""A series' source entities as BIDS spells them: ``key-label`` pairs of letters and digits."""


def pipeline() -> Any:
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
        parameters: The DTI parameters it was looked up (and run) with.
        returned: What its run returned when steps could not be stored in its cache (a
            folder this user cannot write, a full disk): the pipeline's outputs, files in
            Pydra's job cache; else None.
    """

    series: DwiSeries
    dwi: Dwi | None = None
    failure: str | None = None
    failed_step: str | None = None
    plan: Plan | None = None
    parameters: Mapping[str, Any] | None = None
    returned: Any = None

    @property
    def outputs(self) -> Any:
        """The pipeline's outputs: served by its cache, else what its run returned for
        steps that could not be stored; None when neither holds them.
        """
        if self.plan is not None and self.plan.outputs is not None:
            return self.plan.outputs
        return self.returned

    @property
    def name(self) -> str:
        """The unit's name: the series' source entities (its cache folder's name)."""
        return self.series.name


@attrs.frozen
class Found:
    """What the app found in a dataset for a selection.

    Attributes:
        units: The series as units, sorted by path.
        no_dwi: Subject labels (without ``sub-``) selected that have no DWI series (in the
            sessions selected, when sessions are).
    """

    units: list[Unit]
    no_dwi: tuple[str, ...]


def units(bids_dir: Path, participants: Sequence[str], sessions: Sequence[str]) -> Found:
    """Discover the series and load each; a series that cannot be used is a failed unit.

    A series fails alone, its file named, when it cannot load, when its file name is not a
    BIDS name, or when two images share its name (``sub-01_dwi.nii`` beside
    ``sub-01_dwi.nii.gz``): neither is run, rather than both into one cache.

    Args:
        bids_dir: The dataset.
        participants: Subject labels to keep (all when empty).
        sessions: Session labels to keep (all when empty).

    Returns:
        The units, and the selected subjects without a DWI series.

    Raises:
        BidsError: The dataset cannot be used, a label does not exist, a participant asked
            for has no DWI series, or no DWI series is found.
    """
    found = discover(bids_dir, participants=participants, sessions=sessions)
    wanted = {p.removeprefix("sub-") for p in participants}
    everyone = wanted or set(participants_of(bids_dir))
    no_dwi = tuple(sorted(everyone - {s.subject for s in found}))
    asked = sorted(wanted & set(no_dwi))
    if asked:
        raise BidsError(
            f"{plural(len(asked), 'participant')} asked for without a DWI series"
            f"{' in the sessions asked for' if sessions else ''}: "
            f"{', '.join('sub-' + s for s in asked)} (in {Path(bids_dir).absolute()})"
        )
    if not found:
        raise BidsError(
            f"no DWI series in {Path(bids_dir).absolute()} (looked for "
            "sub-<label>/[ses-<label>/]dwi/*_dwi.nii[.gz])"
        )
    by_name: dict[str, list[DwiSeries]] = {}
    for series in found:
        by_name.setdefault(series.name, []).append(series)
    result = []
    for series in found:
        twins = by_name[series.name]
        if len(twins) > 1:
            others = ", ".join(s.source for s in twins if s is not series)
            result.append(
                Unit(
                    series,
                    failure=f"{series.source}: another image has its name "
                    f"({others}); remove or rename one of them",
                )
            )
        elif not _BIDS_NAME.match(series.name):
            result.append(
                Unit(
                    series,
                    failure=f"{series.source}: not a BIDS file name (its "
                    "entities must be key-label pairs of letters and digits, "
                    "e.g. sub-01_acq-b1000_dwi.nii.gz); rename it",
                )
            )
        else:
            try:
                result.append(Unit(series, series.load()))
            except SeriesError as error:
                result.append(Unit(series, failure=str(error)))
    return Found(result, no_dwi)


def look_up(unit: Unit, work_dir: Path, parameters: Mapping[str, Any]) -> Plan:
    """Plan ``unit`` against its cache (``work_dir/<name>``) and keep the plan on it."""
    assert unit.dwi is not None
    bids_app = pipeline()
    unit.parameters = dict(parameters)
    unit.plan = plan(
        bids_app.bids_dti, {"dwi": unit.dwi, **parameters}, work_dir / unit.name, bids_app.STEPS
    )
    return unit.plan


def read_record(work_dir: Path) -> dict[str, dict[str, Any]]:
    """Every series run into ``work_dir``: name -> ``source``, the DTI ``parameters`` of its
    last run, and ``step`` and ``reason`` when that run failed (empty when none was).

    Args:
        work_dir: The work folder.

    Returns:
        The record (a record that cannot be read is empty).
    """
    try:
        raw = json.loads(read_regular(work_dir / RECORD))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, dict)}


@contextlib.contextmanager
def recording(work_dir: Path, ran: Sequence[Unit]) -> Iterator[dict[str, dict[str, Any]]]:
    """Add the series of this run to ``work_dir``'s record, holding its lock for the context.

    Runs into one work folder (one participant each, at the same time or one after the
    other) each update their own series; the lock keeps a run from losing another's
    update, and, held while the reports are written, makes the last report cover both.
    A unit that fails inside the context (its derivatives cannot be written) is recorded
    again, failed, when it ends.

    Args:
        work_dir: The work folder.
        ran: The units of this run (outcomes known).

    Yields:
        The record after this run's update (see `read_record`).
    """
    with open(_lock_file(work_dir / f"{RECORD}.lock"), "rb") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        record = read_record(work_dir)
        mine = _entries(ran)
        record.update(mine)
        write_atomic(work_dir / RECORD, (json.dumps(record, indent=2) + "\n").encode())
        yield record
        if _entries(ran) != mine:
            record.update(_entries(ran))
            write_atomic(work_dir / RECORD, (json.dumps(record, indent=2) + "\n").encode())


def _entries(ran: Sequence[Unit]) -> dict[str, dict[str, Any]]:
    """The record's entries of ``ran`` (see `read_record`)."""
    return {
        unit.name: {
            "source": unit.series.source,
            "step": unit.failed_step,
            "reason": unit.failure,
            "parameters": unit.parameters,
        }
        for unit in ran
    }


def _lock_file(path: Path) -> int:
    """A descriptor of the record's lock file, never through a link; read-only when another
    member of a shared work folder made it (``flock`` needs no write access).
    """
    try:
        return open_shared(path)
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)


def describe(subjects: Collection[str], series: int, no_dwi: Sequence[str] = ()) -> str:
    """``3 subjects, 4 DWI series`` (``; no DWI: sub-04`` when a subject has none).

    Args:
        subjects: The subject labels of the series.
        series: How many series.
        no_dwi: Subject labels without a DWI series.

    Returns:
        The phrase.
    """
    text = f"{plural(len(subjects), 'subject')}, {plural(series, 'DWI series', 'DWI series')}"
    if no_dwi:
        text += f"; no DWI: {', '.join('sub-' + s for s in no_dwi)}"
    return text

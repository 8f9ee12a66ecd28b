"""`run_bids_app`: discover the DWI series of a BIDS dataset, serve what the cache holds,
compute the rest with Pydra, then write BIDS-Derivatives, the reports and the run's record.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from kwneuro_pydra._files import read_regular
from kwneuro_pydra._version import __version__
from kwneuro_pydra.app._errors import AppError, BidsError
from kwneuro_pydra.app._folders import outside_dataset, writable_folder
from kwneuro_pydra.app._options import check_parameters, write_options
from kwneuro_pydra.app._series import Unit, describe, look_up, pipeline, recording, units
from kwneuro_pydra.bids import (
    discover,
    no_link_under,
    write_dataset_description,
    write_derivatives,
)
from kwneuro_pydra.cache import Cache

__all__ = [
    "LOAD",
    "LOGS",
    "WORKERS",
    "AppRun",
    "Progress",
    "SeriesOutcome",
    "StepCount",
    "StepOutcome",
    "run_bids_app",
]

WORKERS = ("debug", "cf", "slurm")
"""The Pydra workers the app runs on (Pydra 1.0a12's ``sge`` worker is broken: see
``docs/cluster.md``)."""

LOAD = "(load DWI)"
"""The step name under which `AppRun.steps` counts the series that could not be loaded."""

LOGS = "logs"
"""``OUTPUT_DIR/logs/``: Pydra's job cache of the app's runs, ``pydra-<user id>/`` (each run's
``run-*`` folder, with the crash records ``_error.pklz`` of what failed in it, kept until the
next run), never a folder in your home."""

_SLURM_ONLY = (
    "sbatch_args",
    "resources",
    "granularity",
    "pending_timeout",
    "poll_delay",
    "detach",
)


@attrs.frozen
class StepOutcome:
    """What one step did for one series in a run.

    Attributes:
        step: The step's name.
        state: ``computed`` (in this run), ``reused`` (from the cache), ``failed`` or
            ``not run`` (a step before it failed).
        seconds: How long the step took when it was computed (in this run, or in the run that
            made the entry reused), or None.
    """

    step: str
    state: str
    seconds: float | None = None


@attrs.frozen
class SeriesOutcome:
    """One DWI series' outcome in a run.

    Attributes:
        name: The series' source entities, e.g. ``sub-02_ses-1`` (its cache folder's name).
        subject: The subject label (without ``sub-``).
        session: The session label (without ``ses-``), or None.
        source: The DWI's path relative to the dataset root.
        failure: Why it failed, one line (the file or step named), or None.
        failed_step: The step that failed, if a step did.
        steps: What each step did, in the pipeline's order (empty when the DWI cannot load).
        derivatives: The derivative images written for it (absolute paths).
        job: The Slurm job a detached run (``detach=True``) left to run for it, else None;
            its ``failure`` says so, and a later run collects its results.
    """

    name: str
    subject: str
    session: str | None
    source: str
    failure: str | None = None
    failed_step: str | None = None
    steps: tuple[StepOutcome, ...] = ()
    derivatives: tuple[Path, ...] = ()
    job: str | None = None

    @property
    def ok(self) -> bool:
        """True when the series succeeded."""
        return self.failure is None


@attrs.frozen
class StepCount:
    """One row of a run's summary: how many series each step served, computed or failed.

    Attributes:
        step: The step's name (`LOAD` for series whose DWI cannot be loaded).
        computed: Series it computed in this run.
        reused: Series it served from the cache.
        failed: Series for which it failed.
        seconds: Time it spent computing in this run, summed over the series.
    """

    step: str
    computed: int
    reused: int
    failed: int
    seconds: float


@attrs.frozen
class AppRun:
    """What `run_bids_app` did.

    Attributes:
        bids_dir: The dataset (absolute).
        output_dir: The derivatives folder (absolute).
        work_dir: The cache (absolute).
        series: Every series of this run, sorted by path.
        steps: Per step, in the pipeline's order: what it did over the series.
        no_dwi: The selected subjects (labels without ``sub-``) without a DWI series (in the
            sessions selected, when sessions are): in `participants.tsv` or a ``sub-*`` folder.
        report: The group report, ``OUTPUT_DIR/report.html`` (not written by a detached run).
        pages: The report's pages (the group's first, then one per subject; none for a
            detached run): those of the subjects this run ran are written, any other only
            when missing or out of date.
        seconds: How long the run took.
    """

    bids_dir: Path
    output_dir: Path
    work_dir: Path
    series: tuple[SeriesOutcome, ...]
    steps: tuple[StepCount, ...]
    no_dwi: tuple[str, ...]
    report: Path
    pages: tuple[Path, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        """True when every series succeeded."""
        return all(s.ok for s in self.series)

    @property
    def failed(self) -> tuple[SeriesOutcome, ...]:
        """The series that failed."""
        return tuple(s for s in self.series if not s.ok)

    @property
    def detached(self) -> tuple[SeriesOutcome, ...]:
        """The series left to run as Slurm jobs (``detach=True``): a later run collects them."""
        return tuple(s for s in self.series if s.job is not None)

    @property
    def derivatives(self) -> tuple[Path, ...]:
        """Every derivative image written, series after series."""
        return tuple(path for s in self.series for path in s.derivatives)

    @property
    def summary(self) -> str:
        """``3 subjects, 4 DWI series`` (and the subjects without DWI)."""
        return describe({s.subject for s in self.series}, len(self.series), self.no_dwi)


@attrs.frozen
class Progress:
    """A run's computing, for a live display: given to ``on_progress`` of `run_bids_app`
    when computing starts (``done`` False) and when it ends, however it ends (``done`` True).

    Attributes:
        series: The names of the series being computed.
        steps: The pipeline's steps, in order.
        work_dir: The cache.
        started: When computing started (`time.time`).
        reused: Step -> how many of the series it serves from the cache.
        done: True once computing is over (a display stops then).
    """

    series: tuple[str, ...]
    steps: tuple[str, ...]
    work_dir: Path
    started: float
    reused: Mapping[str, int]
    done: bool = False

    def counts(self) -> list[tuple[str, int, int, int]]:
        """Per step, now: ``(step, reused, computed, to do)``; reads the cache's listing."""
        rows = []
        for step in self.steps:
            computed = sum(_made_since(self.work_dir / s, step, self.started) for s in self.series)
            reused = self.reused.get(step, 0)
            rows.append((step, reused, computed, max(0, len(self.series) - reused - computed)))
        return rows


def run_bids_app(
    bids_dir: str | Path,
    output_dir: str | Path,
    *,
    participants: Sequence[str] = (),
    sessions: Sequence[str] = (),
    work_dir: str | Path | None = None,
    parameters: Mapping[str, Any] | None = None,
    worker: str = "cf",
    force: Collection[str] = (),
    on_progress: Callable[[Progress], None] | None = None,
    command: Sequence[str] | None = None,
    detach: bool = False,
    **scheduler: Any,
) -> AppRun:
    """Fit DTI to every DWI series of a BIDS dataset; write derivatives and reports.

    Every step is a cached call: a rerun serves what the cache holds and computes the rest.
    The derivatives (``OUTPUT_DIR/sub-<label>/[ses-<label>/]dwi/``) are hard links to the
    cache's entries. The reports (``report.html``, ``sub-<label>.html``) cover every series
    ever run into ``output_dir``, so runs of one participant each compose. The dataset is
    never written.

    Args:
        bids_dir: The BIDS dataset.
        output_dir: Where the derivatives and reports go (outside the dataset, or under its
            ``derivatives/<name>``).
        participants: Only these subject labels (with or without ``sub-``); all when empty.
        sessions: Only these session labels (with or without ``ses-``); all when empty.
        work_dir: The cache (default ``OUTPUT_DIR/.kwneuro-cache``).
        parameters: DTI parameters (``fit_method``, ``bmax``, ``median_radius``,
            ``numpass``); the pipeline's defaults for those left out.
        worker: The Pydra worker: one of `WORKERS`.
        force: Steps to compute again (and what depends on them); a step name or several.
        on_progress: Called with a `Progress` when computing starts and when it ends.
        command: The command line shown in the report's About section (default
            ``sys.argv``: the program that called this).
        detach: Slurm only: submit the series not served by the cache as a job array (a
            job per series: ``granularity`` ``"subject"``, implied) and return without
            waiting; those series come back with their ``job`` (`AppRun.detached`), and
            neither derivatives, reports nor the record are written. A later run without
            ``detach`` follows the jobs still queued or running, collects what they cached
            and writes everything; `kwneuro_pydra.app.job_status` shows their progress and
            `kwneuro_pydra.app.cancel_jobs` cancels them.
        **scheduler: Passed to `kwneuro_pydra.pydra.run_subjects`: ``n_procs`` (cf), and
            for ``slurm`` ``sbatch_args``, ``resources``, ``granularity``,
            ``pending_timeout``, ``poll_delay``; ``job_cache``, Pydra's job cache (its crash
            records), is ``OUTPUT_DIR/logs/pydra-<user id>`` unless given (see `LOGS`).

    Returns:
        The `AppRun`; a failed series is in it (``ok`` False), not raised.

    Raises:
        BidsError: The dataset cannot be used, a label does not exist or has no DWI series,
            or a folder to write lies in the dataset.
        AppError: An unknown step, worker or parameter; a scheduler option without its
            worker; a folder that cannot be written.
    """
    start = time.time()
    bids_dir, output_dir = Path(bids_dir).absolute(), Path(output_dir).absolute()
    force = {force} if isinstance(force, str) else set(force)
    steps = tuple(s.__name__ for s in pipeline().STEPS)
    unknown = sorted(set(force) - set(steps))
    if unknown:
        raise AppError(f"force: unknown step {', '.join(unknown)} (steps: {', '.join(steps)})")
    if worker not in WORKERS:
        why = " (Pydra 1.0a12's SGE worker is broken: see docs/cluster.md)" * (worker == "sge")
        raise AppError(f"worker {worker!r}: expected one of {', '.join(WORKERS)}{why}")
    if detach:  # a job per step would leave the steps after the first unsubmitted
        if scheduler.get("granularity", "subject") != "subject":
            raise AppError("detach: needs granularity 'subject' (a job per series)")
        scheduler = {**scheduler, "granularity": "subject", "detach": True}
    slurm_only = [name for name in _SLURM_ONLY if name in scheduler]
    if slurm_only and worker != "slurm":
        raise AppError(f"{', '.join(slurm_only)}: only with worker 'slurm' (got {worker!r})")
    values = check_parameters(parameters)
    found = units(bids_dir, participants, sessions)
    work = Path(work_dir).absolute() if work_dir is not None else output_dir / ".kwneuro-cache"
    outside_dataset(output_dir, bids_dir, "OUTPUT_DIR")
    outside_dataset(work, bids_dir, "the work folder")
    output_dir = writable_folder(output_dir, "OUTPUT_DIR")
    work = writable_folder(work, "the work folder")
    write_options(output_dir, values, version=__version__, work_dir=work)  # for status
    all_units = found.units
    pending = [
        u
        for u in all_units
        if u.dwi is not None and (not look_up(u, work, values).complete or force)
    ]
    detached: dict[str, str] = {}
    if pending:
        scheduler = {"job_cache": output_dir / LOGS / f"pydra-{os.getuid()}", **scheduler}
        detached = _compute(pending, work, values, worker, force, on_progress, scheduler)
    for unit in pending:  # what each step did, read back from the cache
        if (
            unit.failure is None
            and not look_up(unit, work, values).complete
            and unit.returned is None
        ):
            unit.failure = "its results are not in the cache (a step could not be cached)"
    if detached:  # the jobs run on: the run that collects them writes the rest
        left = tuple(_outcome(u, job=detached.get(u.name)) for u in all_units)
        report, seconds = output_dir / "report.html", time.time() - start
        return AppRun(bids_dir, output_dir, work, left, (), found.no_dwi, report, (), seconds)
    outcomes = {u.name: _step_outcomes(u, steps, start) for u in all_units}
    counts = _counts(all_units, outcomes, steps)
    with recording(work, all_units) as record:
        others = _recorded_units(bids_dir, record, {u.name for u in all_units}, work, values)
        derivatives, pages = _write_outputs(
            [*all_units, *others],
            outcomes,
            bids_dir,
            output_dir,
            work,
            values,
            counts,
            found.no_dwi,
            ran={u.name for u in all_units},
            about=(tuple(sys.argv if command is None else command), worker),
        )
    series = tuple(
        _outcome(
            u,
            failed_step=u.failed_step,
            steps=outcomes[u.name],
            derivatives=derivatives.get(u.name, ()),
        )
        for u in all_units
    )
    return AppRun(
        bids_dir,
        output_dir,
        work,
        series,
        counts,
        found.no_dwi,
        pages[0],
        tuple(pages),
        time.time() - start,
    )


def _compute(
    pending: list[Unit],
    work_dir: Path,
    parameters: dict[str, Any],
    worker: str,
    force: set[str],
    on_progress: Callable[[Progress], None] | None,
    scheduler: dict[str, Any],
) -> dict[str, str]:
    """Run the pending series; return the Slurm job of each series a detached run left."""
    from kwneuro_pydra.pydra import SchedulerError, run_subjects

    steps = tuple(s.__name__ for s in pipeline().STEPS)
    reused = {
        step: sum(u.plan is not None and u.plan.states[step] == "cached" for u in pending)
        for step in steps
    }
    progress = Progress(tuple(u.name for u in pending), steps, work_dir, time.time(), reused)
    subjects = {u.name: {"dwi": u.dwi, **parameters} for u in pending}
    if worker == "cf":  # a series' steps in one process: its DWI is decompressed once
        scheduler = {"granularity": "subject", **scheduler}
    if on_progress is not None:
        on_progress(progress)
    try:
        results = run_subjects(
            pipeline().bids_dti,
            subjects,
            work_dir,
            worker=worker,
            force=force,
            progress=False,
            **scheduler,
        )
    finally:
        if on_progress is not None:
            on_progress(attrs.evolve(progress, done=True))
    detached = {}
    for unit in pending:
        result = results[unit.name]
        if result.failure is not None:
            unit.failure = result.failure.reason
            unit.failed_step = result.failure.step
            error = result.failure.exception
            if isinstance(error, SchedulerError) and error.state == "DETACHED" and error.job_id:
                detached[unit.name] = error.job_id
        elif result.not_stored:  # computed, returned as files, uncached (run_subjects warned)
            unit.returned = result.outputs
    return detached


def _made_since(cache_dir: Path, step: str, since: float) -> int:
    """Entries of ``step`` in ``cache_dir`` created at or after ``since``."""
    if not (cache_dir / step).is_dir():
        return 0
    return sum(
        datetime.fromisoformat(e.created).timestamp() >= since
        for e in Cache(cache_dir).entries(step)
    )


def _step_outcomes(unit: Unit, steps: Sequence[str], start: float) -> tuple[StepOutcome, ...]:
    """What each step did for ``unit``: computed in this run, reused, failed or not run.

    The step that failed is failed, whatever an older entry of it holds (a forced step that
    now raises); an older entry of a step after it served nothing: not run. A step of a
    series that succeeded without an entry was computed, not stored (time unknown).
    """
    if unit.dwi is None:
        return ()
    rows, failed = [], False
    for step in steps:
        failed = failed or step == unit.failed_step
        entry = unit.plan.entries.get(step) if unit.plan is not None else None
        made = entry is not None and datetime.fromisoformat(entry.created).timestamp() >= start
        if step == unit.failed_step:
            rows.append(StepOutcome(step, "failed"))
        elif entry is not None and (made or not failed):
            rows.append(StepOutcome(step, "computed" if made else "reused", entry.duration))
        elif unit.returned is not None and unit.failure is None:
            rows.append(StepOutcome(step, "computed"))
        else:
            rows.append(StepOutcome(step, "not run"))
    return tuple(rows)


def _counts(
    all_units: Sequence[Unit], outcomes: Mapping[str, Sequence[StepOutcome]], steps: Sequence[str]
) -> tuple[StepCount, ...]:
    """Per step (and `LOAD` first when a series could not load): the run's counts."""
    unloadable = sum(u.dwi is None for u in all_units)
    rows = [StepCount(LOAD, 0, 0, unloadable, 0.0)] if unloadable else []
    for step in steps if any(u.dwi is not None for u in all_units) else ():
        done = [o for u in all_units for o in outcomes[u.name] if o.step == step]
        computed = [o for o in done if o.state == "computed"]
        rows.append(
            StepCount(
                step,
                len(computed),
                sum(o.state == "reused" for o in done),
                sum(o.state == "failed" for o in done),
                sum(o.seconds or 0.0 for o in computed),
            )
        )
    return tuple(rows)


def _outcome(unit: Unit, **fields: Any) -> SeriesOutcome:
    """The `SeriesOutcome` of ``unit``: its series and failure, and ``fields``."""
    series = unit.series
    return SeriesOutcome(
        unit.name, series.subject, series.session, series.source, unit.failure, **fields
    )


def _recorded_units(
    bids_dir: Path,
    record: Mapping[str, Mapping[str, Any]],
    ran: set[str],
    work_dir: Path,
    parameters: Mapping[str, Any],
) -> list[Unit]:
    """The series earlier runs into ``work_dir`` ran and this one did not, as they stand:
    failed as recorded, else served by the cache with the parameters they ran with (for the
    group report).
    """
    wanted = set(record) - ran
    if not wanted:
        return []
    try:
        found = [s for s in discover(bids_dir) if s.name in wanted]
    except BidsError:
        return []
    others = []
    for series in found:
        reason = record[series.name].get("reason")
        if reason is not None:
            others.append(
                Unit(series, failure=str(reason), failed_step=record[series.name].get("step"))
            )
            continue
        unit = Unit(series)
        given = record[series.name].get("parameters")
        try:
            unit.dwi = series.load()
            its = check_parameters(given) if isinstance(given, dict) else parameters
        except ValueError as error:
            unit.failure = str(error)
        else:
            if not look_up(unit, work_dir, its).complete:
                unit.failure = "its results are no longer in the cache: run it again"
        others.append(unit)
    return others


def _write_outputs(
    all_units: list[Unit],
    outcomes: Mapping[str, Sequence[StepOutcome]],
    bids_dir: Path,
    output_dir: Path,
    work_dir: Path,
    parameters: dict[str, Any],
    counts: Sequence[StepCount],
    no_dwi: Sequence[str],
    *,
    ran: Collection[str],
    about: tuple[Sequence[str], str],
) -> tuple[dict[str, tuple[Path, ...]], list[Path]]:
    """Write each series' derivatives, the dataset description and the reports.

    ``ran`` names the series of this run (their subjects' pages are written; see
    `kwneuro_pydra.report.write_reports`); ``about`` is the command line and the worker, for
    the report's About section.

    Returns:
        Series name -> its derivatives, and the report pages (the group's first).
    """
    from kwneuro_pydra.report import SeriesReport, StepRecord, group_distributions, write_reports

    bids_app = pipeline()
    source = _source_name(bids_dir)
    write_dataset_description(output_dir, bids_dir, version=__version__, source_name=source)
    reports, derivatives = [], {}
    for unit in all_units:
        series = unit.series
        steps = [StepRecord(o.step, o.state, o.seconds) for o in outcomes.get(unit.name, ())]
        written = None
        if unit.failure is None and unit.outputs is not None:
            outputs = dict(zip(bids_app.OUTPUTS, unit.outputs, strict=True))
            written = _write_series(unit, outputs, output_dir, work_dir, parameters)
        if written is None:
            reports.append(
                SeriesReport(
                    unit.name,
                    series.subject,
                    series.source,
                    failure=unit.failure,
                    steps=steps,
                )
            )
            continue
        derivatives[unit.name] = tuple(written)
        figures = {
            label: (outputs[name].path, caption)
            for name, (label, caption) in bids_app.FIGURES.items()
        }
        reports.append(
            SeriesReport(
                unit.name,
                series.subject,
                series.source,
                stats=outputs["stats"],
                figures=figures,
                steps=steps,
                derivatives=[p.relative_to(output_dir).as_posix() for p in written],
            )
        )
    done = {r.name: r.stats for r in reports if r.stats is not None}
    distributions = None
    if done:
        with Cache(work_dir / "group"):
            distributions = group_distributions(
                tuple(done),
                np.array([s.fa_hist for s in done.values()]),
                np.array([s.md_hist for s in done.values()]),
            ).path
    pages = write_reports(
        output_dir,
        reports,
        title=f"kwneuro-pydra DTI report: {source}",
        summary=f"{describe({u.series.subject for u in all_units}, len(all_units), no_dwi)} "
        f"from {bids_dir} · kwneuro-pydra {__version__}",
        ran=ran,
        distributions=distributions,
        steps_table=[(c.step, c.computed, c.reused, c.failed, c.seconds) for c in counts],
        command=about[0],
        worker=about[1],
        parameters=parameters,
        steps=bids_app.STEPS,
    )
    return derivatives, pages


def _write_series(
    unit: Unit,
    outputs: Mapping[str, Any],
    output_dir: Path,
    work_dir: Path,
    parameters: Mapping[str, Any],
) -> list[Path] | None:
    """Write a series' derivatives; None, its failure set, when they cannot be written.

    Its folders in ``output_dir`` (``sub-<label>/[ses-<label>/]dwi``, ``sub-<label>/figures``)
    may not be symbolic links: one planted there by someone who can write ``output_dir``
    is refused, never followed, and named in the series' failure.
    """
    series = unit.series
    maps = {"mask": outputs["mask"], **outputs["dti"].maps()}
    figures = {name: outputs[name] for name in pipeline().FIGURES}
    in_memory = [n for n, v in {**maps, **figures}.items() if getattr(v, "path", None) is None]
    if in_memory:  # computed, but neither stored in its cache nor kept in the job cache
        unit.failure = (
            "its results could be neither stored in its cache nor kept as files in Pydra's "
            f"job cache ({', '.join(in_memory)} held in memory only; see the warnings on "
            "what could not be stored): free space or fix permissions and run it again"
        )
        return None
    try:
        no_link_under(output_dir, f"sub-{series.subject}/figures")  # the report's
        with Cache(work_dir / unit.name):  # the linked entries' digests stay memoised there
            fit = outputs["dti"].fit
            return write_derivatives(
                series,
                maps,
                output_dir,
                parameters=unit.parameters or parameters,
                fit=None if fit is None else dataclasses.asdict(fit),
            )
    except OSError as error:
        where = f"{error.strerror}: {error.filename}" if error.filename else error
        unit.failure = f"its derivatives cannot be written ({where})"
        return None


def _source_name(bids_dir: Path) -> str:
    try:
        name = json.loads(read_regular(bids_dir / "dataset_description.json"))["Name"]
    except (OSError, ValueError, KeyError, TypeError):
        return bids_dir.name
    return str(name)

"""``kwneuro-pydra run BIDS_DIR OUTPUT_DIR participant``: the BIDS app.

Discover the DWI series, serve what the cache holds, compute the rest with Pydra, then write
BIDS-Derivatives (hard links to the cache entries), the reports and a summary per step.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from kwneuro_pydra._files import read_regular
from kwneuro_pydra.bids import write_dataset_description, write_derivatives
from kwneuro_pydra.cache import Cache
from kwneuro_pydra.cli._common import (
    UsageError,
    console,
    plural,
    positive_float,
    positive_int,
)
from kwneuro_pydra.cli._options import add_dti_options, parameters_of, write_options
from kwneuro_pydra.cli._series import (
    Unit,
    app,
    describe,
    look_up,
    units,
    write_record,
)

__all__ = [
    "WORKERS",
    "add_parser",
    "add_scheduler_options",
    "add_selection",
    "run",
    "scheduler_options",
]

WORKERS = ("debug", "cf", "slurm", "sge")
"""Pydra workers ``--worker`` accepts."""

LOAD = "(load DWI)"
"""The summary's row for series that could not be loaded."""


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``run`` to the command line."""
    parser = commands.add_parser(
        "run", parents=parents, help="run the DTI BIDS app on a dataset",
        description="Fit DTI to every DWI series of a BIDS dataset; write BIDS-Derivatives "
        "(maps, masks, JSON sidecars), sub-<label>.html reports and report.html. Reruns reuse "
        "every cached step.",
    )  # fmt: skip
    parser.add_argument("bids_dir", type=Path, help="the BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="where the derivatives and reports go")
    parser.add_argument("analysis_level", choices=["participant"], help="participant")
    add_selection(parser)
    add_dti_options(parser)
    execution = parser.add_argument_group("execution")
    execution.add_argument(
        "-w", "--work-dir", type=Path, metavar="DIR",
        help="the cache (default: OUTPUT_DIR/.kwneuro-cache)",
    )  # fmt: skip
    execution.add_argument(
        "--worker", choices=WORKERS, default="cf", help="Pydra worker (default: cf)"
    )
    execution.add_argument(
        "--n-procs", type=positive_int, metavar="N", help="processes of the cf worker"
    )
    add_scheduler_options(parser)
    execution.add_argument(
        "--force", type=_steps, default=[], metavar="STEP[,STEP]",
        help="recompute these steps (and what depends on them)",
    )  # fmt: skip
    parser.set_defaults(run=run)


def add_scheduler_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``--worker slurm`` (see `kwneuro_pydra.pydra.run_subjects`)."""
    cluster = parser.add_argument_group("cluster (--worker slurm)")
    cluster.add_argument(
        "--sbatch-args", metavar="ARGS",
        help="sbatch options for every job, e.g. --sbatch-args='--partition=short -A lab' "
        "(-o and -e are refused: each series' log goes to WORK_DIR/.logs)",
    )  # fmt: skip
    cluster.add_argument(
        "--resources", type=Path, metavar="FILE",
        help="per-step requests: a .toml with a table per step (mem, cpus, time, options) "
        "or the same as .json",
    )  # fmt: skip
    cluster.add_argument(
        "--granularity", choices=("node", "subject"), default="node",
        help="one job per step call (node, the default) or one per series (subject), the "
        "series submitted together as Slurm job arrays",
    )  # fmt: skip
    cluster.add_argument(
        "--pending-timeout", type=positive_float, metavar="SECONDS",
        help="cancel and report jobs pending longer than this, with Slurm's reason",
    )  # fmt: skip
    cluster.add_argument(
        "--poll-delay", type=positive_float, metavar="SECONDS",
        help="seconds between looks at the queue",
    )  # fmt: skip


def scheduler_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `run_subjects` keyword arguments that the command line's options ask for.

    Raises:
        UsageError: A scheduler option was given without ``--worker slurm``, or the
            resources file cannot be read.
    """
    from kwneuro_pydra.pydra import load_resources

    given = {
        "sbatch_args": args.sbatch_args,
        "resources": args.resources,
        "pending_timeout": args.pending_timeout,
        "poll_delay": args.poll_delay,
    }
    given = {name: value for name, value in given.items() if value is not None}
    if args.granularity != "node":
        given["granularity"] = args.granularity
    if given and args.worker != "slurm":
        names = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"{names}: only with --worker slurm (got --worker {args.worker})")
    if "resources" in given:
        try:
            given["resources"] = load_resources(given["resources"])
        except (OSError, ValueError) as error:
            raise UsageError(f"--resources: {error}") from None
    if args.n_procs:
        given["n_procs"] = args.n_procs
    return given


def add_selection(parser: argparse.ArgumentParser) -> None:
    """The BIDS-Apps options choosing participants and sessions (shared with ``status``)."""
    selection = parser.add_argument_group("selection")
    selection.add_argument(
        "--participant-label", "--participant_label", nargs="+", default=[], metavar="LABEL",
        help="only these subjects (with or without sub-)",
    )  # fmt: skip
    selection.add_argument(
        "--session-label", "--session_label", nargs="+", default=[], metavar="LABEL",
        help="only these sessions (with or without ses-)",
    )  # fmt: skip


def _steps(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _folder(path: Path, what: str) -> Path:
    """``path`` made and writable, or a `UsageError` naming it."""
    path = path.absolute()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".kwneuro-write-test-{time.time_ns()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UsageError(f"{what} {path} cannot be written: {error.strerror}") from None
    return path


def run(args: argparse.Namespace) -> int:
    """Run the BIDS app; return 0 when every series succeeded, else 1."""
    bids_app = app()
    known = [s.__name__ for s in bids_app.STEPS]
    unknown = [s for s in args.force if s not in known]
    if unknown:
        raise UsageError(f"--force: unknown step {', '.join(unknown)} (steps: {', '.join(known)})")
    options = scheduler_options(args)
    all_units = units(args.bids_dir, args.participant_label, args.session_label)
    output_dir = _folder(args.output_dir, "OUTPUT_DIR")
    work_dir = _folder(args.work_dir or output_dir / ".kwneuro-cache", "the work folder")
    parameters = parameters_of(args)
    write_options(output_dir, parameters, version=_version())  # for status
    start = time.time()
    pending = [
        u for u in all_units
        if u.dwi is not None and (not look_up(u, work_dir, parameters).complete or args.force)
    ]  # fmt: skip
    if pending:
        _compute(pending, work_dir, parameters, args, options)
    for unit in pending:  # what each step did, read back from the cache
        complete = look_up(unit, work_dir, parameters).complete
        if unit.failure is None and not complete:
            unit.failure = "its results are not in the cache (a step could not be cached)"
    write_record(work_dir, all_units)
    steps = _step_records(all_units, known, start)
    reports = _write_outputs(all_units, steps, args.bids_dir, output_dir, work_dir, parameters)
    _summary(all_units, steps, reports, time.time() - start, args.verbosity)
    return 0 if all(u.failure is None for u in all_units) else 1


def _compute(
    pending: list[Unit],
    work_dir: Path,
    parameters: dict[str, Any],
    args: argparse.Namespace,
    options: dict[str, Any],
) -> None:
    from kwneuro_pydra.pydra import run_subjects

    subjects = {u.name: {"dwi": u.dwi, **parameters} for u in pending}
    with _live(pending, work_dir, args.verbosity):
        results = run_subjects(
            app().bids_dti, subjects, work_dir, worker=args.worker, force=set(args.force),
            progress=False, **options,
        )  # fmt: skip
    for unit in pending:
        failure = results[unit.name].failure
        if failure is not None:
            unit.failure = failure.reason
            unit.failed_step = failure.step


@contextlib.contextmanager
def _live(pending: list[Unit], work_dir: Path, verbosity: int) -> Iterator[None]:
    """Show subjects x steps (reused, computed, to do) while Pydra runs, on a terminal."""
    out = console()
    if verbosity < 0 or not out.is_terminal:
        yield
        return
    from rich.live import Live
    from rich.table import Table

    started = time.time()
    names = [s.__name__ for s in app().STEPS]

    def view() -> Table:
        table = Table(title=f"Computing {plural(len(pending), 'DWI series', 'DWI series')} "
                      f"· {time.time() - started:.0f} s", title_justify="left")  # fmt: skip
        for column in ("step", "reused", "computed", "to do"):
            table.add_column(column, justify="left" if column == "step" else "right")
        for name in names:
            reused = sum(u.plan is not None and u.plan.states[name] == "cached" for u in pending)
            computed = sum(_made_since(work_dir / u.name, name, started) for u in pending)
            table.add_row(name, str(reused), str(computed),
                          str(max(0, len(pending) - reused - computed)))  # fmt: skip
        return table

    with Live(get_renderable=view, console=out, refresh_per_second=2, transient=True):
        yield


def _made_since(cache_dir: Path, step: str, since: float) -> int:
    """Entries of ``step`` in ``cache_dir`` created at or after ``since``."""
    if not (cache_dir / step).is_dir():
        return 0
    return sum(
        datetime.fromisoformat(e.created).timestamp() >= since
        for e in Cache(cache_dir).entries(step)
    )


def _step_records(all_units: list[Unit], steps: list[str], start: float) -> dict[str, list[Any]]:
    """Per unit: a `StepRecord` per step (computed in this run, reused, failed, not run)."""
    from kwneuro_pydra.report._html import StepRecord

    records: dict[str, list[Any]] = {}
    for unit in all_units:
        rows = []
        for step in steps if unit.dwi is not None else []:
            entry = unit.plan.entries.get(step) if unit.plan is not None else None
            if entry is not None:
                made = datetime.fromisoformat(entry.created).timestamp() >= start
                rows.append(StepRecord(step, "computed" if made else "reused", entry.duration))
            else:
                rows.append(StepRecord(step, "failed" if step == unit.failed_step else "not run"))
        records[unit.name] = rows
    return records


def _write_outputs(
    all_units: list[Unit],
    steps: dict[str, list[Any]],
    bids_dir: Path,
    output_dir: Path,
    work_dir: Path,
    parameters: dict[str, Any],
) -> list[Path]:
    from kwneuro_pydra.report import group_distributions
    from kwneuro_pydra.report._html import SeriesReport, write_reports

    bids_app = app()
    source = _source_name(bids_dir)
    write_dataset_description(output_dir, bids_dir, version=_version(), source_name=source)
    reports = []
    for unit in all_units:
        series = unit.series
        if unit.failure is not None or unit.plan is None:
            reports.append(SeriesReport(
                unit.name, series.subject, series.source, failure=unit.failure,
                steps=steps[unit.name],
            ))  # fmt: skip
            continue
        outputs = dict(zip(bids_app.OUTPUTS, unit.plan.outputs, strict=True))
        maps = {"mask": outputs["mask"], **outputs["dti"].maps()}
        with Cache(work_dir / unit.name):  # the linked entries' digests stay memoised there
            written = write_derivatives(series, maps, output_dir, parameters=parameters)
        figures = {
            label: (outputs[name].path, caption)
            for name, (label, caption) in bids_app.FIGURES.items()
        }
        reports.append(SeriesReport(
            unit.name, series.subject, series.source, stats=outputs["stats"], figures=figures,
            steps=steps[unit.name],
            derivatives=[p.relative_to(output_dir).as_posix() for p in written],
        ))  # fmt: skip
    done = {r.name: r.stats for r in reports if r.stats is not None}
    distributions = None
    if done:
        with Cache(work_dir / "group"):
            distributions = group_distributions(
                tuple(done), np.array([s.fa_hist for s in done.values()]),
                np.array([s.md_hist for s in done.values()]),
            ).path  # fmt: skip
    return write_reports(
        output_dir, reports, title=f"kwneuro-pydra DTI report: {source}",
        summary=f"{describe(all_units)} from {bids_dir.absolute()} · kwneuro-pydra "
        f"{_version()}",
        distributions=distributions, steps_table=_table(all_units, steps),
    )  # fmt: skip


@functools.cache
def _version() -> str:
    return version("kwneuro-pydra")


def _source_name(bids_dir: Path) -> str:
    try:
        name = json.loads(read_regular(bids_dir / "dataset_description.json"))["Name"]
    except (OSError, ValueError, KeyError, TypeError):
        return bids_dir.absolute().name
    return str(name)


def _table(
    all_units: Sequence[Unit], steps: dict[str, list[Any]]
) -> list[tuple[str, int, int, int, float]]:
    """Per step: (step, computed, reused, failed, seconds computing in this run)."""
    rows: dict[str, list[Any]] = {}
    unloadable = sum(u.dwi is None for u in all_units)
    if unloadable:
        rows[LOAD] = [LOAD, 0, 0, unloadable, 0.0]
    for records in steps.values():
        for record in records:
            row = rows.setdefault(record.step, [record.step, 0, 0, 0, 0.0])
            if record.state == "computed":
                row[1] += 1
                row[4] += record.seconds or 0.0
            row[2] += record.state == "reused"
            row[3] += record.state == "failed"
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows.values()]


def _summary(
    all_units: list[Unit], steps: dict[str, list[Any]], pages: list[Path], elapsed: float,
    verbosity: int,
) -> None:  # fmt: skip
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out = Console(highlight=False)
    failed = [u for u in all_units if u.failure is not None]
    if verbosity >= 0:
        table = Table(title=f"{describe(all_units)} in {elapsed:.1f} s", title_justify="left")
        for column in ("step", "computed", "reused", "failed", "compute time"):
            table.add_column(column, justify="left" if column == "step" else "right")
        for step, computed, reused, fails, seconds in _table(all_units, steps):
            table.add_row(step, str(computed), str(reused),
                          f"[red]{fails}[/red]" if fails else "0", f"{seconds:.2f} s")  # fmt: skip
        out.print(table)
    for unit in failed:
        console().print(f"[red]FAILED[/red] {escape(f'{unit.name}: {unit.failure}')}",
                        soft_wrap=True)  # fmt: skip
    output_dir = pages[0].parent
    ok = len(all_units) - len(failed)
    out.print(f"{plural(ok, 'series', 'series')} succeeded, {len(failed)} failed. "
              f"Derivatives: {output_dir}", soft_wrap=True)  # fmt: skip
    out.print(f"Report: {pages[0]}", soft_wrap=True)

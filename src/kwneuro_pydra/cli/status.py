"""``kwneuro-pydra status [BIDS_DIR] OUTPUT_DIR``: each series' steps as the cache holds them,
or (without BIDS_DIR) each series' Slurm job of the runs into OUTPUT_DIR.

A table of series x steps when the terminal is wide enough, else one line per series naming
the steps that are not cached; ``--json`` for programs. Calls `kwneuro_pydra.app.app_status`,
or `kwneuro_pydra.app.job_status` for the jobs (a detached run's progress).
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kwneuro_pydra.app import (
    STATES,
    AppStatus,
    JobStatus,
    app_status,
    job_status,
    parameters,
)
from kwneuro_pydra.cli._common import UsageError, add_work_dir, plural
from kwneuro_pydra.cli._options import add_dti_options, parameters_of
from kwneuro_pydra.cli.run import add_selection

__all__ = ["add_parser", "run"]

_STYLE = {"cached": "green", "stale": "yellow", "missing": "dim", "failed": "red"}


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``status`` to the command line."""
    parser = commands.add_parser(
        "status",
        parents=parents,
        help="show which steps are cached, stale, missing or failed, or a run's Slurm jobs",
        description="For every DWI series of a BIDS dataset, show each step of the BIDS app as "
        "cached, stale (its code changed since), missing, or failed (in the last run), for "
        "the DTI options and work folder the last run into OUTPUT_DIR recorded (options "
        "given here override them). Without BIDS_DIR, show each series' Slurm job of the runs "
        "into OUTPUT_DIR (a detached run's progress): queued, running, completed, failed, "
        "cancelled or unknown. Computes and writes nothing.",
    )
    parser.add_argument(
        "bids_dir",
        type=Path,
        nargs="?",
        help="the BIDS dataset (left out: show the Slurm jobs of the runs into OUTPUT_DIR)",
    )
    parser.add_argument("output_dir", type=Path, help="the run's output folder")
    add_work_dir(parser, recorded=True)
    parser.add_argument(
        "--json", action="store_true", help="print the status as JSON (for programs)"
    )
    add_selection(parser)
    add_dti_options(parser, recorded=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the status; return 0."""
    from rich.console import Console
    from rich.markup import escape

    if args.bids_dir is None:
        return _jobs(args)
    found = app_status(
        args.bids_dir,
        args.output_dir,
        participants=args.participant_label,
        sessions=args.session_label,
        work_dir=args.work_dir,
        parameters={k: v for k, v in parameters_of(args).items() if v is not None},
    )
    if args.json:
        print(json.dumps(_as_json(found), indent=2))
        return 0
    out = Console(highlight=False)
    names = [len(s.name) for s in found.series]
    wide = max(names, default=6) + sum(max(len(s), 7) + 3 for s in found.steps) + 4
    out.print(f"{found.summary}; cache {found.work_dir}", soft_wrap=True)
    if out.width >= wide:
        out.print(_table(found))
    else:
        for series in found.series:
            out.print(_line(series.name, series.states, series.failure), soft_wrap=True)
    for series in found.series:
        if series.states and series.failure:
            out.print(
                f"[red]the last run of {escape(series.name)} failed:[/red] "
                f"{escape(series.failure)}",
                soft_wrap=True,
            )
    out.print(", ".join(f"{plural(n, 'step')} {state}" for state, n in found.counts.items()))
    if found.jobs:
        listed = ", ".join(f"{name} (job {job})" for name, job in found.jobs.items())
        out.print(
            f"Slurm jobs were submitted for {plural(len(found.jobs), 'series', 'series')} not "
            f"complete in the cache: {escape(listed)}; 'kwneuro-pydra status "
            f"{escape(str(args.output_dir))}' asks Slurm how they stand",
            soft_wrap=True,
        )
    out.print(found.options, soft_wrap=True)
    return 0


def _table(found: AppStatus) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    table.add_column("series")
    for step in found.steps:
        table.add_column(step)
    for series in found.series:
        if not series.states:
            table.add_row(series.name, f"[red]cannot load: {escape(series.failure or '')}[/red]")
            continue
        table.add_row(series.name, *(f"[{_STYLE[s]}]{s}[/]" for s in series.states.values()))
    return table


def _line(name: str, states: Mapping[str, str], failure: str | None) -> str:
    """``sub-01: 3 cached; stale: estimate_dti; 5 missing from dti_statistics``: one series on
    one line (the steps not cached are named; the missing ones follow the first).
    """
    from rich.markup import escape

    if not states:
        return f"{escape(name)}: [red]cannot load: {escape(failure or '')}[/red]"
    parts = []
    for state in STATES:
        steps = [step for step, s in states.items() if s == state]
        if not steps:
            continue
        if state in ("cached", "missing"):
            since = f" from {steps[0]}" if state == "missing" else ""
            parts.append(f"[{_STYLE[state]}]{len(steps)} {state}{since}[/]")
        else:
            parts.append(f"[{_STYLE[state]}]{state}: {', '.join(steps)}[/]")
    return f"{escape(name)}: {'; '.join(parts)}"


def _as_json(found: AppStatus) -> dict[str, Any]:
    return {
        "work_dir": str(found.work_dir),
        "parameters": dict(found.parameters),
        "steps": list(found.steps),
        "series": [
            {
                "name": s.name,
                "subject": s.subject,
                "source": s.source,
                "states": dict(s.states),
                "failure": s.failure,
            }
            for s in found.series
        ],
        "no_dwi": ["sub-" + s for s in found.no_dwi],
        "counts": found.counts,
        "jobs": dict(found.jobs),
    }


def _jobs(args: argparse.Namespace) -> int:
    """Print each series' Slurm job of the runs into OUTPUT_DIR; return 0."""
    from rich.console import Console
    from rich.markup import escape

    given = [
        flag
        for flag, value in (
            ("--participant-label", args.participant_label),
            ("--session-label", args.session_label),
            *((option.flag, getattr(args, option.name)) for option in parameters()),
        )
        if value
    ]
    if given:
        raise UsageError(
            f"{', '.join(given)}: only with BIDS_DIR (status OUTPUT_DIR shows the Slurm jobs "
            "of the runs into OUTPUT_DIR)"
        )
    found = job_status(args.output_dir, work_dir=args.work_dir)
    if args.json:
        print(json.dumps(_jobs_json(found), indent=2))
        return 0
    out = Console(highlight=False)
    out.print(f"Slurm jobs recorded in {found.record}", soft_wrap=True)
    width = max((len(j.name) for j in found.jobs), default=0)
    for job in found.jobs:
        state = f"[{_JOB_STYLE[job.state]}]{job.state}[/] ({job.slurm_state})"
        out.print(f"  {escape(job.name):{width}}  job {job.job_id:10}  {state}", soft_wrap=True)
    counts = found.counts
    out.print(", ".join(f"{n} {state}" for state, n in counts.items() if n) or "no job")
    where = shlex.quote(str(Path(args.output_dir)))
    if found.live:
        out.print(f"Cancel those queued or running: kwneuro-pydra cancel {where}", soft_wrap=True)
    if counts["completed"]:
        out.print(
            "Collect the results (derivatives and reports): run 'kwneuro-pydra run' into "
            f"{where} again, without --detach",
            soft_wrap=True,
        )
    return 0


_JOB_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "red",
    "unknown": "dim",
}


def _jobs_json(found: JobStatus) -> dict[str, Any]:
    return {
        "work_dir": str(found.work_dir),
        "record": str(found.record),
        "jobs": [
            {
                "name": j.name,
                "job_id": j.job_id,
                "step": j.step,
                "slurm_state": j.slurm_state,
                "state": j.state,
            }
            for j in found.jobs
        ],
        "counts": found.counts,
    }

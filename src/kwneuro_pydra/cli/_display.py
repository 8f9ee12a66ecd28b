"""What ``run`` and ``demo`` print: the live table while computing, the run's summary (or
the jobs a detached run left).
"""

from __future__ import annotations

import shlex
from typing import Any

from kwneuro_pydra.app import AppRun, Progress, plural
from kwneuro_pydra.cli._common import console

__all__ = ["LiveProgress", "print_detached", "print_summary"]


class LiveProgress:
    """An ``on_progress`` for `kwneuro_pydra.app.run_bids_app`: subjects x steps (reused,
    computed, to do) on the terminal while Pydra runs, stopped when computing ends (also on
    Ctrl-C). Shows nothing when quiet or when stderr is not a terminal.
    """

    def __init__(self, verbosity: int) -> None:
        self.shown = verbosity >= 0 and console().is_terminal
        self.live: Any = None

    def __call__(self, progress: Progress) -> None:
        """Start the display when computing starts; stop it when it ends."""
        if not self.shown:
            return
        from rich.live import Live

        if progress.done:
            if self.live is not None:
                self.live.stop()
                self.live = None
            return
        self.live = Live(
            get_renderable=lambda: _view(progress),
            console=console(),
            refresh_per_second=2,
            transient=True,
        )
        self.live.start()


def _view(progress: Progress) -> Any:
    import time

    from rich.table import Table

    series = plural(len(progress.series), "DWI series", "DWI series")
    table = Table(
        title=f"Computing {series} · {time.time() - progress.started:.0f} s", title_justify="left"
    )
    for column in ("step", "reused", "computed", "to do"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for step, reused, computed, todo in progress.counts():
        table.add_row(step, str(reused), str(computed), str(todo))
    return table


def print_summary(result: AppRun, verbosity: int) -> None:
    """Print the run's steps table (stdout), each failure (stderr) and where the results are.

    Args:
        result: The run.
        verbosity: -1 quiet (no table).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out = Console(highlight=False)
    if verbosity >= 0:
        table = Table(title=f"{result.summary} in {result.seconds:.1f} s", title_justify="left")
        for column in ("step", "computed", "reused", "failed", "compute time"):
            table.add_column(column, justify="left" if column == "step" else "right")
        for row in result.steps:
            table.add_row(
                row.step,
                str(row.computed),
                str(row.reused),
                f"[red]{row.failed}[/red]" if row.failed else "0",
                f"{row.seconds:.2f} s",
            )
        out.print(table)
    for series in result.failed:
        console().print(
            f"[red]FAILED[/red] {escape(f'{series.name}: {series.failure}')}", soft_wrap=True
        )
    ok = len(result.series) - len(result.failed)
    if result.no_dwi:
        out.print(f"No DWI: {', '.join('sub-' + s for s in result.no_dwi)}", soft_wrap=True)
    out.print(
        f"{plural(ok, 'series', 'series')} succeeded, {len(result.failed)} failed. "
        f"Derivatives: {result.output_dir}",
        soft_wrap=True,
    )
    out.print(f"Report: {result.report}", soft_wrap=True)


def print_detached(result: AppRun) -> None:
    """Print the jobs a detached run left (stdout), the other failures (stderr), and how to
    follow, cancel and collect them.

    Args:
        result: The run (`AppRun.detached` not empty).
    """
    from rich.console import Console
    from rich.markup import escape

    out = Console(highlight=False)
    out.print(
        f"Submitted {plural(len(result.detached), 'series', 'series')} as Slurm jobs and "
        "detached; they run without this command:",
        soft_wrap=True,
    )
    for series in result.detached:
        out.print(f"  {escape(series.name)}: job {series.job}", soft_wrap=True)
    for series in result.failed:
        if series.job is None:
            console().print(
                f"[red]FAILED[/red] {escape(f'{series.name}: {series.failure}')}", soft_wrap=True
            )
    where = shlex.quote(str(result.output_dir))
    out.print(f"Follow them:  kwneuro-pydra status {where}", soft_wrap=True)
    out.print(f"Cancel them:  kwneuro-pydra cancel {where}", soft_wrap=True)
    out.print(
        "Collect the results (derivatives and reports): run the same command again without "
        "--detach (it waits for the jobs still queued or running)",
        soft_wrap=True,
    )

"""The report's HTML pages: one per subject and one for the group (static, no script)."""

from __future__ import annotations

import html
import math
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import attrs

from kwneuro_pydra._files import write_atomic
from kwneuro_pydra.bids import place
from kwneuro_pydra.report._figures import SeriesStats

__all__ = ["SeriesReport", "StepRecord", "write_reports"]


@attrs.frozen
class StepRecord:
    """What one step did for one series in this run.

    Attributes:
        step: Step name.
        state: ``computed``, ``reused``, ``failed`` or ``not run``.
        seconds: Time the step took when it was computed (this run or the one that made the
            reused entry), or None.
    """

    step: str
    state: str
    seconds: float | None = None


@attrs.frozen
class SeriesReport:
    """Everything the report shows about one DWI series.

    Attributes:
        name: The series' source entities, e.g. ``sub-01_ses-2``.
        subject: Subject label (without ``sub-``).
        source: The DWI's path in the dataset.
        failure: One-line reason it failed, or None.
        stats: Its numbers, or None.
        figures: Figure label -> (PNG file, caption), in display order.
        steps: What each step did.
        derivatives: The derivative files written, relative to the output folder.
    """

    name: str
    subject: str
    source: str
    failure: str | None = None
    stats: SeriesStats | None = None
    figures: Mapping[str, tuple[Path, str]] = attrs.field(factory=dict)
    steps: Sequence[StepRecord] = ()
    derivatives: Sequence[str] = ()

    @property
    def ok(self) -> bool:
        """True when the series succeeded."""
        return self.failure is None


_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2430;
background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:14px 28px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#b8c0cc;font-size:13px}main{padding:18px 28px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:14px 18px;
margin:0 0 18px}h2{font-size:17px;margin:0 0 10px}h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px}td,th{padding:4px 10px;text-align:left;
border-bottom:1px solid #eceff3;vertical-align:top}th{color:#5a6472;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#176f2c;font-weight:600}.failed{color:#b3261e;font-weight:600}
.warn{background:#fff6e0;border-left:4px solid #e0a100;padding:6px 10px;margin:6px 0}
.error{background:#fdecea;border-left:4px solid #b3261e;padding:6px 10px;margin:6px 0;
font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap}
figure{margin:8px 0 14px}figure img{max-width:min(100%,640px);border:1px solid #dde1e7;
background:#000}figcaption{color:#5a6472;font-size:12px;margin-top:2px}
.grid{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
img.thumb{width:200px;border:1px solid #dde1e7;background:#000}a{color:#1a5fb4}
.thumbs{display:flex;gap:8px;flex-wrap:nowrap}td.name{white-space:nowrap}
.muted{color:#7a8391}
"""


def _page(title: str, subtitle: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{html.escape(title)}</title><link rel="icon" href="data:,">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_STYLE}</style></head><body><header><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(subtitle)}</p></header><main>{body}</main></body></html>\n"
    )


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _status(report: SeriesReport) -> str:
    return '<span class="ok">ok</span>' if report.ok else '<span class="failed">failed</span>'


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f} s"


def _series_section(report: SeriesReport, figures: Mapping[str, str]) -> str:
    parts = [f'<section id="{html.escape(report.name)}"><h2>{html.escape(report.name)} '
             f"{_status(report)}</h2>",
             f'<p class="muted">Source: {html.escape(report.source)}</p>']  # fmt: skip
    if report.failure:
        parts.append(f'<div class="error">{html.escape(report.failure)}</div>')
    if report.stats is not None:
        stats = report.stats
        shells = ", ".join(f"b={b:g} ({n})" for b, n in stats.shells)
        parts.append(
            '<table><tr><th>Voxels in mask</th><td class="n">'
            f'{stats.voxels:,}</td></tr><tr><th>Mask volume</th><td class="n">'
            f'{stats.volume_ml:.1f} mL</td></tr><tr><th>Median FA</th><td class="n">'
            f'{_number(stats.median_fa)}</td></tr><tr><th>Median MD</th><td class="n">'
            f"{_number(stats.median_md * 1e3)} &times; 10<sup>-3</sup> mm&sup2;/s</td></tr>"
            f"<tr><th>Volumes</th><td>{html.escape(shells)}</td></tr></table>"
        )
        for warning in stats.warnings:
            parts.append(f'<div class="warn">Warning: {html.escape(warning)}</div>')
    if figures:
        parts.append('<div class="grid">')
        for label, (_, caption) in report.figures.items():
            parts.append(
                f'<figure><img src="{html.escape(figures[label])}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        parts.append("</div>")
    if report.steps:
        rows = "".join(
            f"<tr><td>{html.escape(s.step)}</td><td>{html.escape(s.state)}</td>"
            f'<td class="n">{_seconds(s.seconds)}</td></tr>'
            for s in report.steps
        )
        parts.append(
            "<h3>Steps</h3><table><tr><th>Step</th><th>This run</th><th>Compute time</th></tr>"
            f"{rows}</table>"
        )
    if report.derivatives:
        items = "".join(f"<li>{html.escape(d)}</li>" for d in report.derivatives)
        parts.append(f"<h3>Derivatives</h3><ul>{items}</ul>")
    parts.append("</section>")
    return "".join(parts)


def _place_figures(report: SeriesReport, output_dir: Path) -> dict[str, str]:
    """Link the series' figures under ``sub-<label>/figures/``; their paths for the pages."""
    folder = output_dir / f"sub-{report.subject}" / "figures"
    placed = {}
    for label, (source, _) in report.figures.items():
        target = folder / f"{report.name}_desc-{label}_dwi.png"
        place(source, target)
        placed[label] = target.relative_to(output_dir).as_posix()
    return placed


def write_reports(
    output_dir: Path,
    reports: Sequence[SeriesReport],
    *,
    title: str,
    summary: str,
    distributions: Path | None = None,
    steps_table: Sequence[tuple[str, int, int, int, float]] = (),
) -> list[Path]:
    """Write ``sub-<label>.html`` for every subject and the group's ``report.html``.

    Figures are hard-linked (copied across file systems) under ``sub-<label>/figures/`` and
    referenced by relative links, so the folder can be moved or shared as a whole.

    Args:
        output_dir: The derivatives folder.
        reports: One `SeriesReport` per series (failed ones included).
        title: The pages' heading.
        summary: One line under the heading (dataset, date, options).
        distributions: The group's FA/MD distributions figure, if any series succeeded.
        steps_table: Per step: ``(step, computed, reused, failed, seconds)``.

    Returns:
        The pages written: the group page first, then one per subject.
    """
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"{summary} · {stamp}"
    by_subject: dict[str, list[SeriesReport]] = {}
    for report in reports:
        by_subject.setdefault(report.subject, []).append(report)
    figures = {r.name: _place_figures(r, output_dir) for r in reports}
    pages = [output_dir / "report.html"]
    for subject, series in by_subject.items():
        body = "".join(_series_section(r, figures[r.name]) for r in series)
        body = '<p><a href="report.html">&larr; Group report</a></p>' + body
        page = output_dir / f"sub-{subject}.html"
        _write(page, _page(f"sub-{subject}", subtitle, body))
        pages.append(page)
    _write(pages[0], _page(title, subtitle, _group_body(
        by_subject, figures, output_dir, distributions, steps_table
    )))  # fmt: skip
    return pages


def _group_body(
    by_subject: Mapping[str, Sequence[SeriesReport]],
    figures: Mapping[str, Mapping[str, str]],
    output_dir: Path,
    distributions: Path | None,
    steps_table: Sequence[tuple[str, int, int, int, float]],
) -> str:
    reports = [r for series in by_subject.values() for r in series]
    failed = sum(not r.ok for r in reports)
    parts = [
        "<section><h2>Summary</h2>"
        f"<p>{len(by_subject)} subject{'s' * (len(by_subject) != 1)}, {len(reports)} DWI "
        f'series: <span class="ok">{len(reports) - failed} '
        f"succeeded</span>"
        + (f', <span class="failed">{failed} failed</span>' if failed else "")
        + "</p>"
    ]
    if steps_table:
        step_rows = "".join(
            f'<tr><td>{html.escape(step)}</td><td class="n">{c}</td><td class="n">{r}</td>'
            f'<td class="n">{f}</td><td class="n">{seconds:.2f} s</td></tr>'
            for step, c, r, f, seconds in steps_table
        )
        parts.append(
            "<table><tr><th>Step</th><th>Computed</th><th>Reused</th><th>Failed</th>"
            f"<th>Time computing (this run)</th></tr>{step_rows}</table>"
        )
    parts.append("</section>")
    if distributions is not None:
        target = output_dir / "figures" / "group_desc-distributions_dwi.png"
        place(distributions, target)
        parts.append(
            "<section><h2>FA and MD inside the brain mask</h2><figure>"
            f'<img src="{target.relative_to(output_dir).as_posix()}" '
            'alt="FA and MD distributions, one line per series"><figcaption>One line per '
            "series: the fraction of its mask voxels in each bin.</figcaption></figure></section>"
        )
    rows: list[str] = []
    for subject, series in by_subject.items():
        for report in series:
            thumbs = "".join(
                f'<a href="sub-{html.escape(subject)}.html#{html.escape(report.name)}">'
                f'<img class="thumb" src="{html.escape(path)}" alt="{html.escape(label)} of '
                f'{html.escape(report.name)}"></a>'
                for label, path in figures[report.name].items()
                if label in ("b0mask", "fa")
            )
            stats = report.stats
            numbers = (
                f'<td class="n">{stats.voxels:,}</td><td class="n">{_number(stats.median_fa)}'
                f'</td><td class="n">{_number(stats.median_md * 1e3)}</td>'
                if stats is not None
                else "<td></td><td></td><td></td>"
            )
            detail = (
                f'<div class="error">{html.escape(report.failure)}</div>'
                if report.failure
                else "".join(f'<div class="warn">{html.escape(w)}</div>'
                             for w in (stats.warnings if stats else ()))
            )  # fmt: skip
            rows.append(
                f'<tr><td class="name"><a href="sub-{html.escape(subject)}.html#'
                f'{html.escape(report.name)}">{html.escape(report.name)}</a></td>'
                f"<td>{_status(report)}</td>{numbers}"
                f'<td><div class="thumbs">{thumbs}</div>{detail}</td></tr>'
            )
    parts.append(
        "<section><h2>Series</h2><table><tr><th>Series</th><th>Status</th><th>Voxels in mask"
        "</th><th>Median FA</th><th>Median MD (10<sup>-3</sup> mm&sup2;/s)</th>"
        f"<th>Mean b0 + mask, FA</th></tr>{''.join(rows)}</table></section>"
    )
    return "".join(parts)


def _write(path: Path, text: str) -> None:
    write_atomic(path, text.translate(_BIDI_ESCAPED).encode("utf-8"))


_BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_BIDI_ESCAPED = {code: urllib.parse.quote(chr(code)) for code in _BIDI}
"""Bidirectional controls (which can make a name read backwards) shown percent-encoded:
visible in the text, and the same file name where a link or an image source holds one."""

"""The report's HTML pages: one per subject and one for the group (static, no script)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import html
import inspect
import io
import logging
import math
import re
import urllib.parse
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import attrs

from kwneuro_pydra._files import read_regular, write_atomic
from kwneuro_pydra.bids import place
from kwneuro_pydra.report._figures import SeriesStats

__all__ = [
    "GROUP_FIGURE",
    "QC_TABLE",
    "REFERENCES",
    "SeriesReport",
    "StepRecord",
    "write_reports",
]

QC_TABLE = "group_desc-qc_dwi.tsv"
"""The group's machine-readable numbers, one row per series, in the output folder."""

GROUP_FIGURE = "docs/figures/group_desc-distributions_dwi.png"
"""The group's FA/MD distributions figure, in the output folder: under ``docs/``, a folder
BIDS reserves in a derivative dataset and the validator does not look inside (at the root
its name has an entity without a label, ``group``)."""

_LEGACY_GROUP_FIGURE = "figures/group_desc-distributions_dwi.png"
"""Where versions up to 0.1.0 wrote `GROUP_FIGURE`; removed when the group page is written."""

REFERENCES = {
    "basser": "Basser PJ, Mattiello J, LeBihan D. MR diffusion tensor spectroscopy and "
    "imaging. Biophys J. 1994;66(1):259-267. doi:10.1016/S0006-3495(94)80775-1",
    "chung": "Chung S, Lu Y, Henry RG. Comparison of bootstrap approaches for estimation of "
    "uncertainties of DTI parameters. NeuroImage. 2006;33(2):531-541. "
    "doi:10.1016/j.neuroimage.2006.07.001",
    "otsu": "Otsu N. A threshold selection method from gray-level histograms. IEEE Trans "
    "Syst Man Cybern. 1979;9(1):62-66. doi:10.1109/TSMC.1979.4310076",
    "dipy": "Garyfallidis E, Brett M, Amirbekian B, et al. Dipy, a library for the analysis "
    "of diffusion MRI data. Front Neuroinform. 2014;8:8. doi:10.3389/fninf.2014.00008",
    "bids": "Gorgolewski KJ, Auer T, Calhoun VD, et al. The brain imaging data structure, a "
    "format for organizing and describing outputs of neuroimaging experiments. Sci Data. "
    "2016;3:160044. doi:10.1038/sdata.2016.44",
}
"""The works the methods paragraph cites, by key, in citation order."""

_PACKAGES = ("kwneuro-pydra", "pydra", "dipy", "numpy", "nibabel")

_log = logging.getLogger("kwneuro_pydra.report")


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
header p{margin:4px 0 0;color:#b8c0cc;font-size:13px}main{padding:18px 28px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:14px 18px;
margin:0 0 18px}h2{font-size:17px;margin:0 0 10px}h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px}td,th{padding:4px 10px;text-align:left;
border-bottom:1px solid #eceff3;vertical-align:top}th{color:#5a6472;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#176f2c;font-weight:600}.failed{color:#b3261e;font-weight:600}
.warn{background:#fff6e0;border-left:4px solid #e0a100;padding:6px 10px;margin:6px 0}
.error{background:#fdecea;border-left:4px solid #b3261e;padding:6px 10px;margin:6px 0;
font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap}
figure{margin:8px 0 14px;flex:1 1 520px;max-width:100%}figure img{width:100%;
border:1px solid #dde1e7;background:#000;image-rendering:pixelated}
figure.small{flex:0 1 360px}figure.small img{image-rendering:auto}
figcaption{color:#5a6472;font-size:12px;margin-top:2px}
.grid{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
img.thumb{width:200px;border:1px solid #dde1e7;background:#000}a{color:#1a5fb4}
.thumbs{display:flex;gap:8px;flex-wrap:nowrap}td.name{white-space:nowrap}
.muted{color:#7a8391}ol.refs{font-size:12px;color:#3a4350}code{font-size:12px}
"""


_CONTENT = re.compile(rb'<meta name="kwneuro-pydra-content" content="([0-9a-f]{64})">')
"""A subject page's digest of its content (`_write_subject_page`), read from its first bytes."""


def _page(title: str, subtitle: str, body: str, content: str = "") -> str:
    mark = f'<meta name="kwneuro-pydra-content" content="{content}">' if content else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{mark}'
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


def _series_section(
    report: SeriesReport, figures: Mapping[str, str], *, steps: bool = True
) -> str:
    parts = [
        f'<section id="{html.escape(report.name)}"><h2>{html.escape(report.name)} '
        f"{_status(report)}</h2>",
        f'<p class="muted">Source: {html.escape(report.source)}</p>',
    ]
    if report.failure:
        parts.append(f'<div class="error">{html.escape(report.failure)}</div>')
    if report.stats is not None:
        stats = report.stats
        shells = ", ".join(f"b={b:g} ({n})" for b, n in stats.shells)
        numbers = [
            ("Voxels in mask", f"{stats.voxels:,}"),
            ("Mask volume", f"{stats.volume_ml:.1f} mL"),
            ("Unfitted voxels (NaN)", f"{stats.unfitted:,}"),
            ("Median FA", _number(stats.median_fa)),
            ("Median MD", f"{_number(stats.median_md * 1e3)} &times; 10<sup>-3</sup> mm&sup2;/s"),
        ]
        table = "".join(f'<tr><th>{k}</th><td class="n">{v}</td></tr>' for k, v in numbers)
        table += f"<tr><th>Volumes in the DWI</th><td>{html.escape(shells)}</td></tr>"
        if stats.fitted_shells:
            table += (
                f"<tr><th>Fitted ({html.escape(stats.method)})</th>"
                f"<td>{html.escape(_shells(stats.fitted_shells))}</td></tr>"
                f"<tr><th>Left out</th><td>{html.escape(_shells(stats.left_out) or 'none')}"
                "</td></tr>"
            )
        parts.append(f"<table>{table}</table>")
        for warning in (*stats.notes, *stats.warnings):
            parts.append(f'<div class="warn">Warning: {html.escape(warning)}</div>')
    if figures:
        parts.append('<div class="grid">')
        for label, (_, caption) in report.figures.items():
            size = ' class="small"' if label == "gradients" else ""
            parts.append(
                f'<figure{size}><img src="{html.escape(figures[label])}" '
                f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
                "</figcaption></figure>"
            )
        parts.append("</div>")
    if report.steps and steps:
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


def _shells(pairs: Sequence[tuple[float, int]]) -> str:
    """``b=0 (2), b=1000 (30)``."""
    return ", ".join(f"b={b:g} ({n})" for b, n in pairs)


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
    ran: Collection[str] | None = None,
    distributions: Path | None = None,
    steps_table: Sequence[tuple[str, int, int, int, float]] = (),
    command: Sequence[str] = (),
    worker: str = "",
    parameters: Mapping[str, Any] | None = None,
    steps: Sequence[Callable[..., Any]] = (),
) -> list[Path]:
    """Write the group's ``report.html`` and its `QC_TABLE`, and ``sub-<label>.html`` for
    each subject this run ran or whose page is missing or out of date.

    A subject page is rewritten when one of its series is in ``ran``, when it is missing, or
    when what it shows differs from what it would show now (its series' numbers, figures,
    failures or derivatives, or the page's format and version): each page carries a digest
    of its content, all but the Steps tables and the date (what the run that wrote it did,
    and when). Any other page is left as it is (same file, same modification time), so runs
    of one participant each write one subject page each, not every subject's page again.
    The group page and the QC table cover every series and are written every time.

    Figures are hard-linked (copied across file systems) under ``sub-<label>/figures/`` (the
    group's at `GROUP_FIGURE`; an earlier version's, at ``figures/``, is removed) and
    referenced by relative links, so the folder can be moved or shared as a whole; a figure
    already linked to its source is left as it is. The fit's warnings of each series in
    ``ran`` (shells left out, ...) are logged (``kwneuro_pydra.report``), so that they reach
    the console even when the fit ran in a worker or came from the cache. The group page
    ends with an About section (command line, worker, date, versions, the parameters of
    each step) and a methods paragraph generated from what was run, with references.

    Args:
        output_dir: The derivatives folder.
        reports: One `SeriesReport` per series (failed ones included).
        title: The pages' heading.
        summary: One line under the group page's heading (dataset, date, options).
        ran: The names of the series this run ran (`SeriesReport.name`); None when every
            series is this run's (every subject page is written).
        distributions: The group's FA/MD distributions figure, if any series succeeded.
        steps_table: Per step: ``(step, computed, reused, failed, seconds)``.
        command: The command line that ran (``sys.argv``), shown in About.
        worker: The Pydra worker that ran the steps, shown in About.
        parameters: The run's options by name (``fit_method``, ``bmax``, ``median_radius``
            ...); each step's parameters are its signature's defaults overlaid with these.
        steps: The steps that ran (``bids_app.STEPS``), for their parameters.

    Returns:
        The report's pages: the group page first, then one per subject (written or left
        as it was).
    """
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    for report in reports:  # said again here: a worker's or a cached fit's warnings are not
        for note in report.stats.notes if report.stats is not None else ():
            if ran is None or report.name in ran:
                _log.warning("%s: %s", report.name, note)
    by_subject: dict[str, list[SeriesReport]] = {}
    for report in reports:
        by_subject.setdefault(report.subject, []).append(report)
    figures = {r.name: _place_figures(r, output_dir) for r in reports}
    pages = [output_dir / "report.html"]
    package = f"kwneuro-pydra {_versions()['kwneuro-pydra']}"
    for subject, series in by_subject.items():
        page = output_dir / f"sub-{subject}.html"
        rewrite = ran is None or any(r.name in ran for r in series)
        _write_subject_page(page, series, figures, package, stamp, rewrite=rewrite)
        pages.append(page)
    step_parameters = _step_parameters(steps, parameters or {})
    about = _about(command, worker, stamp, step_parameters)
    methods = _methods(reports, step_parameters)
    _write_qc_table(output_dir / QC_TABLE, reports)
    _write(
        pages[0],
        _page(
            title,
            f"{summary} · {stamp}",
            _group_body(by_subject, figures, output_dir, distributions, steps_table)
            + methods
            + about,
        ),
    )
    return pages


def _write_subject_page(
    page: Path,
    series: Sequence[SeriesReport],
    figures: Mapping[str, Mapping[str, str]],
    package: str,
    stamp: str,
    *,
    rewrite: bool,
) -> bool:
    """Write a subject's page, unless ``rewrite`` is False and the page there already shows
    what it would show now; True when written.

    What it shows is the page less its Steps tables and the date ``stamp`` (what the run
    that writes it did, and when): a digest of that, kept in the page's head, tells whether
    it changed. ``package`` is the name and version that wrote it.
    """
    title = page.stem
    stable = f"{len(series)} DWI series · {package}"
    back = '<p><a href="report.html">&larr; Group report</a></p>'
    shown = back + "".join(_series_section(r, figures[r.name], steps=False) for r in series)
    content = hashlib.sha256(_encoded(_page(title, stable, shown))).hexdigest()
    if not rewrite and _content_of(page) == content:
        return False
    body = back + "".join(_series_section(r, figures[r.name]) for r in series)
    _write(page, _page(title, f"{stable} · {stamp}", body, content))
    return True


def _content_of(page: Path) -> str | None:
    """The content digest in the head of a subject page; None when it has none or is missing,
    not a regular file, or a symbolic link (replaced, never kept).
    """
    if page.is_symlink():
        return None
    try:
        found = _CONTENT.search(read_regular(page, 512))
    except OSError:
        return None
    return found.group(1).decode() if found else None


def _step_parameters(
    steps: Sequence[Callable[..., Any]], parameters: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Per step: its keyword parameters, defaults overlaid with the run's options."""
    found: dict[str, dict[str, Any]] = {}
    for step in steps:
        signature = inspect.signature(inspect.unwrap(step))
        keywords = {
            name: parameters.get(name, p.default)
            for name, p in signature.parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        if keywords:
            found[getattr(step, "__name__", str(step))] = keywords
    return found


def _versions() -> dict[str, str]:
    found = {}
    for package in _PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def _about(
    command: Sequence[str], worker: str, stamp: str, steps: Mapping[str, Mapping[str, Any]]
) -> str:
    rows = [
        ("Command line", f"<code>{html.escape(' '.join(command)) or 'not recorded'}</code>"),
        ("Worker", html.escape(worker or "not recorded")),
        ("Date", stamp),
        *((f"{name} version", html.escape(v)) for name, v in _versions().items()),
        *(
            (
                f"<code>{html.escape(step)}</code>",
                html.escape(", ".join(f"{k}={v!r}" for k, v in values.items())),
            )
            for step, values in steps.items()
        ),
    ]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<section id="about"><h2>About this run</h2><table>{table}</table></section>'


def _methods(reports: Sequence[SeriesReport], steps: Mapping[str, Mapping[str, Any]]) -> str:
    """The methods paragraph, from what was run: the fit's record of each series (method,
    bmax, shells fitted and left out) and, when the run gave them, the mask's parameters.
    """
    done = [r.stats for r in reports if r.stats is not None and r.stats.method]
    if not done:
        return ""
    methods = sorted({s.method for s in done})
    schemes: dict[str, int] = {}
    for stats in done:
        left = f" (left out: {_shells(stats.left_out)})" if stats.left_out else ""
        key = f"{_shells(stats.fitted_shells)}{left}"
        schemes[key] = schemes.get(key, 0) + 1
    shells = "; ".join(
        f"{scheme} in {count} series" if len(schemes) > 1 else scheme
        for scheme, count in schemes.items()
    )
    limits = sorted({(s.bmax, s.shell_tolerance) for s in done})
    how = {
        "WLS": "weighted least squares of the log-signal, weighted by the signal that an "
        "ordinary least-squares fit predicts [2]",
        "OLS": "ordinary least squares of the log-signal",
    }
    mask = steps.get("brain_mask") or {}
    if mask.get("mask_method", "median-otsu") == "shells":
        mask_text = (
            "computed from every volume, as MRtrix3's dwi2mask does: the mean b=0 image and "
            "each shell's mean image, each thresholded by Otsu's method [3] refined half-way "
            "between the local tissue and background means (Gaussian weights of "
            f"{mask.get('neighbourhood_mm')} mm), their union's largest component with holes "
            f"filled and bridges narrower than {mask.get('bridge_mm')} mm cut"
        )
    else:
        mask_text = "computed by median-Otsu [3, 4] of the mean b=0 image" + (
            f" (median filter radius {mask.get('median_radius')} voxels, "
            f"{mask.get('numpass')} passes, {mask.get('dilate')} dilations"
            + (", largest component with holes filled)" if mask.get("finalize_mask") else ")")
            if mask
            else ""
        )
    versions = _versions()
    text = (
        f"Diffusion tensors [1] were fitted with kwneuro-pydra {versions['kwneuro-pydra']} "
        f"by {' and '.join(how[m] for m in methods)}, as dipy does [4], inside a brain mask "
        f"{mask_text}. b-values were "
        "grouped into shells (sorted neighbours at most "
        f"{' or '.join(f'{t:g}' for _, t in limits)} s/mm² apart) and each shell was fitted "
        f"whole when its median b-value was at most {' or '.join(f'{b:g}' for b, _ in limits)}"
        f" s/mm². Volumes fitted: {shells}. Voxels of the mask with a NaN, infinite or no "
        "positive sample were not fitted (NaN in every map). FA, MD, AD and RD were computed "
        "from the eigenvalues; colour FA is the principal eigenvector in world axes times FA. "
        "Outputs follow BIDS-Derivatives [5] (BEP016 names for the model maps)."
    )
    references = "".join(f"<li>{html.escape(r)}</li>" for r in REFERENCES.values())
    return (
        f'<section id="methods"><h2>Methods</h2><p>{html.escape(text)}</p>'
        f'<ol class="refs">{references}</ol></section>'
    )


def _write_qc_table(path: Path, reports: Sequence[SeriesReport]) -> None:
    """One row per series: mask size, medians, unfitted voxels, shells fitted and left out."""
    buffer = io.StringIO()
    table = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    table.writerow(
        [
            "series",
            "status",
            "voxels_in_mask",
            "mask_volume_ml",
            "median_fa",
            "median_md_mm2_per_s",
            "unfitted_voxels",
            "shells_fitted",
            "shells_left_out",
        ]
    )
    for report in reports:
        stats = report.stats
        if stats is None:
            table.writerow([report.name, "failed", *["n/a"] * 7])
            continue
        table.writerow(
            [
                report.name,
                "ok",
                stats.voxels,
                f"{stats.volume_ml:.3f}",
                f"{stats.median_fa:.6g}",
                f"{stats.median_md:.6g}",
                stats.unfitted,
                " ".join(f"{b:g}:{n}" for b, n in stats.fitted_shells) or "n/a",
                " ".join(f"{b:g}:{n}" for b, n in stats.left_out) or "none",
            ]
        )
    _write(path, buffer.getvalue())


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
    legacy = output_dir / _LEGACY_GROUP_FIGURE  # an earlier version's: the page links this one
    with contextlib.suppress(OSError):
        legacy.unlink()
        legacy.parent.rmdir()  # only when empty
    if distributions is not None:
        target = output_dir / GROUP_FIGURE
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
                else "".join(
                    f'<div class="warn">{html.escape(w)}</div>'
                    for w in (stats.warnings if stats else ())
                )
            )
            rows.append(
                f'<tr><td class="name"><a href="sub-{html.escape(subject)}.html#'
                f'{html.escape(report.name)}">{html.escape(report.name)}</a></td>'
                f"<td>{_status(report)}</td>{numbers}"
                f'<td><div class="thumbs">{thumbs}</div>{detail}</td></tr>'
            )
    parts.append(
        "<section><h2>Series</h2><table><tr><th>Series</th><th>Status</th><th>Voxels in mask"
        "</th><th>Median FA</th><th>Median MD (10<sup>-3</sup> mm&sup2;/s)</th>"
        f"<th>Mean b0 + mask, FA</th></tr>{''.join(rows)}</table>"
        f'<p class="muted">The numbers as a table: <a href="{QC_TABLE}">{QC_TABLE}</a> '
        "(tab-separated; shells as <code>b:volumes</code>).</p></section>"
    )
    return "".join(parts)


def _write(path: Path, text: str) -> None:
    write_atomic(path, _encoded(text))


def _encoded(text: str) -> bytes:
    """A page's bytes as written (see `_BIDI_ESCAPED`)."""
    if _HAS_BIDI.search(text):  # rare: translate, much slower than a search, only then
        text = text.translate(_BIDI_ESCAPED)
    return text.encode("utf-8")


_BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_BIDI_ESCAPED = {code: urllib.parse.quote(chr(code)) for code in _BIDI}
"""Bidirectional controls (which can make a name read backwards) shown percent-encoded:
visible in the text, and the same file name where a link or an image source holds one."""

_HAS_BIDI = re.compile(f"[{''.join(map(chr, _BIDI))}]")

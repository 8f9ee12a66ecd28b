"""Benchmarks of kwneuro_pydra against its peers, side by side, printed as ratio tables.

    python -m benchmarks.run [--smoke] [--only CASE ...] [--list] [--workdir DIR]
                             [--markdown PAGE] [--plot PNG]

Peers: upstream kwneuro 1.0's cache module (installed on first use into benchmarks/.peers),
joblib, and plain Pydra 1.0 tasks. Every figure is min and median over repetitions, with its
ratio to the machine's own limit (a memory read pass, a file read, a stat) and, for ours, to
each peer. ``--smoke`` runs every case at tiny sizes in a few seconds (its figures mean nothing;
it keeps the cases alive). ``--markdown`` also writes the results page, ``--plot`` the scaling
curves (needs matplotlib).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

# Pydra telemetry: one request per process unless told not to. Set before any Pydra import.
os.environ.setdefault("NO_ET", "1")

from benchmarks import (
    cases_bids,
    cases_core,
    cases_dti,
    cases_mrtrix,
    cases_profile,
    cases_pydra,
    cases_resources,
    cases_slurm,
)
from benchmarks._common import CASES, FULL, SMOKE, Case, Sizes, case
from benchmarks._harness import Curve, Section, describe_machine, format_section

__all__ = ["CASES", "FULL", "SMOKE", "Case", "Sizes", "case", "main"]

_MODULES = (
    cases_core,
    cases_resources,
    cases_pydra,
    cases_profile,
    cases_dti,
    cases_mrtrix,
    cases_slurm,
    cases_bids,
)
"""The case modules (imported for their registrations), in the order their cases run."""


def _ordered(names: Sequence[str]) -> list[str]:
    """*names* by case module (in `_MODULES` order), registration order within each."""
    modules = [module.__name__ for module in _MODULES]

    def rank(name: str) -> int:
        fn = CASES[name]
        module = getattr(getattr(fn, "func", fn), "__module__", "")
        return modules.index(module) if module in modules else len(modules)

    return sorted(names, key=rank)


PAGE_INTRO = """\
# Benchmarks

How much the cache costs, measured side by side with its peers in one run: upstream
kwneuro 1.0's `cache` module (installed with `--no-deps`, only that module loaded),
`joblib.Memory`, and plain Pydra 1.0 tasks (`pydra.compose.python.define`).

Every figure is the min and the median of per-call times over repetitions (`runs`: repetitions
x calls each). `÷ limit` divides the minimum by the machine's own limit for the same work
(a memory read pass `arr.sum()`, a file read, a stat, a bare `np.load` or call); `÷ peers`
divides ours by each peer's figure (below 1x: faster than that peer). Sizes are realistic:
a 144 MB float32 DWI (96 x 96 x 60 x 65) and a 23 MB int16 T1 (176 x 256 x 256).

Reproduce with the command below (or `tox -e bench`); `--smoke` runs every case at tiny sizes
in seconds (that is what the test suite does; its figures mean nothing).
"""


MARKER = "<!-- Everything below is written by `python -m benchmarks.run --markdown`. -->"
"""Separates the hand-written part of the results page (kept) from the generated one."""


def _kept_intro(page: Path) -> str:
    """The page's hand-written part (up to `MARKER`) if it has one, else the default intro."""
    if page.is_file():
        text = page.read_text()
        if MARKER in text:
            return text.split(MARKER, 1)[0] + MARKER + "\n"
    return PAGE_INTRO + "\n" + MARKER + "\n"


def _header(argv: Sequence[str]) -> list[str]:
    return [
        f"- command: `{shlex.join(['python', '-m', 'benchmarks.run', *argv])}`",
        *(f"- {line}" for line in describe_machine()),
        "- ratios divide minimum times: `÷ limit` near 1x = what the machine allows;",
        "  `÷ peers` below 1x = faster than that peer",
    ]


def write_plot(curves: Sequence[Curve], path: Path) -> str:
    """Draw the cost-versus-subjects curves, one panel per unit, log-log; return a note."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"plot not written: matplotlib is not installed ({path})"
    units = list(dict.fromkeys(curve.unit for curve in curves))
    fig, axes = plt.subplots(1, len(units), figsize=(5.2 * len(units), 4.2), squeeze=False)
    for axis, unit in zip(axes[0], units, strict=True):
        for curve in (c for c in curves if c.unit == unit):
            axis.plot(curve.xs, curve.ys, marker="o", label=curve.name)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("subjects")
        axis.set_ylabel(unit)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle("kwneuro-pydra: how the costs grow with the number of subjects (4 steps each)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written: {path}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected cases and print one table per case; 1 if any case failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--smoke", action="store_true", help="every case at tiny sizes, fast")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(CASES),
        metavar="CASE",
        help="run only this case (repeatable); see --list",
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--workdir", type=Path, help="where to write scratch files (a disk)")
    parser.add_argument(
        "--markdown",
        type=Path,
        metavar="PAGE",
        help="also write the results page (e.g. docs/benchmarks.md)",
    )
    parser.add_argument(
        "--plot", type=Path, metavar="PNG", help="also draw the scaling curves (a .png)"
    )
    parser.add_argument(
        "--profile-plot",
        type=Path,
        metavar="PNG",
        help="also draw the main job's time split (a .png)",
    )
    options = parser.parse_args(argv)
    if options.list:
        print("\n".join(_ordered(list(CASES))))
        return 0
    sizes = SMOKE if options.smoke else FULL
    header = _header(argv)
    print("## Results\n")
    print("\n".join(header) + "\n", flush=True)
    failed: list[str] = []
    tables: list[str] = []
    curves: list[Curve] = []
    started_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kwneuro-bench-", dir=options.workdir) as tmp:
        for name in _ordered(options.only or list(CASES)):
            workdir = Path(tmp) / name
            workdir.mkdir()
            started = time.perf_counter()
            try:
                section: Section = CASES[name](sizes, workdir)
            except Exception:
                traceback.print_exc()
                failed.append(name)
                continue
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            section.notes.append(f"case took {time.perf_counter() - started:.1f} s")
            table = format_section(section)
            tables.append(table)
            curves.extend(section.curves)
            print(table, flush=True)
    total = f"- whole run: {time.perf_counter() - started_all:.0f} s"
    print(total)
    if options.plot is not None and curves:
        print(write_plot(curves, options.plot))
    if options.profile_plot is not None:
        print(cases_profile.write_profile_plot(options.profile_plot))
    if options.markdown is not None:
        page = [_kept_intro(options.markdown), "## Results\n", "\n".join(header), total, ""]
        if options.plot is not None and curves:
            relative = os.path.relpath(options.plot, options.markdown.parent)
            page += [f"![How the costs grow with the number of subjects]({relative})\n"]
        page += tables
        options.markdown.parent.mkdir(parents=True, exist_ok=True)
        options.markdown.write_text("\n".join(page))
        print(f"page written: {options.markdown}")
    if failed:
        print(f"failed cases: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

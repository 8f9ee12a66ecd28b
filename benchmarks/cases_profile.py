"""The main job at realistic size, every second accounted for.

``kwneuro-pydra run BIDS OUT participant --worker cf --n-procs 2`` (the BIDS app, in process)
over a demo dataset of 20 subjects (30 DWI series: every second subject has two sessions) of
96 x 96 x 60 x 65 float32 DWIs (144 MB each, ``.nii.gz``), cold, then again fully cached
once the files of the cold run have settled (as for a user's rerun: the file-digest memo
distrusts files changed within the last second).
Every process of the run (the submitter and the ``cf`` workers, forked after the timers are in
place) charges its time to the innermost category it is in:

- **fit**: the bodies of ``mean_b0`` and ``estimate_dti``; **mask**: ``brain_mask``'s;
- **NIfTI read** / **NIfTI write**: `NiftiVolumeResource` reading headers and voxels, saving;
- **reports**: the bodies of the report's steps (``gradient_sphere``, ``dti_statistics``, the
  four mosaics, ``group_distributions``) and the HTML pages (``write_reports``);
- **BIDS**: discovering and loading the series, writing the derivatives (links and JSON
  sidecars), ``dataset_description.json`` and the options record;
- **fingerprints**: argument fingerprints (the cache's and Pydra's hashes of our values), code
  fingerprints and file digests;
- **cache bookkeeping**: the rest of a cached step call (lookups, locks, sidecars, publish),
  the command's plan of each series and the adapter's read-back of results;
- **Pydra (workers)**: the rest of a job in a worker (unpickling, Pydra's hashing, result files;
  the app's ``cf`` runs each series' steps as one job of a worker);
- **Pydra/CLI (submitter)**: the submitting process's CPU time outside the categories above
  (imports, argument parsing, building and scheduling the workflow, the summary).

The science and the NIfTI I/O are the job; reports and BIDS are its product; the last four are
overhead. The sum is in process-seconds (two workers run at once, so it exceeds the wall time).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from benchmarks import _peers
from benchmarks._common import SMOKE, Sizes, case
from benchmarks._harness import Row, Section, Timing, settle
from benchmarks.cases_bids import _quiet_run

SUBJECTS = {True: 2, False: 20}
"""Subjects of the profile, by smoke mode."""
SHAPES = {True: (16, 16, 10, 11), False: (96, 96, 60, 65)}
"""DWI shape of each series (5 b=0 volumes, the rest directions), by smoke mode."""
B0_VOLUMES = 5

SCIENCE = ("fit", "mask")
IO = ("NIfTI read", "NIfTI write")
PRODUCT = ("reports", "BIDS")
OVERHEAD = ("fingerprints", "cache bookkeeping", "Pydra (workers)", "Pydra/CLI (submitter)")
CATEGORIES = (*SCIENCE, *IO, *PRODUCT, *OVERHEAD)
SUBMITTER = OVERHEAD[-1]
"""The category of the submitter's CPU time outside every other."""

STEPS = {
    "fit": (("dti", "mean_b0"), ("dti", "estimate_dti")),
    "mask": (("dti", "brain_mask"),),
    "reports": (
        ("report", "gradient_sphere"),
        ("bids_app", "dti_statistics"),
        ("report", "b0_mosaic"),
        ("bids_app", "fa_mosaic"),
        ("bids_app", "color_fa_mosaic"),
        ("bids_app", "md_mosaic"),
        ("report", "group_distributions"),
    ),
}
"""Category -> the steps (module key, name) whose bodies it times."""

_MODULES = {
    "dti": "kwneuro_pydra.workflows.dti",
    "bids_app": "kwneuro_pydra.workflows.bids_app",
    "report": "kwneuro_pydra.report",
}


class _Timers:
    """Exclusive time per category in this process; a worker saves it after each outermost
    call (the pool may end a worker without notice), the submitter when asked."""

    def __init__(self, directory: Path) -> None:
        self.submitter = os.getpid()
        self.restart(directory)

    def restart(self, directory: Path) -> None:
        """Start an empty account, saved into ``directory``."""
        self.directory = directory
        self.pid = os.getpid()
        self.stack: list[list[Any]] = []  # [category, since, counted name] per open call
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()

    def wrap(self, category: str, fn: Callable[..., Any], counted: str) -> Callable[..., Any]:
        """``fn`` charging its exclusive time to ``category``, its calls to ``counted``."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if os.getpid() != self.pid:  # a forked worker starts its own account
                self.restart(self.directory)
            self.calls[counted] += 1
            now = time.perf_counter()
            if self.stack:
                self.seconds[self.stack[-1][0]] += now - self.stack[-1][1]
            self.stack.append([category, now, counted])
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.perf_counter()
                name, since, _ = self.stack.pop()
                self.seconds[name] += end - since
                if self.stack:
                    self.stack[-1][1] = end
                elif self.pid != self.submitter:  # the submitter's account is read in place
                    self.save()

        return timed

    def counting_dwis(self, gunzip: Callable[[bytes, int], bytes], sizes: set[int]) -> Any:
        """``gunzip`` counting the decompressions of a DWI (by its compressed size) under the
        name of the innermost step calling it."""

        @functools.wraps(gunzip)
        def counted(data: bytes, size: int) -> bytes:
            if len(data) in sizes:
                names = [entry[2] for entry in self.stack]
                step = next((n for n in reversed(names) if n in _STEP_NAMES), "no step")
                self.calls[f"DWI decompressed by {step}"] += 1
            return gunzip(data, size)

        return counted

    def save(self) -> None:
        """Write this process's account (``<pid>.json``)."""
        record = {"seconds": self.seconds, "calls": self.calls}
        (self.directory / f"{os.getpid()}.json").write_text(json.dumps(record))


_STEP_NAMES = {name for steps in STEPS.values() for _, name in steps}


def _targets() -> list[tuple[str, Any, str]]:
    """(category, owner, attribute) of every function the profile times besides the steps.

    A module's attribute is replaced where its callers look it up (their own module)."""
    modules = {
        name: importlib.import_module(f"kwneuro_pydra.{name}")
        for name in (
            "cache",
            "_code",
            "_filedigest",
            "_step",
            "_store",
            "app._run",
            "pydra._hash",
            "pydra._scheduler",
            "pydra._subjects",
            "report._html",
            "resources",
            "resources._gzip",
        )
    }
    volume = modules["resources"].NiftiVolumeResource
    app = modules["app._run"]
    cf = importlib.import_module("pydra.workers.cf")
    return [
        ("NIfTI read", volume, "_image"),
        ("NIfTI read", volume, "get_array"),
        ("NIfTI read", modules["resources._gzip"], "gunzip"),  # counted: decompressions
        ("NIfTI write", volume, "save"),
        ("reports", modules["report._html"], "write_reports"),
        ("BIDS", app, "units"),
        ("BIDS", app, "write_derivatives"),
        ("BIDS", app, "write_dataset_description"),
        ("BIDS", app, "write_options"),
        ("fingerprints", modules["_step"], "fingerprint"),
        ("fingerprints", modules["pydra._hash"], "fingerprint"),
        ("fingerprints", modules["_code"], "fingerprint"),
        ("fingerprints", modules["_store"], "file_digest"),
        ("fingerprints", modules["_filedigest"], "_hash_file"),  # counted: files read to hash
        ("cache bookkeeping", modules["cache"].Cache, "_run_step"),
        ("cache bookkeeping", app, "look_up"),
        ("cache bookkeeping", modules["pydra._subjects"], "_replay"),
        ("Pydra (workers)", cf.ConcurrentFuturesWorker, "uncloudpickle_and_run"),
        ("Pydra (workers)", modules["pydra._scheduler"], "_run_subject"),  # a series' job
    ]


@contextmanager
def _timed(directory: Path, dwi_sizes: set[int]) -> Iterator[_Timers]:
    """Put timers on the targets and on the steps' bodies; take them off on exit."""
    timers = _Timers(directory)
    undo: list[tuple[Any, str, Any]] = []
    for category, owner, name in _targets():
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        function = original
        if isinstance(original, (staticmethod, classmethod)):
            function = original.__func__
        if name == "gunzip":
            function = timers.counting_dwis(function, dwi_sizes)
        timed: Any = timers.wrap(category, function, name)
        if isinstance(original, (staticmethod, classmethod)):
            timed = type(original)(timed)
        setattr(owner, name, timed)
        undo.append((owner, name, original))
    for category, steps in STEPS.items():
        for module, name in steps:
            step = getattr(importlib.import_module(_MODULES[module]), name).__kwneuro_step__
            undo.append((step, "fn", step.fn))
            step.fn = timers.wrap(category, step.fn, name)
    try:
        yield timers
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


@dataclass
class Profile:
    """What one profiled run measured."""

    seconds: dict[str, float]
    """Cold run: process-seconds per category."""
    rerun_seconds: dict[str, float]
    """Fully cached rerun: the same (the submitter alone: nothing is scheduled)."""
    wall: float
    rerun_wall: float
    dwi_decompressions: dict[str, int]
    """Cold run: decompressions of a DWI by the step that asked for it."""
    decompressions: int
    """Cold run: whole-file decompressions of any volume."""
    hashed: tuple[int, int]
    """Files read to hash them (the file-digest memo did not know them): cold, rerun."""
    processes: int
    subjects: int
    series: int
    shape: tuple[int, ...]


LAST: list[Profile] = []
"""The profiles measured in this process (for the plot)."""


@case("profile-bids-app")
def profile_bids_app(sizes: Sizes, workdir: Path) -> Section:
    """Time split of a cold ``kwneuro-pydra run`` with ``cf`` over many subjects, and its
    fully cached rerun."""
    _peers.ours()
    try:
        importlib.import_module("kwneuro_pydra.pydra")
        demo = importlib.import_module("kwneuro_pydra.workflows.demo")
    except ImportError as exc:
        raise _peers.Unavailable(f"the Pydra adapter is not importable ({exc!r})") from exc
    smoke = sizes is SMOKE
    subjects, shape = SUBJECTS[smoke], SHAPES[smoke]
    bids_dir = demo.write_demo_dataset(
        workdir / "bids",
        subjects=subjects,
        shape=shape[:3],
        b0_volumes=B0_VOLUMES,
        directions=shape[3] - B0_VOLUMES,
    )
    dwis = sorted(bids_dir.glob("sub-*/**/*_dwi.nii.gz"))
    settle(dwis[-1], sizes.settle_s)
    args = (str(bids_dir), str(workdir / "out"), "participant", "--worker", "cf", "--n-procs", "2")
    cold_dir, rerun_dir = workdir / "timers-cold", workdir / "timers-rerun"
    cold_dir.mkdir()
    rerun_dir.mkdir()
    # Pydra's job cache under the scratch folder: cold for sure, nothing left in ~/.cache.
    with (
        mock.patch.dict(os.environ, {"XDG_CACHE_HOME": str(workdir / "xdg")}),
        _timed(cold_dir, {p.stat().st_size for p in dwis}) as timers,
    ):
        cpu, start = time.process_time(), time.perf_counter()
        _quiet_run(*args)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        timers.save()
        time.sleep(sizes.settle_s)  # a user's rerun: the last links into OUT have settled
        timers.restart(rerun_dir)
        rerun_cpu, start = time.process_time(), time.perf_counter()
        _quiet_run(*args)
        rerun_wall, rerun_cpu = time.perf_counter() - start, time.process_time() - rerun_cpu
        timers.save()
    seconds, calls, processes = _collect(cold_dir, cpu)
    rerun_seconds, rerun_calls, _ = _collect(rerun_dir, rerun_cpu)
    profile = Profile(
        seconds=seconds,
        rerun_seconds=rerun_seconds,
        wall=wall,
        rerun_wall=rerun_wall,
        dwi_decompressions={
            name.rsplit(" ", 1)[1]: count
            for name, count in sorted(calls.items())
            if name.startswith("DWI decompressed by ")
        },
        decompressions=calls["gunzip"],
        hashed=(calls["_hash_file"], rerun_calls["_hash_file"]),
        processes=processes,
        subjects=subjects,
        series=len(dwis),
        shape=shape,
    )
    LAST.append(profile)
    return _section(profile)


def _collect(directory: Path, cpu: float) -> tuple[dict[str, float], Counter[str], int]:
    """Sum the processes' accounts (the submitter's remainder is its CPU time ``cpu``).

    Returns:
        Seconds per category, calls per counted name, the number of processes.
    """
    seconds = dict.fromkeys(CATEGORIES, 0.0)
    calls: Counter[str] = Counter()
    own = f"{os.getpid()}.json"
    records = sorted(directory.glob("*.json"))
    for path in records:
        record = json.loads(path.read_text())
        for name, value in record["seconds"].items():
            seconds[name] += value
        calls.update(record["calls"])
        if path.name == own:  # the submitter: CPU time not in a category is Pydra's or ours
            seconds[SUBMITTER] += max(0.0, cpu - sum(record["seconds"].values()))
    return seconds, calls, len(records)


def _section(profile: Profile) -> Section:
    total = sum(profile.seconds.values())
    rerun_total = sum(profile.rerun_seconds.values())
    shape = " x ".join(map(str, profile.shape))
    section = Section(
        "profile-bids-app",
        f"where the time of `kwneuro-pydra run --worker cf --n-procs 2` goes: "
        f"{profile.subjects} subjects ({profile.series} DWI series of {shape})",
    )
    for name in CATEGORIES:
        value = profile.seconds[name]
        share = value / total if total else 0.0
        rerun = profile.rerun_seconds[name]
        note = f"{share:.1%} of the cold run; rerun {rerun * 1e3:.1f} ms"
        section.rows.append(Row(name, _one(value), note=note))
    section.rows.append(
        Row("all categories (process-seconds)", _one(total), note=f"{profile.processes} processes")
    )
    ends = f"{profile.series} series end to end"
    section.rows.append(Row("cold run, wall", _one(profile.wall), note=ends))
    section.rows.append(
        Row(
            "fully cached rerun, wall",
            _one(profile.rerun_wall),
            limit="cold run, wall",
            note=f"the same command again; {rerun_total * 1e3:.0f} ms in categories",
        )
    )
    overhead = sum(profile.seconds[c] for c in OVERHEAD)
    product = sum(profile.seconds[c] for c in PRODUCT)
    dwis = sum(profile.dwi_decompressions.values())
    by_step = ", ".join(f"{step} {n}" for step, n in profile.dwi_decompressions.items())
    section.notes += [
        f"overhead ({', '.join(OVERHEAD)}): {overhead / total:.1%} of the cold run "
        f"(target at most 5%); with reports and BIDS: {(overhead + product) / total:.1%}"
        if total
        else "nothing measured",
        f"cold run / cached rerun: {profile.wall / profile.rerun_wall:.0f}x (target at least "
        "100x)",
        f"{dwis} DWI decompressions for {profile.series} DWIs "
        f"({dwis / profile.series:.2f} per DWI; by {by_step or 'no step'}); "
        f"{profile.decompressions} whole-file decompressions of any volume",
        f"files read to hash them: {profile.hashed[0]} in the cold run, {profile.hashed[1]} in "
        "the rerun",
    ]
    return section


def _one(seconds: float) -> Timing:
    return Timing.from_samples([seconds * 1e9])


def write_profile_plot(path: Path) -> str:
    """Draw the last profile as stacked bars of shares, cold run and cached rerun; return a
    note.

    Args:
        path: The PNG to write.
    """
    if not LAST:
        return "profile plot not written: the profile case did not run"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"profile plot not written: matplotlib is not installed ({path})"
    profile = LAST[-1]
    bars = [
        (
            f"cold run\n{sum(profile.seconds.values()):.0f} process-s, {profile.wall:.0f} s wall",
            profile.seconds,
        ),
        (
            f"fully cached rerun\n{sum(profile.rerun_seconds.values()):.2f} process-s, "
            f"{profile.rerun_wall:.2f} s wall",
            profile.rerun_seconds,
        ),
    ]
    colours = plt.get_cmap("tab10").colors
    fig, axis = plt.subplots(figsize=(9.5, 3.4))
    for row, (_, seconds) in enumerate(bars):
        total = sum(seconds.values()) or 1.0
        left = 0.0
        for index, name in enumerate(CATEGORIES):
            share = 100 * seconds[name] / total
            axis.barh(
                row, share, left=left, color=colours[index % 10], label=name if row == 0 else None
            )
            if share > 4:
                axis.text(
                    left + share / 2,
                    row,
                    f"{share:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white",
                )
            left += share
    axis.set_yticks(range(len(bars)), [label for label, _ in bars], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlim(0, 100)
    axis.set_xlabel("share of the process-seconds (2 cf workers + the submitter), %")
    shape = " x ".join(map(str, profile.shape))
    axis.set_title(
        f"kwneuro-pydra run --worker cf --n-procs 2: {profile.subjects} subjects, "
        f"{profile.series} DWI series of {shape}",
        fontsize=10,
    )
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=5, fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f"profile plot written: {path}"

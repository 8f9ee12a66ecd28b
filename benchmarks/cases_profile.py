"""The main job at realistic size, every second accounted for.

``run_subjects(dti_pipeline, ..., worker="cf")`` over 20 subjects of 96 x 96 x 60 x 65 float32
DWIs (144 MB each, ``.nii.gz``), cold, then fully cached. Every process of the run (the
submitter and the ``cf`` workers, forked after the timers are in place) charges its time to the
innermost category it is in:

- **NIfTI read** / **NIfTI write**: `NiftiVolumeResource` reading headers and voxels, saving;
- **fingerprints**: the cache's argument fingerprints and file digests;
- **fit** / **mask**: the bodies of ``estimate_dti`` and ``brain_mask`` (the science);
- **cache bookkeeping**: the rest of a cached step call (lookups, locks, sidecars, publish);
- **Pydra (workers)**: the rest of a job in a worker (unpickling, Pydra's hashing, result files);
- **Pydra (submitter)**: the submitting process's CPU time outside the categories above;
- **reports**: a slot for the per-subject reports (not built yet: 0).

The sum is in process-seconds (two workers run at once, so it exceeds the wall time).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _peers
from benchmarks._common import SMOKE, Sizes, bvals_bvecs, case, phantom_dwi_array
from benchmarks._harness import Row, Section, Timing, settle

SUBJECTS = {True: 2, False: 20}
"""Subjects of the profile, by smoke mode."""
SHAPES = {True: (8, 8, 6, 8), False: (96, 96, 60, 65)}
"""DWI shape of each subject, by smoke mode."""

CATEGORIES = (
    "NIfTI read",
    "NIfTI write",
    "fingerprints",
    "fit",
    "mask",
    "cache bookkeeping",
    "Pydra (workers)",
    "Pydra (submitter)",
    "reports",
)
SCIENCE = ("fit", "mask")
IO = ("NIfTI read", "NIfTI write")


class _Timers:
    """Exclusive time per category in this process; a worker saves it after each outermost
    call (the pool may end a worker without notice), the submitter when asked."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.submitter = os.getpid()
        self._reset()

    def _reset(self) -> None:
        self.pid = os.getpid()
        self.stack: list[list[Any]] = []
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()

    def wrap(self, category: str, fn: Callable[..., Any], counted: str) -> Callable[..., Any]:
        """``fn`` charging its exclusive time to ``category``, its calls to ``counted``."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if os.getpid() != self.pid:  # a forked worker starts its own account
                self._reset()
            self.calls[counted] += 1
            now = time.perf_counter()
            if self.stack:
                self.seconds[self.stack[-1][0]] += now - self.stack[-1][1]
            self.stack.append([category, now])
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.perf_counter()
                name, since = self.stack.pop()
                self.seconds[name] += end - since
                if self.stack:
                    self.stack[-1][1] = end
                elif self.pid != self.submitter:  # the submitter's account is read in place
                    self.save()

        return timed

    def save(self) -> None:
        record = {"seconds": self.seconds, "calls": self.calls}
        (self.directory / f"{os.getpid()}.json").write_text(json.dumps(record))


def _targets() -> list[tuple[str, Any, str, bool]]:
    """(category, owner, attribute, static) of every function the profile times."""
    import importlib

    cache = importlib.import_module("kwneuro_pydra.cache")
    step = importlib.import_module("kwneuro_pydra._step")
    store = importlib.import_module("kwneuro_pydra._store")
    gzip = importlib.import_module("kwneuro_pydra.resources._gzip")
    resources = importlib.import_module("kwneuro_pydra.resources")
    cf = importlib.import_module("pydra.workers.cf")
    volume = resources.NiftiVolumeResource
    return [
        ("NIfTI read", volume, "_image", False),
        ("NIfTI read", volume, "get_array", False),
        ("NIfTI read", gzip, "gunzip", True),  # counted: decompressions
        ("NIfTI write", volume, "save", True),
        ("fingerprints", step, "fingerprint", True),
        ("fingerprints", store, "file_digest", True),
        ("cache bookkeeping", cache.Cache, "_run_step", False),
        ("Pydra (workers)", cf.ConcurrentFuturesWorker, "uncloudpickle_and_run", True),
    ]


@contextmanager
def _timed(directory: Path, steps: dict[str, Any]) -> Iterator[_Timers]:
    """Put timers on the targets and on the steps' bodies; take them off on exit."""
    timers = _Timers(directory)
    undo: list[tuple[Any, str, Any]] = []
    for category, owner, name, static in _targets():
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        function = (
            original.__func__ if isinstance(original, (staticmethod, classmethod)) else original
        )
        timed = timers.wrap(category, function, name)
        if isinstance(original, classmethod):
            timed = classmethod(timed)
        elif isinstance(owner, type) and static:
            timed = staticmethod(timed)
        setattr(owner, name, timed)
        undo.append((owner, name, original))
    for category, wrapper in steps.items():
        step = wrapper.__kwneuro_step__
        undo.append((step, "fn", step.fn))
        step.fn = timers.wrap(category, step.fn, category)
    try:
        yield timers
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


@dataclass
class Profile:
    """What one profiled run measured."""

    seconds: dict[str, float]
    wall: float
    rerun_wall: float
    decompressions: int
    processes: int
    subjects: int
    shape: tuple[int, ...]


LAST: list[Profile] = []
"""The profiles measured in this process (for the plot)."""


def _subjects(resources: Any, workdir: Path, n: int, shape: tuple[int, ...]) -> dict[str, Any]:
    bvals, bvecs = bvals_bvecs(shape[3])
    subjects = {}
    for index in range(n):
        dwi = resources.Dwi(
            resources.InMemoryVolumeResource(
                phantom_dwi_array(shape, seed=index), np.diag([2.0, 2.0, 2.0, 1.0])
            ),
            resources.InMemoryBvalResource(bvals),
            resources.InMemoryBvecResource(bvecs),
        )
        subjects[f"sub-{index:02d}"] = {"dwi": dwi.save(workdir / "inputs" / f"{index}", "dwi")}
    return subjects


@case("profile-dti")
def profile_dti(sizes: Sizes, workdir: Path) -> Section:
    """Time split of a cold run of the DTI workflow over many subjects, and its cached rerun."""
    import importlib

    _peers.ours()
    try:
        adapter = importlib.import_module("kwneuro_pydra.pydra")
        dti = importlib.import_module("kwneuro_pydra.workflows.dti")
    except ImportError as exc:
        raise _peers.Unavailable(f"the Pydra adapter is not importable ({exc!r})") from exc
    resources = importlib.import_module("kwneuro_pydra.resources")
    smoke = sizes is SMOKE
    n, shape = SUBJECTS[smoke], SHAPES[smoke]
    subjects = _subjects(resources, workdir, n, shape)
    settle(subjects[f"sub-{n - 1:02d}"]["dwi"].volume.path, sizes.settle_s)
    timers_dir = workdir / "timers"
    timers_dir.mkdir()
    root = workdir / "cache"
    steps = {"fit": dti.estimate_dti, "mask": dti.brain_mask}

    def run() -> None:
        results = adapter.run_subjects(
            dti.dti_pipeline, subjects, root, worker="cf", n_procs=2, progress=False
        )
        failed = [str(r.failure) for r in results.values() if not r.ok]
        if failed:
            raise RuntimeError(f"profile run failed: {failed[0]}")

    with _timed(timers_dir, steps) as timers:
        cpu, start = time.process_time(), time.perf_counter()
        run()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        timers.save()
        start = time.perf_counter()
        run()
        rerun_wall = time.perf_counter() - start
    profile = _collect(timers_dir, cpu, wall, rerun_wall, n, shape)
    LAST.append(profile)
    return _section(profile)


def _collect(
    directory: Path, cpu: float, wall: float, rerun_wall: float, n: int, shape: tuple[int, ...]
) -> Profile:
    """Sum the processes' accounts (the submitter's remainder is its CPU time)."""
    seconds = dict.fromkeys(CATEGORIES, 0.0)
    decompressions = 0
    own = f"{os.getpid()}.json"
    records = sorted(directory.glob("*.json"))
    for path in records:
        record = json.loads(path.read_text())
        for name, value in record["seconds"].items():
            seconds[name] += value
        decompressions += record["calls"].get("gunzip", 0)
        if path.name == own:  # the submitter: CPU time not in a category is Pydra's
            seconds["Pydra (submitter)"] += max(0.0, cpu - sum(record["seconds"].values()))
    return Profile(seconds, wall, rerun_wall, decompressions, len(records), n, shape)


def _section(profile: Profile) -> Section:
    total = sum(profile.seconds.values())
    shape = " x ".join(map(str, profile.shape))
    section = Section(
        "profile-dti",
        f"where the time of run_subjects(dti_pipeline, worker='cf') goes: "
        f"{profile.subjects} subjects of {shape}",
    )
    for name in CATEGORIES:
        value = profile.seconds[name]
        share = value / total if total else 0.0
        note = f"{share:.1%} of the process-seconds"
        if name == "reports":
            note = "not built yet: a slot"
        section.rows.append(Row(name, _one(value), note=note))
    section.rows.append(Row("all categories (process-seconds)", _one(total),
                            note=f"{profile.processes} processes"))  # fmt: skip
    ends = f"{profile.subjects} subjects end to end"
    section.rows.append(Row("cold run, wall", _one(profile.wall), note=ends))
    section.rows.append(Row("fully cached rerun, wall", _one(profile.rerun_wall),
                            limit="cold run, wall", note="the same call again"))  # fmt: skip
    overhead = total - sum(profile.seconds[c] for c in (*SCIENCE, *IO))
    section.notes += [
        f"neither science nor NIfTI I/O: {overhead / total:.1%} of the process-seconds"
        if total
        else "nothing measured",
        f"cold run / cached rerun: {profile.wall / profile.rerun_wall:.0f}x",
        f"{profile.decompressions} whole-file decompressions (each subject's DWI is read by "
        "brain_mask and estimate_dti, its mask by estimate_dti; a worker reading a DWI again "
        "finds it in its memo)",
    ]
    return section


def _one(seconds: float) -> Timing:
    return Timing.from_samples([seconds * 1e9])


def write_profile_plot(path: Path, profiles: Sequence[tuple[str, Profile]] = ()) -> str:
    """Draw profiles as stacked bars of shares, one per profile; return a note.

    Args:
        path: The PNG to write.
        profiles: Labelled profiles; default: the one this process measured last.
    """
    if not profiles and LAST:
        profiles = [("cold run", LAST[-1])]
    if not profiles:
        return "profile plot not written: the profile case did not run"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"profile plot not written: matplotlib is not installed ({path})"
    colours = plt.get_cmap("tab10").colors
    fig, axis = plt.subplots(figsize=(9.5, 1.5 + 0.9 * len(profiles)))
    for row, (_, profile) in enumerate(profiles):
        total = sum(profile.seconds.values())
        left = 0.0
        for index, name in enumerate(CATEGORIES):
            share = 100 * profile.seconds[name] / total
            axis.barh(row, share, left=left, color=colours[index % 10],
                      label=name if row == 0 else None)  # fmt: skip
            if share > 4:
                axis.text(left + share / 2, row, f"{share:.0f}%", ha="center", va="center",
                          fontsize=9, color="white")  # fmt: skip
            left += share
    axis.set_yticks(
        range(len(profiles)),
        [
            f"{label}\n{sum(p.seconds.values()):.0f} process-s, {p.wall:.0f} s wall,\n"
            f"cached rerun {p.rerun_wall:.2f} s"
            for label, p in profiles
        ],
        fontsize=8,
    )
    axis.invert_yaxis()
    axis.set_xlim(0, 100)
    axis.set_xlabel("share of the process-seconds (2 cf workers + the submitter), %")
    first = profiles[0][1]
    shape = " x ".join(map(str, first.shape))
    axis.set_title(
        f"run_subjects(dti_pipeline, worker='cf'): {first.subjects} subjects of {shape}, cold",
        fontsize=10,
    )
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.4), ncol=5, fontsize=8,
                frameon=False)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f"profile plot written: {path}"

"""The BIDS app: indexing a dataset, a fully cached run end to end, the report's figures.

Peers: pybids' ``BIDSLayout`` for indexing (left out when pybids is not installed); the other
cases are ours alone, against the targets of the issue (index 1,000 subjects < 2 s; a cached
run of 100 subjects < 5 s; figures < 1 s per subject).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from benchmarks._common import OURS, Sizes, case
from benchmarks._harness import Row, Section, measure

__all__ = ["bids_cached_run", "bids_index", "report_figures"]


def _empty_tree(root: Path, subjects: int) -> Path:
    """A BIDS tree of empty files: a DWI (+ JSON) per series, a third of the subjects with
    two sessions, half with their own b-table (the rest inherit the top-level one), a T1."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"})
    )
    (root / "dwi.bval").write_text("0\n")
    (root / "dwi.bvec").write_text("0\n0\n0\n")
    for number in range(subjects):
        subject = f"sub-{number:04d}"
        for session in ("ses-1", "ses-2") if number % 3 == 0 else (None,):
            stem = "_".join(filter(None, (subject, session)))
            folder = root / subject / (session or "")
            (folder / "dwi").mkdir(parents=True)
            (folder / "anat").mkdir()
            (folder / "anat" / f"{stem}_T1w.nii.gz").write_bytes(b"")
            (folder / "dwi" / f"{stem}_dwi.json").write_text("{}")
            for ext in (".nii.gz",) + ((".bval", ".bvec") if number % 2 else ()):
                (folder / "dwi" / f"{stem}_dwi{ext}").write_bytes(b"")
    return root


@case("bids-index")
def bids_index(sizes: Sizes, workdir: Path) -> Section:
    """Discovery of every DWI series (with b-tables by inheritance) of a large dataset."""
    from kwneuro_pydra.bids import discover

    subjects = sizes.scaling[-1]
    root = _empty_tree(workdir / "ds", subjects)
    series = len(discover(root))
    section = Section("bids-index", f"index a {subjects}-subject BIDS tree ({series} DWI series)")
    section.rows.append(
        Row(
            f"{OURS}: discover (bids2table)",
            measure(lambda: discover(root), repeat=sizes.heavy_repeat),
            note="entities, sessions, .bval/.bvec by inheritance",
        )
    )
    try:
        import bids  # type: ignore[import-untyped]
    except ImportError:
        section.notes.append("left out: pybids is not installed")
        return section

    def pybids() -> None:
        bids.BIDSLayout(str(root), validate=False).get(suffix="dwi", extension=".nii.gz")

    label = "pybids: BIDSLayout + get"
    section.rows.append(
        Row(
            label,
            measure(pybids, repeat=1, warmup=0),
            note="its SQLite index; get_bval per series not in",
        )
    )
    section.rows[0] = Row(
        section.rows[0].label, section.rows[0].timing, peers=(label,), note=section.rows[0].note
    )
    return section


def _quiet_run(*args: str) -> None:
    """``kwneuro-pydra run ARGS -q`` in this process, its output swallowed.

    Raises:
        RuntimeError: The command failed (with the end of what it wrote on stderr).
    """
    from kwneuro_pydra.cli import main

    errors = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
        status = main(["run", *args, "-q"])
    if status != 0:
        raise RuntimeError(f"kwneuro-pydra run exited {status}: {errors.getvalue()[-2000:]}")


@case("bids-cached-run")
def bids_cached_run(sizes: Sizes, workdir: Path) -> Section:
    """``kwneuro-pydra run`` when every step is cached: discovery, lookups, links, reports."""
    from kwneuro_pydra.workflows.demo import write_demo_dataset

    subjects = sizes.subjects
    bids_dir = write_demo_dataset(workdir / "bids", subjects=subjects, shape=(16, 16, 10))
    out = workdir / "out"
    args = (
        str(bids_dir),
        str(out),
        "participant",
        "--worker",
        "debug",
        "--mask-median-radius",
        "1",
        "--mask-numpass",
        "1",
    )
    _quiet_run(*args)
    series = len(list(out.glob("sub-*/**/*fa_dwimap.nii.gz")))
    section = Section(
        "bids-cached-run", f"fully cached run of {subjects} subjects ({series} DWI series)"
    )
    section.rows.append(
        Row(
            f"{OURS}: kwneuro-pydra run (all cached)",
            measure(lambda: _quiet_run(*args), repeat=sizes.heavy_repeat),
            note="target < 5 s for 100 subjects",
        )
    )
    return section


@case("bids-cold-run")
def bids_cold_run(sizes: Sizes, workdir: Path) -> Section:
    """``kwneuro-pydra run`` with ``cf`` on realistic-size subjects, nothing cached, then again."""
    from kwneuro_pydra.workflows.demo import write_demo_dataset

    subjects = min(sizes.subjects, 20)
    shape = sizes.array_shape[:3] if sizes.array_shape[0] >= 16 else (16, 16, 10)
    volumes = sizes.array_shape[3] if len(sizes.array_shape) > 3 else 65
    bids_dir = write_demo_dataset(
        workdir / "bids-cold",
        subjects=subjects,
        shape=shape,
        b0_volumes=5,
        directions=max(volumes - 5, 6),
    )
    out = workdir / "out-cold"
    args = (str(bids_dir), str(out), "participant", "--worker", "cf", "--n-procs", "2")
    series = len(list(bids_dir.glob("sub-*/**/*_dwi.nii.gz")))
    section = Section(
        "bids-cold-run",
        f"kwneuro-pydra run, cf with 2 processes: {subjects} subjects ({series} DWI series of "
        f"{shape} x {max(volumes - 5, 6) + 5} float32), dipy's mask defaults",
    )

    def run() -> None:
        _quiet_run(*args)

    cold = measure(run, repeat=1, warmup=0)
    section.rows.append(Row(f"{OURS}: cold run", cold, note="every step computed"))
    cached = measure(run, repeat=sizes.heavy_repeat)
    section.rows.append(Row(f"{OURS}: the same run again", cached, note="every step reused"))
    return section


@case("report-figures")
def report_figures(sizes: Sizes, workdir: Path) -> Section:
    """The five figures of one subject's report, rendered (matplotlib warm), uncached."""
    from kwneuro_pydra.report import b0_mosaic, gradient_sphere, map_mosaic
    from kwneuro_pydra.workflows.phantom import make_phantom

    shape = sizes.array_shape[:3]
    dwi = make_phantom(shape, seed=1).dwi(2.0)
    b0 = dwi.volume.get_array()[..., 0]
    from kwneuro_pydra.resources import InMemoryVolumeResource

    affine = dwi.volume.get_affine()
    mask = InMemoryVolumeResource((b0 > np.percentile(b0, 50)).astype(np.uint8), affine)
    b0_volume = InMemoryVolumeResource(b0, affine)
    rgb = InMemoryVolumeResource(np.random.default_rng(0).random((*shape, 3), np.float32), affine)

    def render() -> None:
        b0_mosaic(b0_volume, mask)
        map_mosaic(b0_volume, mask)
        map_mosaic(rgb, mask)
        map_mosaic(b0_volume, mask, high=3e-3, colormap="viridis")
        gradient_sphere(dwi)

    section = Section("report-figures", f"one subject's five report figures, {shape} volumes")
    section.rows.append(
        Row(
            f"{OURS}: 4 mosaics + gradient sphere",
            measure(render, repeat=sizes.repeat),
            note="target < 1 s per subject; add matplotlib's import to a process's first",
        )
    )
    return section

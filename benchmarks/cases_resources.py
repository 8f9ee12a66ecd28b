"""Cases of the imaging resources: a DWI's fingerprint, file-backed inputs, NIfTI files and
cache entries.

Participants: ours (`kwneuro_pydra.resources`), nibabel's own ``.nii.gz`` writer and reader,
upstream kwneuro 1.0's cache module given what its own resources look like to it (dataclasses
of paths: it hashes the path strings), and ``joblib`` on the in-memory equivalent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import joblib  # type: ignore[import-untyped]
import nibabel as nib
import numpy as np

from benchmarks import _peers
from benchmarks._common import (
    JOBLIB,
    OURS,
    UPSTREAM,
    Cached,
    Sizes,
    apis,
    bvals_bvecs,
    case,
    evict_tree,
    mb,
    npy_spec,
    phantom_dwi_array,
    tree_bytes,
)
from benchmarks._harness import Row, Section, Timing, file_read, measure, memory_read
from benchmarks.cases_core import fingerprint_rows, hit_and_miss

NIBABEL = "nibabel .nii.gz"


@dataclasses.dataclass(frozen=True)
class PathDwi:
    """A DWI as upstream kwneuro 1.0's cache sees its own file-backed resources.

    Upstream's resources are dataclasses holding a `Path`; its fingerprint of a `Path` is the
    path string. So a hit costs almost nothing, and a changed file behind the same path is a
    stale hit.
    """

    volume: Path
    bval: Path
    bvec: Path


def in_memory_dwi(resources: ModuleType, shape: tuple[int, ...]) -> Any:
    """A `Dwi` of in-memory resources over a phantom of *shape* (144 MB at full size)."""
    bvals, bvecs = bvals_bvecs(shape[3])
    return resources.Dwi(
        resources.InMemoryVolumeResource(phantom_dwi_array(shape), np.diag([2.0, 2.0, 2.0, 1.0])),
        resources.InMemoryBvalResource(bvals),
        resources.InMemoryBvecResource(bvecs),
    )


def _dwi_summary(dwi: Any, scale: float) -> np.ndarray:
    """A step taking a DWI and returning a tiny result (its own cost is negligible)."""
    return np.full(4, scale)


def _producer(resources: ModuleType, value: Any) -> Any:
    """A step returning *value*, annotated with its resource type (so the protocol stores it)."""

    def make_dwi(seed: int) -> Any:
        return value

    make_dwi.__annotations__ = {"seed": int, "return": resources.Dwi}
    return make_dwi


def _section_with_ours() -> tuple[Section, dict[str, Any]]:
    """A new section and the participants' APIs; `Unavailable` when ours cannot load."""
    section = Section("", "")
    found = apis(section)
    if OURS not in found:
        raise _peers.Unavailable(section.notes[0])
    return section, found


@case("fingerprint-dwi")
def fingerprint_dwi(sizes: Sizes, workdir: Path) -> Section:
    """Fingerprint of an in-memory DWI (volume, b-values, b-vectors) against a read pass."""
    section, found = _section_with_ours()
    dwi = in_memory_dwi(_resources(), sizes.array_shape)
    arr = dwi.volume.get_array()
    section.name = "fingerprint-dwi"
    section.title = (
        f"fingerprint of a {mb(arr.nbytes)} in-memory Dwi {arr.shape} (float32, F order)"
    )
    limit = "limit: arr.sum()"
    section.rows.append(Row(limit, memory_read(arr, repeat=sizes.repeat), note="one read pass"))
    rows: list[tuple[str, Any, str]] = [(OURS, found[OURS].fingerprint, "fingerprint(dwi)")]
    if UPSTREAM in found:
        rows.append(
            (
                UPSTREAM,
                found[UPSTREAM]._compute_fingerprint,
                "its dataclass walk: sha256 of tobytes() (an F-order copy)",
            )
        )
    rows.append((JOBLIB, joblib.hash, "joblib.hash(dwi): pickle + md5"))
    fingerprint_rows(section, rows, dwi, limit=limit, repeat=sizes.repeat)
    return section


@case("hit-file-backed")
def hit_file_backed(sizes: Sizes, workdir: Path) -> Section:
    """Hit and miss latency of a step whose input is a file-backed DWI from a cache entry."""
    section, found = _section_with_ours()
    ours, resources = found[OURS], _resources()
    memory_dwi = in_memory_dwi(resources, sizes.array_shape)
    nbytes = memory_dwi.volume.get_array().nbytes
    section.name = "hit-file-backed"
    section.title = (
        f"cache hit and miss of a step taking a {mb(nbytes)} DWI loaded from a cache entry"
    )
    producer_dir = workdir / "producer"
    with ours.Cache(producer_dir):
        dwi = ours.cacheable(_producer(resources, memory_dwi))(0)  # file-backed, .nii.gz
    paths = (Path(dwi.volume.path), Path(dwi.bval.path), Path(dwi.bvec.path))
    reopened = resources.Dwi(
        resources.NiftiVolumeResource(paths[0]),
        resources.FslBvalResource(paths[1]),
        resources.FslBvecResource(paths[2]),
    )
    result = workdir / "out.npy"
    np.save(result, _dwi_summary(dwi, 2.0))
    load = measure(lambda: np.load(result), repeat=sizes.repeat, calls=sizes.hit_calls)
    limit = Row("limit: np.load", load, note="loading the stored result alone")

    def eager(api: ModuleType, directory: str) -> Cached:
        return api.cacheable(npy_spec(api))(_dwi_summary), api.Cache(workdir / directory)

    participants: dict[str, tuple[Cached, tuple[Any, ...], Any]] = {
        OURS: (eager(ours, "ours"), (dwi, 2.0), lambda i: (dwi, 3.0 + i)),
        f"{OURS}, files reopened": (
            eager(ours, "ours-reopened"),
            (reopened, 2.0),
            lambda i: (reopened, 3.0 + i),
        ),
    }
    notes = {
        OURS: "the Dwi the producer step returned (file-backed, .nii.gz)",
        f"{OURS}, files reopened": "new resources over the same files: the stat memo",
        JOBLIB: "on the in-memory equivalent (pickle + md5 of 144 MB)",
        UPSTREAM: "a dataclass of the 3 paths: path strings hashed, content never read",
    }
    if UPSTREAM in found:
        strings = PathDwi(*paths)
        participants[UPSTREAM] = (
            eager(found[UPSTREAM], "upstream"),
            (strings, 2.0),
            lambda i: (strings, 3.0 + i),
        )
    memory = _peers.joblib_memory(workdir / "joblib").cache(_dwi_summary)
    participants[JOBLIB] = (
        (memory, contextlib.nullcontext()),
        (memory_dwi, 2.0),
        lambda i: (memory_dwi, 3.0 + i),
    )
    hit_and_miss(
        section,
        participants,
        limit,
        sizes,
        hit_calls=max(1, sizes.hit_calls // 20),
        miss_calls=1,
        notes=notes,
    )
    volume_bytes = Path(dwi.volume.path).stat().st_size
    buffer_read = file_read(lambda: Path(dwi.volume.path), volume_bytes, repeat=sizes.repeat)
    section.rows.append(
        Row(
            "for scale: read the .nii.gz, warm",
            buffer_read,
            limit=limit.label,
            note=f"{mb(volume_bytes)}: what a content check reads",
        )
    )
    return section


@case("dwi-entry-storage")
def dwi_entry_storage(sizes: Sizes, workdir: Path) -> Section:
    """Save and load time and size on disk of a DWI cache entry: .nii.gz versus .nii."""
    section, found = _section_with_ours()
    ours, resources = found[OURS], _resources()
    memory_dwi = in_memory_dwi(resources, sizes.array_shape)
    arr = memory_dwi.volume.get_array()
    section.name = "dwi-entry-storage"
    section.title = f"storing and loading a {mb(arr.nbytes)} DWI cache entry: .nii.gz vs .nii"
    repeat = sizes.heavy_repeat
    raw = workdir / "raw.npy"
    write = measure(lambda: np.save(raw, arr), repeat=repeat)
    section.rows.append(Row("limit: np.save", write, note="the raw array to a file (page cache)"))
    read = measure(lambda: np.load(raw).sum(), repeat=repeat)
    section.rows.append(Row("limit: np.load + sum", read, note="read back, warm, one pass"))
    names = itertools.count()
    sizes_row: list[Row] = []
    for label, compression in (("ours .nii.gz", True), ("ours .nii", False)):
        producer = ours.cacheable(_producer(resources, memory_dwi))
        current: list[Path] = []

        def fresh_dir(current: list[Path] = current) -> None:
            current[:] = [workdir / f"entry-{next(names)}"]

        def save(
            current: list[Path] = current,
            compression: bool = compression,
            producer: Any = producer,
        ) -> None:
            with ours.Cache(current[0], nifti_compression=compression):
                producer(0)

        timing = measure(save, repeat=repeat, setup=fresh_dir)
        section.rows.append(
            Row(
                f"{label}: save (miss)",
                timing,
                limit="limit: np.save",
                peers=(f"{NIBABEL}: save", f"{JOBLIB}: save (miss)"),
                note="the whole miss: fingerprint, write, publish",
            )
        )
        entry_dir = current[0]

        def load(
            entry_dir: Path = entry_dir, compression: bool = compression, producer: Any = producer
        ) -> float:
            with ours.Cache(entry_dir, nifti_compression=compression):
                return float(producer(0).volume.get_array().sum())

        warm = measure(load, repeat=repeat)
        section.rows.append(
            Row(
                f"{label}: load, warm",
                warm,
                limit="limit: np.load + sum",
                peers=(f"{NIBABEL}: load, warm", f"{JOBLIB}: load, warm"),
                note="hit + get_array() + one pass (sum); decoded once per process, then the memo",
            )
        )
        with _no_volume_memo():
            decoded = measure(load, repeat=repeat)
            cold = measure(load, repeat=repeat, setup=functools.partial(evict_tree, entry_dir))
        section.rows.append(
            Row(
                f"{label}: load, decoded",
                decoded,
                limit="limit: np.load + sum",
                peers=(f"{NIBABEL}: load, warm", f"{JOBLIB}: load, warm"),
                note="the same, decoded every time (memo off)",
            )
        )
        section.rows.append(
            Row(
                f"{label}: load, cold",
                cold,
                limit="limit: np.load + sum",
                note="the same, entry files evicted (memo off)",
            )
        )
        size = tree_bytes(entry_dir)
        sizes_row.append(
            Row(
                f"{label}: size on disk",
                Timing.from_samples([size]),
                unit="B",
                note=f"{size / arr.nbytes:.2f} of the array's bytes",
            )
        )
    _nibabel_storage(section, arr, workdir, repeat, sizes_row)
    _joblib_storage(section, memory_dwi, workdir, repeat, sizes_row)
    section.rows.extend(sizes_row)
    section.notes.append(
        "phantom DWI: a head-shaped ellipsoid with integer-valued noise and a zero background, "
        "so it compresses like a scan does (random floats would not)"
    )
    return section


def _nibabel_storage(
    section: Section, arr: np.ndarray, workdir: Path, repeat: int, sizes_row: list[Row]
) -> None:
    """nibabel writing and reading the DWI's volume as .nii.gz itself, for comparison."""
    path = workdir / "nibabel.nii.gz"
    image = nib.Nifti1Image(arr, np.diag([2.0, 2.0, 2.0, 1.0]))
    save = measure(lambda: image.to_filename(path), repeat=repeat)
    section.rows.append(
        Row(f"{NIBABEL}: save", save, limit="limit: np.save", note="to_filename, the volume alone")
    )
    load = measure(lambda: np.asanyarray(nib.load(path).dataobj).sum(), repeat=repeat)
    section.rows.append(
        Row(
            f"{NIBABEL}: load, warm",
            load,
            limit="limit: np.load + sum",
            note="np.asanyarray(load().dataobj) + one pass",
        )
    )
    sizes_row.append(
        Row(
            f"{NIBABEL}: size on disk",
            Timing.from_samples([path.stat().st_size]),
            unit="B",
            note="the volume alone",
        )
    )


def _joblib_storage(
    section: Section, memory_dwi: Any, workdir: Path, repeat: int, sizes_row: list[Row]
) -> None:
    """joblib.Memory storing the in-memory DWI (pickled arrays), for comparison."""
    names = itertools.count()
    current: list[Path] = []

    def fresh_dir() -> None:
        current[:] = [workdir / f"joblib-{next(names)}"]

    def make_dwi(seed: int) -> Any:
        return memory_dwi

    def save() -> None:
        _peers.joblib_memory(current[0]).cache(make_dwi)(0)

    timing = measure(save, repeat=repeat, setup=fresh_dir)
    section.rows.append(
        Row(
            f"{JOBLIB}: save (miss)",
            timing,
            limit="limit: np.save",
            note="pickle of the in-memory Dwi",
        )
    )
    directory = current[0]
    cached = _peers.joblib_memory(directory).cache(make_dwi)

    def load() -> float:
        return float(cached(0).volume.get_array().sum())

    section.rows.append(
        Row(
            f"{JOBLIB}: load, warm",
            measure(load, repeat=repeat),
            limit="limit: np.load + sum",
            note="unpickle + one pass",
        )
    )
    size = tree_bytes(directory)
    sizes_row.append(Row(f"{JOBLIB}: size on disk", Timing.from_samples([size]), unit="B"))


@contextlib.contextmanager
def _no_volume_memo() -> Iterator[None]:
    """Every read decodes its file (the decoded-volume memo is off)."""
    name = "KWNEURO_PYDRA_VOLUME_MEMO_MB"
    old = os.environ.get(name)
    os.environ[name] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


@case("nifti-gz-io")
def nifti_gz_io(sizes: Sizes, workdir: Path) -> Section:
    """Save and load a DWI volume as .nii.gz: ours (ISA-L), nibabel, joblib (zlib level 1)."""
    section, _ = _section_with_ours()
    resources = _resources()
    gzip = importlib.import_module("kwneuro_pydra.resources._gzip")
    arr = phantom_dwi_array(sizes.array_shape)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    volume = resources.InMemoryVolumeResource(arr, affine)
    section.name = "nifti-gz-io"
    section.title = f"a {mb(arr.nbytes)} DWI volume as .nii.gz: ours ({gzip.BACKEND}) vs nibabel"
    repeat = sizes.heavy_repeat
    raw = workdir / "raw.npy"
    section.rows.append(
        Row(
            "limit: np.save",
            measure(lambda: np.save(raw, arr), repeat=repeat),
            note="the raw array to a file (page cache)",
        )
    )
    section.rows.append(
        Row(
            "limit: np.load + sum",
            measure(lambda: np.load(raw).sum(), repeat=repeat),
            note="read back, warm, one pass",
        )
    )
    ours, theirs, dumped = workdir / "ours.nii.gz", workdir / "nibabel.nii.gz", workdir / "a.pkl"
    image = nib.Nifti1Image(arr, affine)
    save_peers = ("nibabel: to_filename", "joblib.dump, zlib 1")
    section.rows.append(
        Row(
            "ours: NiftiVolumeResource.save",
            measure(lambda: resources.NiftiVolumeResource.save(volume, ours), repeat=repeat),
            limit="limit: np.save",
            peers=save_peers,
            note=f"{gzip.BACKEND}, up to {gzip.MAX_THREADS} threads",
        )
    )
    threads = gzip.MAX_THREADS
    gzip.MAX_THREADS = 1
    try:
        one = measure(lambda: resources.NiftiVolumeResource.save(volume, ours), repeat=repeat)
    finally:
        gzip.MAX_THREADS = threads
    section.rows.append(
        Row(
            "ours: save, one thread",
            one,
            limit="limit: np.save",
            peers=save_peers,
            note="the same bytes",
        )
    )
    section.rows.append(
        Row(
            "nibabel: to_filename",
            measure(lambda: image.to_filename(theirs), repeat=repeat),
            limit="limit: np.save",
            note="zlib level 1",
        )
    )
    dump = measure(lambda: joblib.dump(arr, dumped, compress=("zlib", 1)), repeat=repeat)
    section.rows.append(
        Row(
            "joblib.dump, zlib 1",
            dump,
            limit="limit: np.save",
            note="the array pickled, compressed",
        )
    )
    load_peers = ("nibabel: dataobj + sum", "nibabel: get_fdata + sum", "joblib.load + sum")
    with _no_volume_memo():
        load = measure(
            lambda: resources.NiftiVolumeResource(ours).get_array().sum(), repeat=repeat
        )
    section.rows.append(
        Row(
            "ours: get_array + sum",
            load,
            limit="limit: np.load + sum",
            peers=load_peers,
            note="decoded every time (memo off)",
        )
    )
    section.rows.append(
        Row(
            "nibabel: dataobj + sum",
            measure(lambda: np.asanyarray(nib.load(theirs).dataobj).sum(), repeat=repeat),
            limit="limit: np.load + sum",
            note="its stored dtype",
        )
    )
    section.rows.append(
        Row(
            "nibabel: get_fdata + sum",
            measure(lambda: nib.load(theirs).get_fdata().sum(), repeat=repeat),
            limit="limit: np.load + sum",
            note="float64",
        )
    )
    section.rows.append(
        Row(
            "joblib.load + sum",
            measure(lambda: joblib.load(dumped).sum(), repeat=repeat),
            limit="limit: np.load + sum",
        )
    )
    for label, path in (("ours", ours), ("nibabel", theirs), ("joblib", dumped)):
        size = path.stat().st_size
        share = f"{size / theirs.stat().st_size:.3f} of nibabel's"
        section.rows.append(
            Row(f"{label}: size on disk", Timing.from_samples([size]), unit="B", note=share)
        )
    section.notes.append(
        "ours and nibabel's files hold the same NIfTI bytes once decompressed (tested)"
    )
    return section


def _resources() -> ModuleType:
    """Our `kwneuro_pydra.resources` module (imported after `_peers.ours` found the package)."""
    return importlib.import_module("kwneuro_pydra.resources")

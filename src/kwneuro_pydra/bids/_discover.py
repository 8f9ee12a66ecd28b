"""Find every DWI series of a BIDS dataset, with its b-values and b-vectors, via bids2table."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from kwneuro_pydra._files import kind
from kwneuro_pydra.resources import Dwi, FslBvalResource, FslBvecResource, NiftiVolumeResource

__all__ = ["BidsError", "DwiSeries", "SeriesError", "discover", "participants_of"]

_NIFTI = (".nii.gz", ".nii")


class BidsError(ValueError):
    """The dataset cannot be used at all (missing, not BIDS, or an unknown label asked for)."""


class SeriesError(ValueError):
    """One DWI series cannot be loaded (missing b-table, wrong shape, unreadable file)."""


@attrs.frozen
class DwiSeries:
    """One DWI series of a BIDS dataset: a unit of work (subject x session x acq x run ...).

    Attributes:
        root: The dataset root.
        entities: The series' BIDS entities as bids2table parses them (``sub``, ``ses``,
            ``acq``, ``run`` ...), without ``datatype``, ``suffix`` and ``ext``.
        nifti: The DWI image.
        bval: Its b-values file found by BIDS inheritance, or None.
        bvec: Its b-vectors file found by BIDS inheritance, or None.
        problem: Why it cannot be used although its image exists (`load` raises it), e.g.
            its subject holds a file name bids2table cannot index.
    """

    root: Path
    entities: dict[str, str]
    nifti: Path
    bval: Path | None
    bvec: Path | None
    problem: str | None = None

    @property
    def subject(self) -> str:
        """The subject label (without ``sub-``)."""
        return self.entities["sub"]

    @property
    def session(self) -> str | None:
        """The session label (without ``ses-``), or None."""
        return self.entities.get("ses")

    @property
    def name(self) -> str:
        r"""The source entities as they start the file name, e.g. ``sub-01_ses-2_run-1`` (bytes
        of the name that are not UTF-8 as ``\xff``).
        """
        return _shown(self.nifti.name.split("_dwi.nii")[0])

    @property
    def directory(self) -> Path:
        """The series' folder relative to the dataset root, e.g. ``sub-01/ses-2/dwi``."""
        return self.nifti.parent.relative_to(self.root)

    @property
    def source(self) -> str:
        r"""The DWI's path relative to the dataset root (bytes not UTF-8 as ``\xff``)."""
        return _shown(self.nifti.relative_to(self.root))

    def load(self) -> Dwi:
        """Return the series as a file-backed `Dwi` (reads headers and b-tables only).

        Raises:
            SeriesError: No b-values or b-vectors file applies to the series, or the files
                do not make a DWI (not 4-D, counts disagree, unreadable), or the series has
                a `problem`; the message names the file.
        """
        if self.problem is not None:
            raise SeriesError(self.problem)
        missing = [ext for ext, path in ((".bval", self.bval), (".bvec", self.bvec)) if not path]
        if missing:
            raise SeriesError(
                f"{self.source}: no {' or '.join(missing)} file applies to it "
                "(looked beside it and in its parent folders, by BIDS inheritance)"
            )
        assert self.bval is not None and self.bvec is not None
        try:
            return Dwi(
                NiftiVolumeResource(self.nifti),
                FslBvalResource(self.bval),
                FslBvecResource(self.bvec),
            )
        except (OSError, ValueError) as error:
            raise SeriesError(f"{self.source}: {error}") from error


def discover(
    bids_dir: str | Path,
    *,
    participants: Sequence[str] = (),
    sessions: Sequence[str] = (),
) -> list[DwiSeries]:
    """Index a BIDS dataset with bids2table and return its DWI series.

    Each DWI image (``*_dwi.nii[.gz]`` in a ``dwi`` folder) is one series; its ``.bval``
    and ``.bvec`` files are found by the BIDS inheritance principle (the nearest file whose
    entities are a subset of the image's, from its folder up to the dataset root).

    Args:
        bids_dir: The dataset root (holding ``dataset_description.json``).
        participants: Only these subject labels (with or without ``sub-``); all when empty.
        sessions: Only these session labels (with or without ``ses-``); all when empty.

    Returns:
        The series sorted by file path.

    Raises:
        BidsError: ``bids_dir`` does not exist or has no ``dataset_description.json``; a
            requested participant or session does not exist (the message lists those that do).
    """
    root = Path(bids_dir).absolute()
    if not root.is_dir():
        raise BidsError(f"BIDS_DIR {root} does not exist or is not a folder")
    description = root / "dataset_description.json"
    if not description.is_file():
        found = "it has no dataset_description.json"
        if description.exists():  # never opened: a FIFO would block
            found = f"its dataset_description.json is {kind(description.stat().st_mode)}"
        raise BidsError(f"BIDS_DIR {root} is not a BIDS dataset: {found}")
    rows, unindexed = _index(root)
    wanted_subjects = _labels(participants, "sub-")
    known = {r["sub"] for r in rows if r["sub"]} | set(participants_of(root))
    _check_known("participant", wanted_subjects, known)
    wanted_sessions = _labels(sessions, "ses-")
    _check_known("session", wanted_sessions, {r["ses"] for r in rows if r["ses"]})
    finder = _Finder(root)
    series = []
    for row in rows:
        if (
            (row["datatype"], row["suffix"]) != ("dwi", "dwi")
            or row["ext"] not in _NIFTI
            or (wanted_subjects and row["sub"] not in wanted_subjects)
            or (wanted_sessions and row["ses"] not in wanted_sessions)
        ):
            continue
        path = Path(row["root"]) / row["path"]
        entities = dict(finder.entities(path))
        bval, bvec = (
            finder.inherited(path, entities, ".bval"),
            finder.inherited(path, entities, ".bvec"),
        )
        for name in ("suffix", "ext"):
            entities.pop(name, None)
        series.append(DwiSeries(root, entities, path, bval, bvec))
    for subject, bad in unindexed.items():  # their series fail alone, the file named
        if wanted_subjects and subject not in wanted_subjects:
            continue
        problem = (
            f"{_shown(bad.relative_to(root))}: a file name of sub-{subject} that is not "
            "UTF-8, which bids2table cannot index: rename it"
        )
        for path in sorted(root.glob(f"sub-{subject}/**/dwi/*_dwi.nii*")):
            entities = dict(finder.entities(path))
            if wanted_sessions and entities.get("ses") not in wanted_sessions:
                continue
            for name in ("suffix", "ext"):
                entities.pop(name, None)
            series.append(DwiSeries(root, entities, path, None, None, problem=problem))
    return sorted(series, key=lambda s: s.nifti)


def _index(root: Path) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """bids2table's rows of the dataset; subjects it cannot index (a file name that is not
    UTF-8) are left out, each with such a file.
    """
    import bids2table  # type: ignore[import-untyped]

    columns = ["sub", "ses", "datatype", "suffix", "ext", "path", "root"]
    try:
        return bids2table.index_dataset(root).select(columns).to_pylist(), {}
    except UnicodeEncodeError:
        pass
    unindexed: dict[str, Path] = {}
    for folder in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        bad = next((p for p in folder.rglob("*") if not _is_utf8(p.name)), None)
        if bad is not None:
            unindexed[folder.name.removeprefix("sub-")] = bad
    keep = [
        p.name
        for p in root.glob("sub-*")
        if p.is_dir() and p.name.removeprefix("sub-") not in unindexed
    ]
    if not keep:
        return [], unindexed
    return bids2table.index_dataset(root, keep).select(columns).to_pylist(), unindexed


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(path: Path | str) -> str:
    r"""A path as text that can be printed: bytes that are not UTF-8 as ``\xff``."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def participants_of(bids_dir: str | Path) -> list[str]:
    """The subject labels of a dataset, with a DWI series or without.

    Args:
        bids_dir: The dataset root.

    Returns:
        The labels (without ``sub-``) of its ``sub-*`` folders and of the ``participant_id``
        column of its ``participants.tsv`` (when it can be read), sorted.
    """
    root = Path(bids_dir)
    labels = {p.name.removeprefix("sub-") for p in root.glob("sub-*") if p.is_dir()}
    try:
        lines = (root / "participants.tsv").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    header = lines[0].split("\t") if lines else []
    if "participant_id" in header:
        column = header.index("participant_id")
        for line in lines[1:]:
            cells = line.split("\t")
            if len(cells) > column and cells[column].startswith("sub-"):
                labels.add(cells[column].removeprefix("sub-"))
    return sorted(labels)


def _labels(given: Iterable[str], prefix: str) -> set[str]:
    return {label.removeprefix(prefix) for label in given}


def _check_known(kind: str, wanted: set[str], known: set[str]) -> None:
    unknown = sorted(wanted - known)
    if unknown:
        have = ", ".join(sorted(known)) or "none"
        raise BidsError(f"no {kind} {', '.join(unknown)} in the dataset ({kind}s found: {have})")


class _Finder:
    """BIDS inheritance over one dataset, with its folders' listings and files' entities
    (parsed by bids2table) remembered for the duration of a discovery.
    """

    def __init__(self, root: Path) -> None:
        import bids2table

        self.root = root
        self.parse = bids2table.parse_bids_entities
        self.entities = functools.cache(self._entities)
        self.candidates = functools.cache(self._candidates)

    def _entities(self, path: Path) -> dict[str, str]:
        """A file's entities, without ``datatype`` (a folder's name, never inherited)."""
        found = {k: v for k, v in self.parse(path).items() if v is not None}
        found.pop("datatype", None)
        return found

    @staticmethod
    def _candidates(folder: Path, pattern: str) -> list[Path]:
        """A folder's files matching ``pattern``, most specific (longest name) first."""
        return sorted(folder.glob(pattern), key=lambda p: (-len(p.name), p.name))

    def inherited(self, image: Path, wanted: dict[str, str], ext: str) -> Path | None:
        """The file of extension ``ext`` that applies to ``image`` (of entities ``wanted``)
        by BIDS inheritance: the nearest, from its folder up to the root, whose entities
        are a subset of the image's; None when there is none.
        """
        folder = image.parent
        while True:
            for candidate in self.candidates(folder, f"*{wanted['suffix']}{ext}"):
                entities = dict(self.entities(candidate))
                entities.pop("ext", None)
                if all(wanted.get(k) == v for k, v in entities.items()):
                    return candidate
            if folder == self.root or folder.parent == folder:
                return None
            folder = folder.parent

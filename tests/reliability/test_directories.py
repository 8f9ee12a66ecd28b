"""Directories by content (issue 11, item 7).

A `Path` to a directory was keyed by its path string: adding or editing a file inside was a
stale hit. BIDS datasets and FreeSurfer subjects are directories; they are now fingerprinted
by their tree of relative names, entry types and file contents (see `_dirdigest` for links).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from kwneuro_pydra import Cache, _filedigest, cacheable, fingerprint
from tests._pydra_steps import json_spec

_calls: list[str] = []

LISTING = json_spec("listing")


@cacheable(LISTING)
def describe(dataset: Path) -> str:
    """What a BIDS app does first: read the tree (names, types and contents)."""
    _calls.append(str(dataset))
    lines = []
    for path in sorted(dataset.rglob("*")):
        kind = "dir" if path.is_dir() else path.read_text()
        lines.append(f"{path.relative_to(dataset)}: {kind}")
    return "\n".join(lines)


def _bids(root: Path) -> Path:
    (root / "sub-01" / "dwi").mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "demo", "BIDSVersion": "1.9.0"}')
    (root / "sub-01" / "dwi" / "sub-01_dwi.bval").write_text("0 1000 1000")
    (root / "sub-01" / "dwi" / "sub-01_dwi.bvec").write_text("0 1 0\n0 0 1\n0 0 0")
    return root


@pytest.fixture(autouse=True)
def _fresh() -> None:
    _calls.clear()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return _bids(tmp_path / "bids")


def _edits() -> dict[str, Any]:
    def add_subject(root: Path) -> None:
        (root / "sub-02").mkdir()
        (root / "sub-02" / "anat.txt").write_text("t1")

    def add_empty_directory(root: Path) -> None:
        (root / "sub-01" / "anat").mkdir()

    def edit_in_place_keeping_size_and_mtime(root: Path) -> None:
        path = root / "sub-01" / "dwi" / "sub-01_dwi.bval"
        st = path.stat()
        path.write_text("0 2000 1000")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    def rename_a_file(root: Path) -> None:
        dwi = root / "sub-01" / "dwi"
        (dwi / "sub-01_dwi.bval").rename(dwi / "sub-01_run-1_dwi.bval")

    def add_a_hidden_file(root: Path) -> None:
        (root / ".bidsignore").write_text("extra/")

    def replace_a_file_by_a_directory(root: Path) -> None:
        (root / "dataset_description.json").unlink()
        (root / "dataset_description.json").mkdir()

    return {
        f.__name__: f
        for f in (
            add_subject,
            add_empty_directory,
            rename_a_file,
            edit_in_place_keeping_size_and_mtime,
            add_a_hidden_file,
            replace_a_file_by_a_directory,
        )
    }


@pytest.mark.parametrize("edit", _edits())
def test_a_change_inside_a_directory_is_a_miss(
    dataset: Path, tmp_path: Path, edit: str, short_racy_window: float
) -> None:
    time.sleep(short_racy_window)  # settled: file digests come from the memo
    with Cache(tmp_path / "cache"):
        describe(dataset)
        as_str: Any = str(dataset)
        assert describe(dataset) == describe(as_str)  # hits, by content
        _edits()[edit](dataset)
        time.sleep(short_racy_window)
        changed = describe(dataset)
    assert _calls == [str(dataset), str(dataset)]
    assert changed == describe(dataset)  # what the step says outside any cache


def test_equal_trees_fingerprint_alike_wherever_they_are(dataset: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(dataset, tmp_path / "elsewhere" / "bids")
    assert fingerprint(copy) == fingerprint(dataset) is not None
    assert fingerprint(dataset) != fingerprint(dataset / "sub-01")
    empty_a, empty_b = tmp_path / "a", tmp_path / "b"
    empty_a.mkdir()
    empty_b.mkdir()
    assert fingerprint(empty_a) == fingerprint(empty_b) != fingerprint(tmp_path / "missing")
    (empty_b / "x").write_text("")
    assert fingerprint(empty_a) != fingerprint(empty_b)


def test_a_directory_is_never_confused_with_a_file_or_a_path_string(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("")
    paths = [tmp_path / "d", tmp_path / "f", tmp_path / "missing", str(tmp_path / "d")]
    assert len({fingerprint(p) for p in paths}) == 4


def test_links_count_as_what_they_point_to(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "t1.nii").write_text("voxels")
    (outside / "atlas").mkdir()
    (outside / "atlas" / "labels.txt").write_text("1 wm")
    linked, copied = tmp_path / "linked", tmp_path / "copied"
    linked.mkdir()
    (linked / "t1.nii").symlink_to(outside / "t1.nii")
    (linked / "atlas").symlink_to(outside / "atlas")
    (linked / "same.nii").symlink_to("t1.nii")  # relative, inside the tree
    shutil.copytree(linked, copied)  # follows links: real files and directories
    assert fingerprint(linked) == fingerprint(copied)
    before = fingerprint(linked)
    (outside / "atlas" / "labels.txt").write_text("1 gm")  # outside the tree, through a link
    assert fingerprint(linked) != before


def test_link_cycles_and_dangling_links_are_finite_and_keyed(tmp_path: Path) -> None:
    tree = tmp_path / "fs_subject"
    (tree / "surf").mkdir(parents=True)
    (tree / "surf" / "lh.white").write_text("mesh")
    (tree / "surf" / "loop").symlink_to("..")  # back to the root: a cycle
    (tree / "mri").symlink_to("missing-mri")  # dangling
    first = fingerprint(tree)
    assert first is not None
    (tree / "mri").unlink()
    (tree / "mri").symlink_to("other-missing")
    second = fingerprint(tree)
    assert second not in (None, first)
    (tree / "surf" / "loop").unlink()
    (tree / "surf" / "loop").symlink_to(".")  # a cycle one level up, not two
    assert fingerprint(tree) not in (None, first, second)


def test_a_tree_holding_a_fifo_is_not_fingerprinted_and_the_step_runs_uncached(
    dataset: Path, tmp_path: Path
) -> None:
    os.mkfifo(dataset / "sub-01" / "pipe")  # never opened: opening it would block
    assert fingerprint(dataset) is None
    with Cache(tmp_path / "cache"), pytest.warns(UserWarning, match="'dataset'.*cannot be fing"):
        describe_names(dataset)
    assert not (tmp_path / "cache" / "describe_names").exists()


@cacheable(LISTING)
def describe_names(dataset: Path) -> str:
    return "\n".join(sorted(p.name for p in dataset.rglob("*")))


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every file the digest memo reads."""
    paths: list[Any] = []
    real = _filedigest._hash_file

    def counting(*args: Any) -> Any:
        if Path(args[0]).is_file():  # (the root itself is tried as a file first: no read)
            paths.append(args[0])
        return real(*args)

    monkeypatch.setattr(_filedigest, "_hash_file", counting)
    return paths


def test_a_warm_tree_is_not_read_again(
    dataset: Path, short_racy_window: float, reads: list[Any]
) -> None:
    time.sleep(short_racy_window)
    first = fingerprint(dataset)
    reads.clear()
    assert fingerprint(dataset) == first
    assert reads == []
    (dataset / "sub-01" / "dwi" / "sub-01_dwi.bval").write_text("0 3000 3000")
    assert fingerprint(dataset) != first
    assert [Path(p).name for p in reads] == ["sub-01_dwi.bval"]


def test_a_step_writing_into_a_directory_it_takes_is_returned_but_not_stored(
    tmp_path: Path,
) -> None:
    @cacheable(LISTING)
    def export(out: Path) -> str:
        (out / "report.html").write_text("<html/>")
        return "exported"

    (tmp_path / "out").mkdir()
    with Cache(tmp_path / "cache") as cache:
        with pytest.warns(UserWarning, match="'out' changed while it ran"):
            assert export(tmp_path / "out") == "exported"
        assert cache.entries(export) == []


def test_verify_inputs_content_reads_every_file_of_a_tree_again(
    dataset: Path, tmp_path: Path, short_racy_window: float, reads: list[Any]
) -> None:
    time.sleep(short_racy_window)
    fingerprint(dataset)  # warm
    reads.clear()
    with Cache(tmp_path / "cache", verify_inputs="content"):
        describe_names(dataset)
        reads.clear()
        describe_names(dataset)  # a hit: the key alone reads the tree
    inside = sorted(Path(p).name for p in reads if dataset in Path(p).parents)
    assert inside == ["dataset_description.json", "sub-01_dwi.bval", "sub-01_dwi.bvec"]

"""A lab's shared, group-writable folders: a link planted by another member is never written
through, whatever file this process writes there next.

Two real users: the test (root) and user ``nobody`` (through ``setpriv``, without
capabilities), sharing the group of a setgid, group-writable folder, as a lab's cache root
and output folder are. ``nobody`` plants symbolic links to a file of root's at the names root
writes next; root's writes must refuse them (naming the link) and leave the file untouched.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import kwneuro_pydra.cache
from kwneuro_pydra import Cache
from kwneuro_pydra._files import UnsafeFileError, write_atomic
from kwneuro_pydra._lock import LOCK_FILE
from kwneuro_pydra.app._folders import writable_folder
from kwneuro_pydra.app._series import RECORD
from kwneuro_pydra.bids import place, write_json
from kwneuro_pydra.pydra._failures import ERRORS_DIR
from kwneuro_pydra.pydra._failures import record as record_failure
from kwneuro_pydra.report._html import write_reports
from tests.reliability import _steps
from tests.reliability._system import require_root, run_python
from tests.reliability.test_records import write_record

SECRET = b"root's own file: nobody may change it\n"


@pytest.fixture
def lab(shared_dir: Path) -> Iterator[tuple[Path, Path]]:
    """A setgid folder writable by the group ``nogroup`` (user nobody's), and a file of
    root's that only root can reach; this process runs with the umask a lab needs (002)."""
    require_root("shares a folder with user nobody")
    folder = shared_dir / "lab"
    folder.mkdir()
    shutil.chown(folder, group="nogroup")
    folder.chmod(0o2775)
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    victim = private / "victim"
    victim.write_bytes(SECRET)
    mask = os.umask(0o002)
    try:
        yield folder, victim
    finally:
        os.umask(mask)


def _plant(links: dict[Path, Path]) -> None:
    """Make the links as user nobody (their folders too), each pointing at its target."""
    code = "import json, os\n"
    for link, target in links.items():
        code += f"os.makedirs({str(link.parent)!r}, exist_ok=True)\n"
        code += f"os.symlink({str(target)!r}, {str(link)!r})\n"
    run_python(code + "print(json.dumps(True))", as_nobody=True)
    for link in links:
        assert link.is_symlink() and link.lstat().st_uid != 0, "nobody planted it"


def test_a_lock_file_planted_as_a_link_is_refused_and_the_result_returned(
    lab: tuple[Path, Path],
) -> None:
    folder, victim = lab
    lock = folder / "cache" / "rl_square" / LOCK_FILE
    _plant({lock: victim})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Cache(folder / "cache"):
            assert _steps.rl_square(7).tolist() == [49]
    assert victim.read_bytes() == SECRET, "the lock record was written through the link"
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert str(lock) in messages[0] and "symbolic link" in messages[0], messages[0]


def test_a_step_folder_planted_as_a_link_is_refused_and_the_result_returned(
    lab: tuple[Path, Path],
) -> None:
    folder, victim = lab
    step_dir = folder / "cache" / "rl_ramp"
    (victim.parent / LOCK_FILE).write_bytes(SECRET)  # root's own lock file, elsewhere
    _plant({step_dir: victim.parent})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Cache(folder / "cache"):
            assert _steps.rl_ramp(1, 3).tolist() == [1, 2, 3]
    assert (victim.parent / LOCK_FILE).read_bytes() == SECRET
    assert sorted(p.name for p in victim.parent.iterdir()) == [LOCK_FILE, victim.name]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert str(step_dir) in messages[0] and "symbolic link" in messages[0], messages[0]


def test_files_written_in_a_shared_folder_never_follow_a_planted_link(
    lab: tuple[Path, Path],
) -> None:
    folder, victim = lab
    output = folder / "output"
    sidecar = output / "sub-01" / "dwi" / "sub-01_dwi.json"
    image = output / "sub-01" / "dwi" / "sub-01_desc-brain_mask.nii.gz"
    record = folder / "work" / RECORD
    # The names the old code wrote aside: predictable from this process's pid.
    report_aside = output / f".report.html.{os.getpid()}.tmp"
    failure_aside = folder / "cache" / ERRORS_DIR / f".mean_b0.{os.getpid()}.tmp"
    _plant({sidecar: victim, image: victim, record: victim, report_aside: victim})
    _plant({failure_aside: victim})
    for target, write in [
        (sidecar, lambda: write_json(sidecar, {"Description": "a map"})),
        (image, lambda: place(folder / "source.nii.gz", image)),
        (record, lambda: write_record(record.parent, [])),
        (record, lambda: write_atomic(record, b"{}\n")),
    ]:
        if target == image:
            (folder / "source.nii.gz").write_bytes(b"new image")
        with pytest.raises(UnsafeFileError, match="symbolic link") as refused:
            write()
        assert refused.value.filename == str(target)
        assert target.is_symlink(), "the link is left for the user to see"
    write_reports(output, [], title="Report", summary="none")
    record_failure(folder / "cache", "mean_b0", ValueError("no b=0 volume"))
    assert (output / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE")
    assert victim.read_bytes() == SECRET, "a write went through a planted link"


def test_a_shared_root_with_a_umask_that_shuts_the_group_out_is_warned_about(
    lab: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = lab
    monkeypatch.setattr(kwneuro_pydra.cache, "_WARNED", set(), raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Cache(folder / "mine")  # umask 002: the group can use what it writes
    os.umask(0o022)
    with pytest.warns(UserWarning, match="umask is 022") as caught:
        Cache(folder / "sub-01")
    assert str(folder) in str(caught[0].message) and "umask 002" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Cache(folder / "sub-02")  # once per process and folder


_PLANTER = """
import json, os, time
step_dir = {step_dir!r}
planted, deadline = [], time.time() + 20
while time.time() < deadline and not planted:
    for name in os.listdir(step_dir) if os.path.isdir(step_dir) else []:
        if name.startswith(".tmp-"):
            try:
                os.symlink({victim!r}, os.path.join(step_dir, name, "out.npy"))
                planted.append(name)
            except OSError as error:
                planted.append(error.strerror)
    time.sleep(0.001)
print(json.dumps(planted))
"""


def test_an_entry_being_written_is_closed_to_the_group_until_it_is_complete(
    lab: tuple[Path, Path],
) -> None:
    folder, victim = lab
    step_dir = folder / "cache" / "rl_slow_save"
    with Cache(folder / "cache") as cache:
        _steps.rl_square(1)  # the cache's folders exist, as a lab's do
        step_dir.mkdir()
        code = _PLANTER.format(step_dir=str(step_dir), victim=str(victim))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            planter = pool.submit(run_python, code, as_nobody=True, timeout=60)
            time.sleep(0.5)  # nobody is watching the step's folder
            assert _steps.rl_slow_save(5).tolist() == [5]
            assert planter.result() == ["Permission denied"], "the link was refused"
    assert victim.read_bytes() == SECRET
    (entry,) = cache.entries("rl_slow_save")
    mode = entry.path.stat().st_mode
    assert mode & 0o7777 == 0o2775, f"shared with the group once complete: {oct(mode)}"


def test_the_write_probe_of_the_apps_folders_never_follows_a_planted_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe's name was the clock's nanoseconds: a member who guesses it (here: a clock
    that always reads 1) had the app touch a file of theirs choosing through a link."""
    output, victim = tmp_path / "output", tmp_path / "victim"
    output.mkdir()
    victim.write_bytes(SECRET)
    os.utime(victim, ns=(1, 1))
    (output / ".kwneuro-write-test-1").symlink_to(victim)
    monkeypatch.setattr(time, "time_ns", lambda: 1)
    assert writable_folder(output, "OUTPUT_DIR") == output
    assert victim.read_bytes() == SECRET and victim.stat().st_mtime_ns == 1
    assert (output / ".kwneuro-write-test-1").is_symlink(), "the link is not the probe"
    assert sorted(p.name for p in output.iterdir()) == [".kwneuro-write-test-1"]

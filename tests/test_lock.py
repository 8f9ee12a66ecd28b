"""Entry locks: one byte per key of the step's lock file, held per open file (threads too)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np

from kwneuro_pydra import Cache, CacheSpec, cacheable
from kwneuro_pydra._lock import LOCK_FILE, EntryLock, held, read_owners

KEY_A, KEY_B = "a" * 64, "b" * 64


def test_a_held_key_names_its_owner_and_release_blanks_it(tmp_path: Path) -> None:
    path = tmp_path / "step" / LOCK_FILE
    with EntryLock(path, KEY_A, "entry a"):
        assert held(path, KEY_A) and held(path) and not held(path, KEY_B)
        (owner,) = read_owners(path).values()
        assert owner["key"] == KEY_A and owner["pid"] == os.getpid()
        assert owner["host"] == socket.gethostname()
    assert not held(path) and read_owners(path) == {}
    assert path.is_file(), "the lock file stays: the next lock creates nothing"


def test_threads_of_one_process_exclude_each_other_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "step" / LOCK_FILE
    inside, overlaps = [], []
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        with EntryLock(path, KEY_A, "entry a"):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert overlaps == [1, 1, 1, 1]


def test_different_keys_do_not_wait_for_each_other(tmp_path: Path) -> None:
    path = tmp_path / "step" / LOCK_FILE
    with EntryLock(path, KEY_A, "entry a"):
        taken = threading.Event()

        def other() -> None:
            with EntryLock(path, KEY_B, "entry b"):
                taken.set()

        thread = threading.Thread(target=other)
        thread.start()
        assert taken.wait(10), "key b waited for key a"
        thread.join(10)


def test_a_waiter_whose_lock_file_was_removed_locks_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "step" / LOCK_FILE
    holder = EntryLock(path, KEY_A, "entry a")
    holder.acquire()
    got = threading.Event()
    waiter = EntryLock(path, KEY_A, "entry a")

    def wait_then_signal() -> None:
        waiter.acquire()
        got.set()

    thread = threading.Thread(target=wait_then_signal)
    thread.start()
    time.sleep(0.2)
    assert not got.is_set()
    shutil.rmtree(path.parent)  # `clear` removed the step while both wait on the old file
    third = EntryLock(path, KEY_A, "entry a")
    third.acquire()  # the new file is free
    holder.release()  # the waiter wakes on the removed file and must lock the new one
    time.sleep(0.2)
    assert not got.is_set(), "the waiter took a lock on a removed file"
    third.release()
    thread.join(10)
    assert got.is_set() and held(path, KEY_A)
    waiter.release()


COUNT: list[int] = []
NPY = CacheSpec(
    files=["out.npy"],
    save=lambda result, d: np.save(d / "out.npy", result),
    load=lambda d: np.load(d / "out.npy"),
)


@cacheable(NPY)
def slow_square(x: int) -> np.ndarray:
    """Square ``x`` slowly, counting each real run."""
    COUNT.append(x)
    time.sleep(0.2)
    return np.array([x * x])


def test_one_call_from_four_threads_runs_the_step_once(tmp_path: Path) -> None:
    COUNT.clear()
    barrier, results = threading.Barrier(4), []

    def call() -> None:
        barrier.wait()
        with Cache(tmp_path):
            results.append(int(slow_square(3)[0]))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [9, 9, 9, 9]
    assert COUNT == [3]

"""Steps nested in steps and steps run by threads: never a deadlock, a descriptor per level,
or a silent bypass of the cache."""

from __future__ import annotations

import contextvars
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import kwneuro_pydra.cache
from kwneuro_pydra import Cache
from tests.reliability import _steps
from tests.reliability._system import run_python

_REENTRANT = """
import json, warnings
from kwneuro_pydra import Cache
from tests.reliability import _steps
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with Cache({cache!r}):
        first = _steps.rl_itself(4).tolist()
        again = _steps.rl_itself(4).tolist()
print(json.dumps({{"first": first, "again": again, "calls": _steps.CALLS["rl_itself"],
                  "warnings": [str(w.message) for w in caught]}}))
"""


def test_a_step_calling_itself_with_its_own_arguments_runs_the_inner_call_uncached(
    tmp_path: Path,
) -> None:
    report = run_python(_REENTRANT.format(cache=str(tmp_path / "cache")), timeout=60)
    assert report["first"] == [5] and report["again"] == [5]
    assert report["calls"] == 2, "the outer call is stored and served the second time"
    (message,) = report["warnings"]
    assert "rl_itself" in message and "calling itself with the same arguments" in message


_DEEP = """
import json, resource, sys
from kwneuro_pydra import Cache
from tests.reliability import _steps
sys.setrecursionlimit(100_000)
resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
with Cache({cache!r}):
    value = _steps.rl_chain({depth}).tolist()
print(json.dumps({{"value": value, "calls": _steps.CALLS["rl_chain"]}}))
"""


def test_a_chain_deeper_than_the_descriptor_limit_holds_one_lock_file(tmp_path: Path) -> None:
    depth = 300  # each level holds its entry's lock while the levels below it compute
    report = run_python(_DEEP.format(cache=str(tmp_path / "cache"), depth=depth), timeout=120)
    assert report == {"value": [depth], "calls": depth + 1}


def test_a_step_in_a_thread_without_the_cache_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kwneuro_pydra.cache, "_WARNED", set(), raising=False)
    with Cache(tmp_path / "cache") as cache, ThreadPoolExecutor(2) as pool:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert pool.submit(_steps.rl_square, 11).result().tolist() == [121]
            thread = threading.Thread(target=_steps.rl_square, args=(12,))
            thread.start()
            thread.join()
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1, f"once per process: {messages}"
        assert "rl_square" in messages[0] and "threads do not inherit" in messages[0]
        # The documented way: the thread runs in a copy of the caller's context.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            context = contextvars.copy_context()
            assert pool.submit(context.run, _steps.rl_square, 13).result().tolist() == [169]
        assert [e.scalars for e in cache.entries("rl_square")] == [{"n": 13}]

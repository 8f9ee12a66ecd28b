"""Code fingerprint blind spots (issue 11, item 13).

An edited module-level constant that a step reads, and an edited ``CacheSpec.save`` or
``load`` (or a return type's protocol methods), left the step's code fingerprint unchanged:
the next run was served the old code's results. Each test edits a real module file and
imports it again under the same name, as a new process would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from kwneuro_pydra import Cache
from kwneuro_pydra.cache import step_of
from tests._step_files import import_file

ROOT = Path(__file__).resolve().parents[2]

_MODULE = """
import dataclasses, enum, json
import numpy as np
from kwneuro_pydra import CacheSpec, cacheable
{above}
SPEC = CacheSpec(
    files=["v.json"],
    save=lambda r, d: (d / "v.json").write_text(json.dumps({saved})),
    load=lambda d: {loaded},
)

@cacheable(SPEC)
def scaled(x: int) -> int:
    return {body}
{below}
"""

_DEFAULTS = {
    "above": "",
    "below": "",
    "body": "x * 2",
    "saved": "r",
    "loaded": 'json.loads((d / "v.json").read_text())',
}


def _load(directory: Path, name: str, **fields: str) -> ModuleType:
    """Write module ``name`` into ``directory`` and import it afresh under that name."""
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.py").write_text(_MODULE.format(**(_DEFAULTS | fields)))
    return import_file(directory / f"{name}.py", name)


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    """A configuration module ``rvc_config`` the steps may import (``SCALE = 2``)."""
    (tmp_path / "mods").mkdir()
    path = tmp_path / "mods" / "rvc_config.py"
    path.write_text("SCALE = 2\n")
    import_file(path, "rvc_config")
    yield path
    sys.modules.pop("rvc_config", None)


FROZEN = "@dataclasses.dataclass(frozen=True)\nclass Params:\n    k: int = {k}\nPARAMS = Params()"
ENUM = "class Mode(enum.Enum):\n    SCALE = {k}"

EDITS = {  # name: (fields before, fields after, result before, result after) for x = 5
    "constant": ({"above": "SCALE = 2", "body": "x * SCALE"}, {"above": "SCALE = 3"}, 10, 15),
    "constant defined below the step": (
        {"below": "SCALE = 2", "body": "x * SCALE"},
        {"below": "SCALE = 3"},
        10,
        15,
    ),
    "constant read in a comprehension": (
        {"above": "SCALE = 2", "body": "sum([x * SCALE for _ in range(1)])"},
        {"above": "SCALE = 3"},
        10,
        15,
    ),
    "string constant": (
        {"above": "OP = 'double'", "body": "x * 2 if OP == 'double' else x"},
        {"above": "OP = 'same'"},
        10,
        5,
    ),
    "tuple constant": (
        {"above": "W = (1, 2)", "body": "x * W[1]"},
        {"above": "W = (1, 3)"},
        10,
        15,
    ),
    "frozenset constant": (
        {"above": "S = frozenset({'a', 'b'})", "body": "x * len(S)"},
        {"above": "S = frozenset({'a', 'b', 'c'})"},
        10,
        15,
    ),
    "numpy scalar constant": (
        {"above": "S = np.int64(2)", "body": "int(x * S)"},
        {"above": "S = np.int64(3)"},
        10,
        15,
    ),
    "frozen dataclass constant": (
        {"above": FROZEN.format(k=2), "body": "x * PARAMS.k"},
        {"above": FROZEN.format(k=3)},
        10,
        15,
    ),
    "enum value": (
        {"above": ENUM.format(k=2), "body": "x * Mode.SCALE.value"},
        {"above": ENUM.format(k=3)},
        10,
        15,
    ),
    "CacheSpec.save": ({}, {"saved": "r * 10"}, 10, 100),
    "CacheSpec.load": ({}, {"loaded": 'json.loads((d / "v.json").read_text()) + 1'}, 10, 11),
}


@pytest.mark.parametrize("edit", EDITS)
def test_an_edit_the_result_depends_on_is_a_miss(tmp_path: Path, edit: str) -> None:
    before, after, expected_before, expected_after = EDITS[edit]
    name = "rvc_" + edit.replace(" ", "_").replace(".", "_")
    mods, cache = tmp_path / "mods", tmp_path / "cache"
    with Cache(cache):
        assert _load(mods, name, **before).scaled(5) == expected_before
        assert _load(mods, name, **before).scaled(5) == expected_before  # unchanged: a hit
        assert len(list((cache / "scaled").glob("[!.]*"))) == 1
        assert _load(mods, name, **(before | after)).scaled(5) == expected_after
        assert len(list((cache / "scaled").glob("[!.]*"))) == 2  # a new entry for the new code
    sys.modules.pop(name, None)


def test_an_edited_constant_of_an_imported_module_is_a_miss(tmp_path: Path, config: Path) -> None:
    fields = {"above": "import rvc_config", "body": "x * rvc_config.SCALE"}
    with Cache(tmp_path / "cache"):
        assert _load(tmp_path / "mods", "rvc_attr", **fields).scaled(5) == 10
        config.write_text("SCALE = 3\n")
        import_file(config, "rvc_config")
        assert _load(tmp_path / "mods", "rvc_attr", **fields).scaled(5) == 15
    sys.modules.pop("rvc_attr", None)


_PROTOCOL_MODULE = """
from pathlib import Path
from kwneuro_pydra import cacheable

class Text:
    def __init__(self, text: str) -> None:
        self.text = text

    @classmethod
    def _cache_files(cls, step_name: str) -> list[str]:
        return [step_name + ".txt"]

    def _cache_save(self, cache_dir: Path, step_name: str) -> None:
        (cache_dir / (step_name + ".txt")).write_text(self.text{suffix})

    @classmethod
    def _cache_load(cls, cache_dir: Path, step_name: str) -> "Text":
        return cls((cache_dir / (step_name + ".txt")).read_text())

@cacheable
def greet(name: str) -> Text:
    return Text("hello " + name)
"""


def test_an_edited_protocol_method_of_the_return_type_is_a_miss(tmp_path: Path) -> None:
    path = tmp_path / "rvc_protocol.py"
    with Cache(tmp_path / "cache"):
        path.write_text(_PROTOCOL_MODULE.format(suffix=""))
        assert import_file(path, "rvc_protocol").greet("ada").text == "hello ada"
        path.write_text(_PROTOCOL_MODULE.format(suffix=' + "!"'))
        assert import_file(path, "rvc_protocol").greet("ada").text == "hello ada!"
    sys.modules.pop("rvc_protocol", None)


def test_the_code_fingerprint_is_the_same_in_every_process(tmp_path: Path) -> None:
    fields = {
        "above": "S = frozenset({'x', 'y', 'z', 'w'})\nT = ('a', 1.5, None, b'z')",
        "body": "x * len(S) * len(T)",
    }
    _load(tmp_path, "rvc_stable", **fields)
    script = "import rvc_stable; from kwneuro_pydra.cache import step_of\n"
    script += "print(step_of(rvc_stable.scaled).code)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT / "src")]))
    codes = {
        subprocess.run(
            [sys.executable, "-B", "-c", textwrap.dedent(script)],
            env=env | {"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    here = step_of(sys.modules["rvc_stable"].scaled)
    assert here is not None and codes == {here.code}
    sys.modules.pop("rvc_stable", None)


def test_where_the_code_is_installed_does_not_count(tmp_path: Path) -> None:
    fields = {"above": "import pathlib", "body": "x * len(pathlib.Path(__file__).name)"}
    codes = set()
    for place in ("venv-a", "venv-b"):
        module = _load(tmp_path / place, "rvc_installed", **fields)
        step = step_of(module.scaled)
        assert step is not None
        codes.add(step.code)
    assert len(codes) == 1  # __file__ differs; entries are shared between installations
    sys.modules.pop("rvc_installed", None)


def test_reading_a_deprecated_module_attribute_warns_nobody(tmp_path: Path) -> None:
    (tmp_path / "mods").mkdir()
    lazy = tmp_path / "mods" / "rvc_lazy.py"
    lazy.write_text(
        "import warnings\n"
        "def __getattr__(name):\n"
        "    if name == 'OLD':\n"
        "        warnings.warn('OLD is deprecated', DeprecationWarning, stacklevel=2)\n"
        "        return 2\n"
        "    raise AttributeError(name)\n"
    )
    import_file(lazy, "rvc_lazy")
    fields = {"above": "import rvc_lazy", "body": "x * 2 if x else rvc_lazy.OLD"}
    step = step_of(_load(tmp_path / "mods", "rvc_uses_lazy", **fields).scaled)
    assert step is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(step.code) == 64
    assert caught == []
    sys.modules.pop("rvc_uses_lazy", None)
    sys.modules.pop("rvc_lazy", None)

"""Importable steps and pipelines for the Pydra adapter tests (workers load them by name).

Every step appends its name to ``$KWNEURO_TEST_COUNTS/<step>`` when that variable is set,
so tests count executions across worker processes.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from kwneuro_pydra import CacheSpec, cacheable


def _count(name: str) -> None:
    where = os.environ.get("KWNEURO_TEST_COUNTS")
    if where:
        with open(Path(where) / name, "a") as f:
            f.write(f"{os.getpid()}\n")


def executions(where: Path, name: str | None = None) -> int:
    """Executions of one step (or all) recorded under ``where``."""
    files = [where / name] if name else list(where.iterdir())
    return sum(len(f.read_text().split()) for f in files if f.exists())


def json_spec(name: str) -> CacheSpec[object]:
    """A CacheSpec storing a JSON-able result in ``<name>.json``."""

    def save(result: object, directory: Path) -> None:
        (directory / f"{name}.json").write_text(json.dumps(result))

    return CacheSpec(
        files=[f"{name}.json"],
        save=save,
        load=lambda d: _tuples(json.loads((d / f"{name}.json").read_text())),
    )


def _tuples(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


class NpyVolume:
    """A file-backed array (``.npy``) implementing the cache protocol, like the resources."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def array(self) -> np.ndarray:
        array: np.ndarray = np.load(self.path, mmap_mode="r")
        return array

    @classmethod
    def create(cls, array: np.ndarray) -> NpyVolume:
        path = Path(tempfile.mkdtemp(prefix="npyvol-")) / "data.npy"
        np.save(path, array)
        return cls(path)

    def __fingerprint__(self) -> object:
        return self.path

    @classmethod
    def _cache_files(cls, step_name: str) -> list[str]:
        return [f"{step_name}.npy"]

    def _cache_save(self, cache_dir: Path, step_name: str) -> None:
        np.save(cache_dir / f"{step_name}.npy", self.array)

    @classmethod
    def _cache_load(cls, cache_dir: Path, step_name: str) -> NpyVolume:
        return cls(cache_dir / f"{step_name}.npy")


@cacheable(json_spec("add_one"))
def add_one(x: float) -> float:
    _count("add_one")
    return x + 1


@cacheable(json_spec("double"))
def double(x: float) -> float:
    _count("double")
    return x * 2


@cacheable(json_spec("twin_a"))
def twin_a(x: float) -> float:
    return x + 1


@cacheable(json_spec("twin_b"))
def twin_b(x: float) -> float:
    return x + 1


@cacheable(json_spec("split_sum"))
def split_sum(x: float, y: float = 2.0) -> tuple[float, float]:
    _count("split_sum")
    return x + y, x - y


class MinMax(NamedTuple):
    low: float
    high: float


@cacheable(json_spec("min_max"))
def min_max(a: np.ndarray) -> MinMax:
    _count("min_max")
    return MinMax(float(a.min()), float(a.max()))


@cacheable(json_spec("describe"))
def describe(a: np.ndarray) -> str:
    _count("describe")
    return f"{a.dtype}{list(a.shape)}:{float(a.sum())}"


@cacheable
def make_volume(n: int, seed: int = 0) -> NpyVolume:
    _count("make_volume")
    return NpyVolume.create(np.random.default_rng(seed).random(n, dtype=np.float32))


@cacheable
def scale_volume(v: NpyVolume, factor: float = 2.0) -> NpyVolume:
    _count("scale_volume")
    return NpyVolume.create(np.asarray(v.array) * np.float32(factor))


@cacheable(json_spec("volume_mean"))
def volume_mean(v: NpyVolume) -> float:
    _count("volume_mean")
    return float(np.asarray(v.array, dtype=np.float64).mean())


@cacheable(json_spec("read_text"))
def read_text(path: Path) -> str:
    _count("read_text")
    return path.read_text()


@cacheable(json_spec("brain_mask"))
def brain_mask(dwi: str, thresh: float = 0.5) -> str:
    _count("brain_mask")
    if "bad" in dwi:
        raise ValueError(f"cannot mask {dwi}")
    return f"mask({dwi},{thresh})"


@cacheable(json_spec("estimate_dti"))
def estimate_dti(dwi: str, mask: str) -> str:
    _count("estimate_dti")
    return f"dti({dwi},{mask})"


@cacheable(json_spec("fa_map"))
def fa_map(dti: str) -> str:
    _count("fa_map")
    return f"fa({dti})"


@cacheable(json_spec("burn"))
def burn(x: float, seconds: float = 0.5) -> float:
    """CPU-bound: spins for ``seconds``."""
    _count("burn")
    end, total = time.process_time() + seconds, 0.0
    while time.process_time() < end:
        total += sum(i * i for i in range(1000)) * 0.0
    return x + 1 + total


@cacheable(json_spec("stamp"))
def stamp(x: float) -> str:
    """Its result carries ``$KWNEURO_TEST_STAMP``, which is not part of its key; it raises
    when that is ``raise``."""
    _count("stamp")
    if os.environ.get("KWNEURO_TEST_STAMP") == "raise":
        raise ValueError(f"stamp({x}) told to raise")
    return f"{x}:{os.environ.get('KWNEURO_TEST_STAMP', '')}"


class Steps:
    """Steps as static methods of a class."""

    @staticmethod
    @cacheable(json_spec("triple"))
    def triple(x: float) -> float:
        _count("triple")
        return 3 * x


def pipeline(dwi: str) -> str:
    """The example of the issue."""
    mask = brain_mask(dwi)
    return estimate_dti(dwi, mask=mask)


def pipeline3(dwi: str) -> tuple[str, str]:
    """Three steps, two outputs: mask -> dti -> fa."""
    mask = brain_mask(dwi)
    dti = estimate_dti(dwi, mask=mask)
    return dti, fa_map(dti)


def chain4(x: float) -> float:
    """Four trivial steps."""
    return double(add_one(double(add_one(x))))


def stamped(x: float) -> tuple[str, float]:
    """A stamp and a chain of two steps."""
    return stamp(x), double(add_one(x))


def burn2(x: float) -> float:
    """Two CPU-bound steps."""
    return burn(burn(x))


def volumes(n: int) -> float:
    """File-backed results between nodes."""
    return volume_mean(scale_volume(make_volume(n)))


def named(a: np.ndarray) -> float:
    """Uses a NamedTuple result by attribute, in both modes."""
    mm = min_max(a)
    return add_one(mm.high)


def bad_attr(dwi: str) -> str:
    mask = brain_mask(dwi)
    return estimate_dti(dwi, mask=mask.upper())


def bad_if(dwi: str) -> str:
    mask = brain_mask(dwi)
    if mask:
        return estimate_dti(dwi, mask=mask)
    return dwi


def bad_fstring(dwi: str) -> str:
    mask = brain_mask(dwi)
    return estimate_dti(dwi, mask=f"{mask}.nii")


# --- steps decorated by upstream kwneuro 1.0's own `cacheable` ---------------------------------
def _upstream_cache_module() -> object | None:
    """Upstream kwneuro 1.0's cache.py when kwneuro is installed; never installed from here."""
    from benchmarks._peers import Unavailable
    from benchmarks._peers import upstream as load_upstream

    try:
        return load_upstream(install=False)
    except Unavailable:
        return None


upstream = _upstream_cache_module()

if upstream is not None:

    @upstream.cacheable(
        upstream.CacheSpec(  # type: ignore[attr-defined,untyped-decorator]
            files=["up_square.json"],
            save=lambda r, d: (d / "up_square.json").write_text(json.dumps(r)),
            load=lambda d: json.loads((d / "up_square.json").read_text()),
        )
    )
    def up_square(x: float) -> float:
        _count("up_square")
        return x * x

    @upstream.cacheable  # type: ignore[attr-defined,untyped-decorator]
    def up_volume(n: int) -> NpyVolume:
        _count("up_volume")
        return NpyVolume.create(np.arange(n, dtype=np.float32))


class Unhashable:
    """A value `fingerprint` cannot take (it has no fingerprint), but Pydra can pickle."""

    def __init__(self, text: str) -> None:
        self.text = text


@cacheable(json_spec("shout"))
def shout(thing: Unhashable) -> str:
    _count("shout")
    return thing.text.upper()


def shouting(thing: Unhashable) -> str:
    """A pipeline whose only step runs uncached: its argument has no fingerprint."""
    return shout(thing)

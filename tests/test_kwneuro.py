"""kwneuro 1.0's own steps, methods and resources through our cache and workflows.

Every test runs the real kwneuro 1.0 (installed by the ``kwneuro`` extra, part of ``dev``);
with CI set, a missing kwneuro fails the module instead of skipping it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if os.environ.get("CI"):
    import kwneuro  # a failure, not a skip, under CI
else:
    kwneuro = pytest.importorskip("kwneuro")

import ants  # type: ignore[import-untyped]  # kwneuro's dependency
from kwneuro.csd import compute_csd_peaks, estimate_response_function
from kwneuro.dti import Dti
from kwneuro.dwi import Dwi
from kwneuro.reg import TransformResource
from pydra.utils.general import get_fields  # type: ignore[import-untyped]

import kwneuro_pydra
from kwneuro_pydra import Cache, adopt, fingerprint
from kwneuro_pydra._kwneuro import AdoptedStep
from kwneuro_pydra._step import Step
from kwneuro_pydra.cache import step_of
from kwneuro_pydra.pydra import run_subjects, to_task
from kwneuro_pydra.resources import Dwi as OurDwi
from kwneuro_pydra.resources import (
    InMemoryVolumeResource,
    NiftiVolumeResource,
    from_kwneuro,
    to_kwneuro,
)
from kwneuro_pydra.workflows import brain_mask, dti_pipeline, estimate_dti, mean_b0
from kwneuro_pydra.workflows.kwneuro_pipeline import KwneuroResult, kwneuro_pipeline
from kwneuro_pydra.workflows.phantom import write_phantom
from tests._kwneuro_steps import Scaler, fa_pipeline, gtab_pipeline, method_pipeline

pytestmark = [
    # dipy's CSD on a tiny phantom: few voxels for the response (logged, not warned) and
    # a response less prolate than dipy likes (logged); patch2self prints its progress
    pytest.mark.filterwarnings("ignore:.*less than 100 voxels:UserWarning"),
    pytest.mark.filterwarnings(
        "ignore:The legacy descoteaux07 SH basis:PendingDeprecationWarning"
    ),
]

OPTIONS = {"median_radius": 2, "numpass": 1, "fa_thr": 0.5}
"""Pipeline options for a 20x20x12 phantom (dipy's mask defaults are for brains)."""


def _phantom(directory: Path, seed: int = 0) -> Any:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / name for name in ("dwi.nii.gz", "dwi.bval", "dwi.bvec")]
    write_phantom(*paths, shape=(20, 20, 12), snr=30, seed=seed, directions=46)
    return kwneuro.read_dwi_fsl(*paths)


@pytest.fixture(scope="module")
def dwi(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _phantom(tmp_path_factory.mktemp("phantom"))


def _array(value: Any) -> np.ndarray[Any, Any]:
    return np.asarray(value.volume.get_array() if hasattr(value, "volume") else value.get_array())


# --- (1) adoption -----------------------------------------------------------------------------

KWNEURO_STEPS = [
    "kwneuro.dti:Dti.estimate_dti",
    "kwneuro.noddi:Noddi.estimate_noddi",
    "kwneuro.dwi:Dwi.denoise",
    "kwneuro.dwi:Dwi.extract_brain",
    "kwneuro.csd:estimate_response_function",
    "kwneuro.csd:compute_csd_peaks",
    "kwneuro.reg:register_dwi_to_structural",
    "kwneuro.structural:StructuralImage.correct_bias",
    "kwneuro.structural:StructuralImage.extract_brain",
    "kwneuro.structural:StructuralImage.segment_tissues",
    "kwneuro.structural:StructuralImage.parcellate",
    "kwneuro.tractseg:compute_csd_peaks",
]


@pytest.mark.parametrize("where", KWNEURO_STEPS)
def test_every_kwneuro_step_is_adopted_in_place(where: str) -> None:
    import importlib

    module, _, qualname = where.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    step = step_of(found)
    assert isinstance(step, AdoptedStep)
    assert found.__wrapped__ is step.fn  # kwneuro's convention kept
    assert found._cache_info.step_name == step.name
    assert adopt(found) is found


def test_estimate_dti_is_cached_by_our_store(dwi: Any, tmp_path: Path) -> None:
    plain = Dti.estimate_dti(dwi)
    with Cache(tmp_path) as cache:
        first = Dti.estimate_dti(dwi)
        second = Dti.estimate_dti(dwi)
        assert cache.status([Dti.estimate_dti]) == {"Dti.estimate_dti": True}
        assert cache.explain(Dti.estimate_dti, dwi).hit
    (entry,) = cache.entries("estimate_dti")
    assert isinstance(first.volume, kwneuro.io.NiftiVolumeResource)
    assert first.volume.path.parent == entry.path == second.volume.path.parent
    np.testing.assert_array_equal(_array(first), _array(plain))
    assert entry.hashes["dwi"] == fingerprint(dwi)  # our content fingerprint, not kwneuro's


def test_kwneuro_own_cache_keeps_working(dwi: Any, tmp_path: Path) -> None:
    with kwneuro.Cache(tmp_path) as theirs:
        first = Dti.estimate_dti(dwi)
        assert theirs.status([Dti.estimate_dti]) == {"Dti.estimate_dti": True}
    assert (tmp_path / "estimate_dti.nii.gz").is_file()  # kwneuro's flat layout
    assert (tmp_path / "estimate_dti.params.json").is_file()
    assert first.volume.path == tmp_path / "estimate_dti.nii.gz"


def test_a_reference_taken_before_adoption_warns_once(dwi: Any, tmp_path: Path) -> None:
    step = step_of(Dti.estimate_dti)
    assert isinstance(step, AdoptedStep)
    old = step.upstream  # kwneuro's own wrapper, as a module imported earlier holds it
    assert step_of(old) is None
    with Cache(tmp_path):
        with pytest.warns(UserWarning, match=r"'estimate_dti' runs without .* adopt"):
            old(dwi)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            old(dwi)  # once only
    assert adopt(old) is Dti.estimate_dti
    assert to_task(old) is to_task(Dti.estimate_dti)


def _old_reference_pipeline(dwi: Any) -> Any:
    step = step_of(Dti.estimate_dti)
    assert isinstance(step, AdoptedStep)
    return step.upstream(dwi)


def test_a_reference_taken_before_adoption_is_refused_in_a_workflow() -> None:
    from kwneuro_pydra.pydra import to_workflow

    with pytest.raises(TypeError, match=r"'estimate_dti' cannot become a workflow node.*adopt"):
        to_workflow(_old_reference_pipeline)


_HOOK = """
import sys
{first}
from kwneuro_pydra.cache import step_of
import kwneuro.dti, kwneuro.dwi
from kwneuro import cacheable
from kwneuro.dti import Dti

@cacheable
def mine(dwi: object) -> Dti:
    raise AssertionError

steps = [kwneuro.dti.Dti.estimate_dti, kwneuro.dwi.Dwi.denoise, mine]
print(all(type(step_of(s)).__name__ == "AdoptedStep" for s in steps))
"""


@pytest.mark.parametrize("first", ["import kwneuro_pydra", "import kwneuro; import kwneuro_pydra"])
def test_kwneuro_imported_before_or_after_is_adopted(first: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _HOOK.format(first=first)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert out.strip() == "True"


def test_code_fingerprint_covers_kwneuro_version(monkeypatch: pytest.MonkeyPatch) -> None:
    step = step_of(Dti.estimate_dti)
    assert isinstance(step, AdoptedStep)
    before = step.code
    monkeypatch.setattr(kwneuro, "__version__", "1.0.1")
    assert step.code != before
    assert step.code != Step.code.fget(step)  # type: ignore[attr-defined]  # mixed in


def test_a_changed_kwneuro_function_reruns_only_its_steps(
    dwi: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Cache(tmp_path) as cache:
        kwneuro_pipeline(dwi, **OPTIONS)
    counts = {name: len(cache.entries(name)) for name in cache.steps()}
    assert set(counts.values()) == {1}

    inner = Dti.estimate_dti.__wrapped__

    def estimate_dti(dwi: Any, mask: Any = None) -> Any:  # kwneuro's next release, say
        fitted = inner(dwi, mask)
        return fitted

    estimate_dti.__module__, estimate_dti.__qualname__ = "kwneuro.dti", "Dti.estimate_dti"
    estimate_dti.__annotations__ = {"return": Dti}
    patched = kwneuro.cache.cacheable(estimate_dti)  # kwneuro's decorator: adopted
    monkeypatch.setattr(Dti, "estimate_dti", staticmethod(patched))
    with Cache(tmp_path):
        kwneuro_pipeline(dwi, **OPTIONS)
    after = {name: len(cache.entries(name)) for name in cache.steps()}
    assert after == {**counts, "estimate_dti": 2}


# --- (2) methods ------------------------------------------------------------------------------


def test_decorated_methods_become_tasks_with_the_instance_as_input(tmp_path: Path) -> None:
    structural = kwneuro.structural.StructuralImage
    for method in (Dwi.denoise, Dwi.extract_brain, structural.correct_bias, Scaler.scale):
        names = [f.name for f in get_fields(to_task(method))]  # no SyntaxError from attrs
        assert "self_" in names and "self" not in names
    volume = InMemoryVolumeResource(np.arange(8.0).reshape(2, 2, 2))
    task = to_task(Scaler.scale)(self_=Scaler(2.0), volume=volume, cache_dir=str(tmp_path))
    outputs = task(worker="debug")
    np.testing.assert_array_equal(outputs.out.get_array(), volume.get_array() * 2)
    with Cache(tmp_path) as cache:
        assert cache.explain(Scaler.scale, Scaler(2.0), volume).hit  # the node's entry
        assert not cache.explain(Scaler.scale, Scaler(3.0), volume).hit  # instance keyed


def test_methods_called_on_stand_ins_become_nodes(dwi: Any, tmp_path: Path) -> None:
    from kwneuro_pydra.pydra import LazyValueError
    from kwneuro_pydra.pydra._workflow import discover

    assert sorted(discover(method_pipeline).steps) == ["brain_mask", "denoise", "estimate_dti"]
    (result,) = run_subjects(
        method_pipeline, {"s": {"dwi": dwi}}, tmp_path, worker="debug"
    ).values()
    assert result.ok, result.failure
    with Cache(tmp_path / "s") as cache:
        eager = method_pipeline(dwi)  # served by the nodes' entries
    assert eager.volume.path == result.outputs.volume.path
    assert all(len(cache.entries(name)) == 1 for name in cache.steps())
    with pytest.raises(LazyValueError, match=r"attribute access \.bval") as raised:
        discover(gtab_pipeline)
    assert "in Dwi.get_gtab(), called on workflow input 'dwi'" in raised.value.__notes__


# --- (3) resources fingerprint by content -----------------------------------------------------


def _affine_file(path: Path, shift: float) -> str:
    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    transform.set_parameters([1, 0, 0, 0, 1, 0, 0, 0, 1, shift, 0, 0])
    ants.write_transform(transform, str(path))
    return str(path)


def test_transform_resource_fingerprints_by_content(tmp_path: Path) -> None:
    path = _affine_file(tmp_path / "a0GenericAffine.mat", 1.0)
    resource = TransformResource([path], [path])
    before = fingerprint(resource)
    assert before is not None
    _affine_file(tmp_path / "a0GenericAffine.mat", 2.0)  # same path, other content
    changed = fingerprint(TransformResource([path], [path]))
    assert changed not in (None, before)
    copy = _affine_file(tmp_path / "copy.mat", 2.0)
    assert fingerprint(TransformResource([copy], [copy])) == changed  # content, not path
    loaded = TransformResource([path], [path])
    assert loaded.matrices  # ANTs transforms in memory
    assert fingerprint(loaded) == changed  # loading changes nothing
    os.remove(path)  # ANTs' temporary folder is gone: the matrices stand for the file
    in_memory = fingerprint(loaded)
    assert in_memory is not None
    assert in_memory != fingerprint(TransformResource([path], [path]))
    mixed = TransformResource([copy, path], [path], _matrices=loaded.matrices)
    assert fingerprint(mixed) not in (None, in_memory)  # one file left: it counts too


@kwneuro.cacheable  # kwneuro's decorator, adopted: a user's step returning a transform
def make_transform(shift: float) -> TransformResource:
    import tempfile

    path = _affine_file(Path(tempfile.mkdtemp()) / "a0GenericAffine.mat", shift)
    return TransformResource([path], [path])


def test_files_kwneuro_writes_undeclared_are_digested(tmp_path: Path) -> None:
    with Cache(tmp_path) as cache:
        stored = make_transform(1.0)
        (entry,) = cache.entries(make_transform)
        mat = entry.path / "make_transform_transform" / "a0GenericAffine.mat"
        assert stored._ants_fwd_paths == [str(mat)]  # kwneuro's own layout in our entry
        contents = (entry.path / "make_transform.contents.json").read_text()
        assert "make_transform_transform/a0GenericAffine.mat" in contents
        assert "make_transform.contents.json" in entry.files  # digested by the store
        np.testing.assert_array_equal(make_transform(1.0).matrices[0].parameters[9:], [1, 0, 0])
        _affine_file(mat, 5.0)  # the undeclared file changes in the entry
        with pytest.raises(ValueError, match=r"a0GenericAffine\.mat was changed or removed"):
            make_transform(1.0)


def test_kwneuro_resources_fingerprint_by_content(dwi: Any, tmp_path: Path) -> None:
    saved = dwi.save(tmp_path / "a", "dwi")
    again = dwi.save(tmp_path / "b", "dwi")
    assert fingerprint(saved) == fingerprint(again) is not None  # where it lives is no matter
    response = estimate_response_function(dwi, _mask(dwi), fa_thr=0.5)
    assert fingerprint(response) is not None
    dti = Dti.estimate_dti(dwi)
    assert fingerprint(dti) is not None


def test_every_kwneuro_resource_fingerprints_by_file_content(tmp_path: Path) -> None:
    from kwneuro.io import NiftiVolumeResource as TheirNifti
    from kwneuro.noddi import Noddi
    from kwneuro.resource import InMemoryVolumeResource as TheirVolume
    from kwneuro.structural import StructuralImage

    def volume(name: str, value: float) -> Any:
        return TheirNifti.save(TheirVolume(np.full((2, 2, 2, 2), value)), tmp_path / name)

    makers = [
        lambda v: v,
        lambda v: Dti(v),
        lambda v: Noddi(v, v),
        lambda v: StructuralImage(v),
    ]
    for make in makers:
        one, same = make(volume("a.nii.gz", 1.0)), make(volume("b.nii.gz", 1.0))
        before = fingerprint(one)
        assert before == fingerprint(same) is not None  # content, not the path
        changed = make(volume("a.nii.gz", 2.0))  # the same path, other voxels
        assert fingerprint(changed) not in (None, before)


def _mask(dwi: Any) -> Any:
    array = np.zeros(dwi.volume.get_array().shape[:3])
    array[4:16, 4:16, 2:10] = 1
    return kwneuro.resource.InMemoryVolumeResource(array, dwi.volume.get_affine())


# --- (4) converters ---------------------------------------------------------------------------


def test_converters_both_ways(dwi: Any) -> None:
    ours = from_kwneuro(dwi)
    assert isinstance(ours, OurDwi)
    assert isinstance(ours.volume, NiftiVolumeResource)
    assert ours.volume.path == dwi.volume.path  # the same file, nothing copied
    np.testing.assert_array_equal(ours.volume.get_array(), dwi.volume.get_array())
    np.testing.assert_array_equal(ours.bval.get(), dwi.bval.get())
    back = to_kwneuro(ours)
    assert isinstance(back, Dwi)
    assert back.volume.path == dwi.volume.path
    loaded = to_kwneuro(from_kwneuro(dwi.load()))
    np.testing.assert_array_equal(loaded.volume.get_array(), dwi.volume.get_array())
    np.testing.assert_array_equal(loaded.bvec.get(), dwi.bvec.get())
    assert from_kwneuro(ours) is ours and to_kwneuro(dwi) is dwi
    with pytest.raises(TypeError, match=r"from_kwneuro: cannot convert builtins\.int"):
        from_kwneuro(3)


@pytest.mark.parametrize("loaded", [False, True])
def test_our_dti_steps_accept_kwneuro_dwi(dwi: Any, loaded: bool) -> None:
    theirs = dwi.load() if loaded else dwi
    ours = from_kwneuro(theirs)
    for step, options in ((mean_b0, {}), (brain_mask, {"median_radius": 2, "numpass": 1})):
        np.testing.assert_array_equal(
            step(theirs, **options).get_array(), step(ours, **options).get_array()
        )
    mask = brain_mask(ours, median_radius=2, numpass=1)
    fitted = estimate_dti(theirs, to_kwneuro(mask))  # kwneuro's mask too
    np.testing.assert_array_equal(fitted.fa.get_array(), estimate_dti(ours, mask).fa.get_array())


def test_run_subjects_of_our_dti_pipeline_takes_kwneuro_dwi(dwi: Any, tmp_path: Path) -> None:
    options = {"median_radius": 2, "numpass": 1}
    (result,) = run_subjects(
        dti_pipeline, {"s": {"dwi": dwi, **options}}, tmp_path, worker="debug"
    ).values()
    assert result.ok, result.failure
    expected = dti_pipeline(from_kwneuro(dwi), **options)
    np.testing.assert_array_equal(result.outputs.fa.get_array(), expected.fa.get_array())


def test_pydra_refusal_names_the_converters(dwi: Any, tmp_path: Path) -> None:
    from kwneuro_pydra.pydra import to_workflow

    with pytest.raises(TypeError) as raised:  # kwneuro's Dti where our DtiResult goes
        to_workflow(fa_pipeline)(dti=Dti.estimate_dti(dwi), cache_dir=str(tmp_path))(
            worker="debug", cache_root=tmp_path / "jobs"
        )
    assert any("from_kwneuro" in note for note in getattr(raised.value, "__notes__", []))


# --- (5) the kwneuro pipeline -----------------------------------------------------------------


def _expected(result: Any) -> list[Any]:
    """kwneuro's plain calls (no cache) on the inputs each cached step was given."""
    denoised, mask = result[0], result[1]
    response = estimate_response_function(denoised, mask, fa_thr=OPTIONS["fa_thr"])
    return [
        Dti.estimate_dti(denoised, mask),
        *compute_csd_peaks(denoised, mask, response, n_peaks=5),
    ]


def _check(result: Any) -> None:
    named = KwneuroResult(*result)
    for got, want in zip(
        [named.dti, named.peak_dirs, named.peak_values], _expected(result), strict=True
    ):
        np.testing.assert_array_equal(_array(got), _array(want))
    assert _array(named.mask).any()


def test_pipeline_eagerly_equals_kwneuro_plain_calls(dwi: Any, tmp_path: Path) -> None:
    with Cache(tmp_path) as cache:
        result = kwneuro_pipeline(dwi, **OPTIONS)
        again = kwneuro_pipeline(dwi, **OPTIONS)
    _check(result)
    assert [_array(v).tobytes() for v in result] == [_array(v).tobytes() for v in again]
    assert sorted(cache.steps()) == [
        "brain_mask",
        "compute_csd_peaks",
        "denoise",
        "estimate_dti",
        "estimate_response_function",
    ]


def _entries(cache_dir: Path) -> list[tuple[Path, str]]:
    cache = Cache(cache_dir)
    return sorted((e.path, e.created) for name in cache.steps() for e in cache.entries(name))


@pytest.mark.slow
@pytest.mark.parametrize("worker", ["debug", "cf"])
def test_pipeline_through_run_subjects(worker: str, tmp_path: Path) -> None:
    subjects = {
        f"s{i}": {"dwi": _phantom(tmp_path / "in" / f"s{i}", seed=i), **OPTIONS} for i in range(3)
    }
    root = tmp_path / "out"
    first = run_subjects(kwneuro_pipeline, subjects, root, worker=worker, job_cache=tmp_path / "j")
    assert all(r.ok for r in first.values()), first
    made = {
        s: sorted(
            (e.path, e.created)
            for n in Cache(root / s).steps()
            for e in Cache(root / s).entries(n)
        )
        for s in subjects
    }
    assert all(len(entries) == 5 for entries in made.values())
    for result in first.values():
        _check(result.outputs)
    again = run_subjects(kwneuro_pipeline, subjects, root, worker=worker, job_cache=tmp_path / "j")
    for s, result in again.items():
        assert [str(_array(v).tobytes()) for v in result.outputs] == [
            str(_array(v).tobytes()) for v in first[s].outputs
        ]
    remade = {
        s: sorted(
            (e.path, e.created)
            for n in Cache(root / s).steps()
            for e in Cache(root / s).entries(n)
        )
        for s in subjects
    }
    assert remade == made  # the rerun computed nothing
    with Cache(root / "s0") as cache:  # an eager run serves the nodes' entries
        eager = kwneuro_pipeline(subjects["s0"]["dwi"], **OPTIONS)
    assert eager[2].volume.path == first["s0"].outputs[2].volume.path
    assert len(cache.entries("estimate_dti")) == 1


assert kwneuro_pydra.adopt is adopt


def test_ls_says_it_sees_a_flat_kwneuro_cache_and_both_caches_share_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kwneuro.cache import Cache as KwneuroCache
    from kwneuro.cache import CacheSpec as KwneuroSpec
    from kwneuro.cache import cacheable as kwneuro_cacheable

    from kwneuro_pydra.cli import main

    spec = KwneuroSpec(
        files=["n.txt"],
        save=lambda n, d: (d / "n.txt").write_text(str(n)),
        load=lambda d: int((d / "n.txt").read_text()),
    )

    @kwneuro_cacheable(spec)  # type: ignore[untyped-decorator]
    def square(n: int) -> int:
        return n * n

    folder = tmp_path / "cache"
    with KwneuroCache(folder):
        assert square(3) == 9  # kwneuro's flat files
    with Cache(folder):
        assert square(4) == 16  # adopted: an entry of ours beside them
    capsys.readouterr()
    assert main(["ls", str(folder)]) == 0
    said = capsys.readouterr().out
    assert "1 entry" in said
    assert f"{folder} also holds a flat kwneuro 1.0 cache (square): not read here" in said
    with KwneuroCache(folder):
        assert square(3) == 9  # kwneuro's own cache still reads its files

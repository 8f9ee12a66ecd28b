"""Moving the workflows package keeps its cache entries valid.

`kwneuro_pydra.workflows` lived in the repository's root folder ``workflows/`` (mapped onto the
package by ``package-dir``) before it moved under ``src/``. A step's code fingerprint reads its
module, qualified name and source, never its file's location, so entries computed with the
package at its old place must be served with the package at its new one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import kwneuro_pydra.workflows
from kwneuro_pydra import Cache
from kwneuro_pydra.resources import Dwi, FslBvalResource, FslBvecResource, NiftiVolumeResource
from kwneuro_pydra.workflows.dti import brain_mask, estimate_dti, mean_b0
from kwneuro_pydra.workflows.phantom import write_phantom

# Runs in a fresh interpreter whose `kwneuro_pydra.workflows` is the copy at the old place,
# found the way the old ``package-dir`` mapping found it: by a package spec for that folder.
_OLD_LAYOUT = textwrap.dedent(
    """
    import importlib.util, sys
    from pathlib import Path

    old, data, cache_dir = (Path(a) for a in sys.argv[1:4])
    import kwneuro_pydra
    spec = importlib.util.spec_from_file_location(
        "kwneuro_pydra.workflows", old / "__init__.py", submodule_search_locations=[str(old)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["kwneuro_pydra.workflows"] = package
    spec.loader.exec_module(package)
    kwneuro_pydra.workflows = package

    from kwneuro_pydra import Cache
    from kwneuro_pydra.resources import Dwi, FslBvalResource, FslBvecResource, NiftiVolumeResource
    from kwneuro_pydra.workflows import dti

    assert Path(dti.__file__).parent == old, dti.__file__
    dwi = Dwi(NiftiVolumeResource(data / "dwi.nii.gz"), FslBvalResource(data / "dwi.bval"),
              FslBvecResource(data / "dwi.bvec"))
    with Cache(cache_dir):
        mask = dti.brain_mask(dwi, median_radius=2, numpass=1)
        dti.mean_b0(dwi)
        dti.estimate_dti(dwi, mask)
    """
)


def test_entries_written_from_the_old_package_folder_are_served_from_src(tmp_path: Path) -> None:
    installed = Path(kwneuro_pydra.workflows.__file__).parent
    old = tmp_path / "checkout" / "workflows"
    shutil.copytree(installed, old, ignore=shutil.ignore_patterns("__pycache__"))
    data = tmp_path / "data"
    data.mkdir()
    write_phantom(
        data / "dwi.nii.gz", data / "dwi.bval", data / "dwi.bvec", shape=(16, 16, 8), seed=3
    )
    cache_dir = tmp_path / "cache"
    subprocess.run(
        [sys.executable, "-c", _OLD_LAYOUT, str(old), str(data), str(cache_dir)], check=True
    )

    dwi = Dwi(
        NiftiVolumeResource(data / "dwi.nii.gz"),
        FslBvalResource(data / "dwi.bval"),
        FslBvecResource(data / "dwi.bvec"),
    )
    with Cache(cache_dir) as cache:
        assert cache.explain(mean_b0, dwi).hit
        mask = cache.load(brain_mask, dwi, median_radius=2, numpass=1)
        assert cache.explain(estimate_dti, dwi, mask).hit
        served = cache.load(estimate_dti, dwi, mask)
    assert np.isfinite(served.fa.get_array()).all()

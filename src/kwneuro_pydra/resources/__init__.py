"""Imaging resources on nibabel that implement the cache protocol and fingerprint fast.

The names and behaviour follow upstream kwneuro 1.0 (``kwneuro.resource``, ``kwneuro.io`` and
``kwneuro.dwi``); kwneuro's own classes convert with `from_kwneuro` and `to_kwneuro`, and a
kwneuro script runs unchanged on our cache (see ``docs/kwneuro.md``):

- volumes: `VolumeResource` (abstract), `InMemoryVolumeResource`, `NiftiVolumeResource`;
- b-values: `BvalResource` (abstract), `InMemoryBvalResource`, `FslBvalResource`;
- b-vectors: `BvecResource` (abstract), `InMemoryBvecResource`, `FslBvecResource`;
- `Dwi`: a 4-D volume with its b-values and b-vectors, validated on construction.

Where this module differs from upstream, it is deliberate:

- Loading keeps the stored dtype (``np.asanyarray(img.dataobj)``, never ``get_fdata()``);
  an image with a scale factor (``scl_slope``) loads as floats, as nibabel scales it.
- A `NiftiVolumeResource` reads its header once (re-read only when the file changes) and
  decodes voxels only in `NiftiVolumeResource.get_array` / `NiftiVolumeResource.load`;
  `get_affine`, `get_metadata` and `get_shape` never decode voxels.
- A ``.nii.gz`` is decompressed at most once per process while its file is unchanged: decoded
  volumes are memoised under the file's stat key, least recently used first, within
  ``KWNEURO_PYDRA_VOLUME_MEMO_MB`` MiB per process (default 1024; 0 turns the memo off).
  The arrays handed out are therefore read-only (``flags.writeable`` is False): copy one to
  modify it.
- ``.nii.gz`` files are written and read through ISA-L (the ``isal`` package) when it is
  installed, else the standard library: ordinary, deterministic gzip streams that hold
  exactly the bytes nibabel writes. Writing records the file's digest from the bytes
  written, so fingerprinting a file we just wrote reads nothing.
- Saving preserves the array's dtype, the affine and the qform/sform codes.
- FSL text files are written with the shortest exact decimal form of each value (float64),
  so a b-table round-trips bit for bit.
- Bad input raises a clear error naming the path or the field (`ResourceFileError` for an
  unreadable file, `FileNotFoundError` with the path for a missing one, `ValueError` for
  inconsistent values).

Fingerprints (see `kwneuro_pydra._fingerprint`): in-memory resources by content (array,
affine and the header fields that change an image's meaning); file-backed resources by their
file's content through the stat-keyed digest memo, without decoding anything.

Cache protocol: a `@cacheable` step annotated to return a `VolumeResource`, `BvalResource`,
`BvecResource` or `Dwi` stores its result as NIfTI (``.nii.gz``, or ``.nii`` when the active
`Cache` has ``nifti_compression=False``) and FSL text files, and gets back file-backed,
lazy resources.

Layout: `_files` (paths, file errors), `_base` (`Resource`), `_nifti` (NIfTI-1 plumbing),
`_gzip` (ISA-L or zlib), `_niftiio` (NIfTI file I/O, the decoded-volume memo), `_volume`
(volumes), `_tables` (one implementation of gradient tables in memory and in FSL text files),
`_gradients` (b-values and b-vectors), `_dwi` (`Dwi`).
"""

from kwneuro_pydra.resources._base import Resource
from kwneuro_pydra.resources._dwi import B0_THRESHOLD, BVEC_NORM_TOLERANCE, Dwi
from kwneuro_pydra.resources._files import (
    PathLike,
    ResourceFileError,
    normalize_path,
    source_of,
)
from kwneuro_pydra.resources._gradients import (
    BvalResource,
    BvecResource,
    FslBvalResource,
    FslBvecResource,
    InMemoryBvalResource,
    InMemoryBvecResource,
)
from kwneuro_pydra.resources._kwneuro import (
    CONVERSION_HINT,
    accepting,
    from_kwneuro,
    is_kwneuro_value,
    to_kwneuro,
)
from kwneuro_pydra.resources._volume import (
    InMemoryVolumeResource,
    NiftiVolumeResource,
    VolumeResource,
)

__all__ = [
    "B0_THRESHOLD",
    "BVEC_NORM_TOLERANCE",
    "CONVERSION_HINT",
    "BvalResource",
    "BvecResource",
    "Dwi",
    "FslBvalResource",
    "FslBvecResource",
    "InMemoryBvalResource",
    "InMemoryBvecResource",
    "InMemoryVolumeResource",
    "NiftiVolumeResource",
    "PathLike",
    "Resource",
    "ResourceFileError",
    "VolumeResource",
    "accepting",
    "from_kwneuro",
    "is_kwneuro_value",
    "normalize_path",
    "source_of",
    "to_kwneuro",
]

# The public names report this package as their module (as httpx does): a fingerprint mixes
# in the class's module and name, so moving code between the private modules never changes
# a cache key, and pickles refer to the public name. The modules defining them evaluate
# annotations eagerly (no ``from __future__ import annotations``), so `typing.get_type_hints`
# needs no lookup here.
for _name in __all__:
    _public = globals()[_name]
    if callable(_public):  # the classes, `normalize_path` and `source_of`
        _public.__module__ = __name__
del _name, _public

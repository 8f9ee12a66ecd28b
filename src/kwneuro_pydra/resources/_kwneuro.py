"""Converters between upstream kwneuro 1.0's resources and ours, both ways.

Both libraries name their classes alike (``Dwi``, ``NiftiVolumeResource`` ...) but share no
code: ours add ``get_shape``, keep the stored dtype and fingerprint fast. The converters share
what they can: an in-memory array is handed over as it is (no copy), a file-backed resource
is re-opened on the same file (nothing is read). kwneuro is imported only when a kwneuro
value is converted.

| kwneuro 1.0                                  | kwneuro_pydra.resources            |
|----------------------------------------------|------------------------------------|
| ``kwneuro.dwi.Dwi``                          | `Dwi`                              |
| ``kwneuro.resource.InMemoryVolumeResource``  | `InMemoryVolumeResource`           |
| ``kwneuro.io.NiftiVolumeResource``           | `NiftiVolumeResource`              |
| ``kwneuro.resource.InMemoryBvalResource``    | `InMemoryBvalResource`             |
| ``kwneuro.io.FslBvalResource``               | `FslBvalResource`                  |
| ``kwneuro.resource.InMemoryBvecResource``    | `InMemoryBvecResource`             |
| ``kwneuro.io.FslBvecResource``               | `FslBvecResource`                  |
"""

from __future__ import annotations

import sys
import typing
from typing import Any

import nibabel as nib
import numpy as np

from kwneuro_pydra.resources._dwi import Dwi
from kwneuro_pydra.resources._gradients import (
    BvalResource,
    BvecResource,
    FslBvalResource,
    FslBvecResource,
    InMemoryBvalResource,
    InMemoryBvecResource,
)
from kwneuro_pydra.resources._volume import (
    InMemoryVolumeResource,
    NiftiVolumeResource,
    VolumeResource,
)

__all__ = ["CONVERSION_HINT", "accepting", "from_kwneuro", "is_kwneuro_value", "to_kwneuro"]

CONVERSION_HINT = (
    "kwneuro's resources and kwneuro_pydra's are different classes: convert with "
    "kwneuro_pydra.resources.from_kwneuro(value) or to_kwneuro(value) (see docs/kwneuro.md)"
)
"""Added to Pydra's refusal of a kwneuro value where one of ours is expected (or the reverse)."""

_HEADER_FIELDS = tuple(nib.Nifti1Header().keys())  # type: ignore[no-untyped-call]
_OURS = (Dwi, VolumeResource, BvalResource, BvecResource)


def is_kwneuro_value(value: object) -> bool:
    """True for an instance of a class defined by upstream kwneuro."""
    module = type(value).__module__
    return module == "kwneuro" or module.startswith("kwneuro.")


def from_kwneuro(value: Any) -> Any:
    """Return our resource for a kwneuro 1.0 resource (ours are returned unchanged).

    Args:
        value: A kwneuro ``Dwi``, volume, b-value or b-vector resource, or one of ours.

    Returns:
        The `kwneuro_pydra.resources` equivalent (see the module's table).

    Raises:
        TypeError: ``value`` is neither.
    """
    if isinstance(value, _OURS):
        return value
    name = type(value).__name__ if is_kwneuro_value(value) else ""
    if name == "Dwi":
        return Dwi(from_kwneuro(value.volume), from_kwneuro(value.bval), from_kwneuro(value.bvec))
    if name == "NiftiVolumeResource":
        return NiftiVolumeResource(value.path)
    if name == "FslBvalResource":
        return FslBvalResource(value.path)
    if name == "FslBvecResource":
        return FslBvecResource(value.path)
    if name == "InMemoryBvalResource":
        return InMemoryBvalResource(value.array)
    if name == "InMemoryBvecResource":
        return InMemoryBvecResource(value.array)
    if hasattr(value, "get_array") and hasattr(value, "get_affine") and name:
        return InMemoryVolumeResource(value.get_array(), value.get_affine(), value.get_metadata())
    raise TypeError(
        f"from_kwneuro: cannot convert {type(value).__module__}.{type(value).__qualname__}: "
        "expected a kwneuro Dwi, volume, b-value or b-vector resource"
    )


def to_kwneuro(value: Any) -> Any:
    """Return the kwneuro 1.0 resource for one of ours (kwneuro's are returned unchanged).

    Metadata keys that are not NIfTI-1 header fields are left out (kwneuro writes every key
    into a header).

    Args:
        value: One of our `Dwi`, volume, b-value or b-vector resources, or a kwneuro one.

    Returns:
        The kwneuro equivalent (see the module's table).

    Raises:
        TypeError: ``value`` is neither.
        ImportError: kwneuro is not installed.
    """
    if is_kwneuro_value(value):
        return value
    from kwneuro import io, resource
    from kwneuro.dwi import Dwi as KwneuroDwi

    if isinstance(value, Dwi):
        return KwneuroDwi(to_kwneuro(value.volume), to_kwneuro(value.bval), to_kwneuro(value.bvec))
    if isinstance(value, NiftiVolumeResource):
        return io.NiftiVolumeResource(value.path)
    if isinstance(value, FslBvalResource):
        return io.FslBvalResource(value.path)
    if isinstance(value, FslBvecResource):
        return io.FslBvecResource(value.path)
    if isinstance(value, BvalResource):
        return resource.InMemoryBvalResource(np.asarray(value.get()))
    if isinstance(value, BvecResource):
        return resource.InMemoryBvecResource(np.asarray(value.get()))
    if isinstance(value, VolumeResource):
        fields = set(_HEADER_FIELDS)
        metadata = {k: v for k, v in value.get_metadata().items() if k in fields}
        return resource.InMemoryVolumeResource(value.get_array(), value.get_affine(), metadata)
    raise TypeError(
        f"to_kwneuro: cannot convert {type(value).__module__}.{type(value).__qualname__}: "
        "expected a kwneuro_pydra Dwi, volume, b-value or b-vector resource"
    )


_TWINS = {
    Dwi: ("kwneuro.dwi", "Dwi"),
    VolumeResource: ("kwneuro.resource", "VolumeResource"),
    BvalResource: ("kwneuro.resource", "BvalResource"),
    BvecResource: ("kwneuro.resource", "BvecResource"),
}
"""Our class -> where kwneuro defines its twin."""


def _twins() -> dict[Any, Any]:
    """Each class -> its twin in the other library (empty while kwneuro is not imported)."""
    pairs: dict[Any, Any] = {}
    for ours, (module, name) in _TWINS.items():
        theirs = getattr(sys.modules.get(module), name, None)
        if theirs is not None:
            pairs[ours], pairs[theirs] = theirs, ours
    return pairs


def accepting(annotation: Any) -> Any:
    """The annotation of a task input that takes either library's resource.

    A parameter annotated with one of our resource classes (or a union holding one) also
    accepts kwneuro's twin class, and the reverse, once kwneuro is imported; any other
    annotation is returned unchanged.
    """
    twins = _twins()
    if not twins:
        return annotation
    members = list(typing.get_args(annotation)) if _is_union(annotation) else [annotation]
    added = [twins[m] for m in members if m in twins and twins[m] not in members]
    if not added:
        return annotation
    return typing.Union[tuple(members + added)]  # noqa: UP007


def _is_union(annotation: Any) -> bool:
    import types

    return isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union

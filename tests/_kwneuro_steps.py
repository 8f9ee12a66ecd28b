"""Steps of tests/test_kwneuro.py that Pydra workers import by name: one of ours is a method."""

from __future__ import annotations

import dataclasses

from kwneuro_pydra import cacheable
from kwneuro_pydra.resources import InMemoryVolumeResource, VolumeResource
from kwneuro_pydra.workflows import DtiResult


@dataclasses.dataclass(frozen=True)
class Scaler:
    """Multiplies a volume: its factor is part of the instance, fingerprinted with it."""

    factor: float

    @cacheable
    def scale(self, volume: VolumeResource) -> VolumeResource:
        """The volume times the factor."""
        return InMemoryVolumeResource(volume.get_array() * self.factor, volume.get_affine())


@cacheable
def fa_map(dti: DtiResult) -> VolumeResource:
    """The FA map of our DTI result."""
    return dti.fa


def fa_pipeline(dti):  # type: ignore[no-untyped-def]  # unannotated: the step's input checks
    """A pipeline handing its input to `fa_map`."""
    return fa_map(dti)

"""Steps of tests/test_kwneuro.py that Pydra workers import by name: one of ours is a method."""

from __future__ import annotations

import dataclasses

from kwneuro_pydra import cacheable
from kwneuro_pydra.resources import InMemoryVolumeResource, VolumeResource


@dataclasses.dataclass(frozen=True)
class Scaler:
    """Multiplies a volume: its factor is part of the instance, fingerprinted with it."""

    factor: float

    @cacheable
    def scale(self, volume: VolumeResource) -> VolumeResource:
        """The volume times the factor."""
        return InMemoryVolumeResource(volume.get_array() * self.factor, volume.get_affine())

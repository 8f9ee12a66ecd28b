"""Steps and pipelines of tests/test_kwneuro.py that Pydra workers import by name."""

from __future__ import annotations

import dataclasses

from kwneuro.dti import Dti
from kwneuro.dwi import Dwi as KwneuroDwi

from kwneuro_pydra import cacheable
from kwneuro_pydra.resources import InMemoryVolumeResource, VolumeResource
from kwneuro_pydra.workflows import DtiResult, brain_mask


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


def method_pipeline(dwi: KwneuroDwi) -> Dti:
    """kwneuro's methods called on a stand-in: a step method, then a plain method that
    calls a step (``Dwi.estimate_dti`` calls ``Dti.estimate_dti``)."""
    denoised = dwi.denoise()
    mask = brain_mask(denoised, median_radius=2, numpass=1)
    return denoised.estimate_dti(mask)


def gtab_pipeline(dwi: KwneuroDwi) -> object:
    """A plain method that reads its instance: refused while the workflow is built."""
    return dwi.get_gtab()

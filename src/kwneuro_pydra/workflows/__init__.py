"""Ready per-subject workflows built only from `cacheable` steps.

Each pipeline here is a plain function of `cacheable` steps: it runs eagerly inside
``with Cache(...)`` and becomes a Pydra workflow through `kwneuro_pydra.pydra.to_workflow`
or `kwneuro_pydra.pydra.run_subjects`. Installed as ``kwneuro_pydra.workflows``.

- `dti_pipeline`: `brain_mask` (of every volume, as MRtrix3's ``dwi2mask``, or dipy's
  median-Otsu) then `estimate_dti` (dipy's WLS or OLS tensor fit), returning a `DtiResult`
  of FA, MD, AD, RD, eigenvalues, eigenvectors, tensor, S0 and colour FA maps; `mean_b0`
  averages the b=0 volumes.
- `kwneuro_pydra.workflows.phantom`: DWI phantoms with known tensors, for tests and the demo.
- `kwneuro_pydra.workflows.head_phantom`: a realistic head (MNI152 brain, CSF, skull, scalp)
  with its true brain mask, to judge masks.
"""

from ._result import DtiResult, FitRecord
from .dti import FIT_METHODS, MASK_METHODS, brain_mask, dti_pipeline, estimate_dti, mean_b0

__all__ = [
    "FIT_METHODS",
    "MASK_METHODS",
    "DtiResult",
    "FitRecord",
    "brain_mask",
    "dti_pipeline",
    "estimate_dti",
    "mean_b0",
]

# Fingerprints and pickles name a class by its module: report the public one, so that
# moving code between the private modules never changes a cache key.
DtiResult.__module__ = __name__
FitRecord.__module__ = __name__

"""Ready per-subject workflows built only from `cacheable` steps.

Each pipeline here is a plain function of `cacheable` steps: it runs eagerly inside
``with Cache(...)`` and becomes a Pydra workflow through `kwneuro_pydra.pydra.to_workflow`
or `kwneuro_pydra.pydra.run_subjects`. Installed as ``kwneuro_pydra.workflows``.
"""

from .dti import brain_mask, dti_pipeline, estimate_dti, mean_b0

__all__ = ["brain_mask", "dti_pipeline", "estimate_dti", "mean_b0"]

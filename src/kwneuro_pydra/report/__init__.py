"""The visual report: figures made by `cacheable` steps, and the HTML pages.

- Figures and numbers (`b0_mosaic`, `fa_mosaic`, `md_mosaic`, `gradient_sphere`,
  `dti_statistics`, `group_distributions`) are steps: a rerun reuses them from the cache.
  They import matplotlib (Agg canvas, never a display) only when they run.
- `write_reports` writes ``OUTPUT_DIR/sub-<label>.html`` per subject (figures under
  ``sub-<label>/figures/``) and ``OUTPUT_DIR/report.html`` for the group.
"""

from kwneuro_pydra.report._figures import (
    FA_BINS,
    MD_BINS,
    Png,
    SeriesStats,
    b0_mosaic,
    dti_statistics,
    fa_mosaic,
    gradient_sphere,
    group_distributions,
    md_mosaic,
)

__all__ = [
    "FA_BINS",
    "MD_BINS",
    "Png",
    "SeriesStats",
    "b0_mosaic",
    "dti_statistics",
    "fa_mosaic",
    "gradient_sphere",
    "group_distributions",
    "md_mosaic",
]

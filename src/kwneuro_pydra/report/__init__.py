"""The visual report: figures made by `cacheable` steps, and the HTML pages.

- Figures (`b0_mosaic`, `gradient_sphere`, `group_distributions`) are steps: a rerun
  reuses them from the cache. `map_mosaic` and `summarise` render a map and compute a
  series' numbers for the steps of a pipeline (``kwneuro_pydra.workflows.bids_app``), which
  store them with the `PNG` and `STATS` specs. matplotlib (Agg canvas, never a display) is
  imported only when a figure is drawn.
- `write_reports` writes ``OUTPUT_DIR/sub-<label>.html`` per subject (figures under
  ``sub-<label>/figures/``; only the run's subjects and pages missing or out of date),
  ``OUTPUT_DIR/report.html`` for the group (with a methods paragraph, references and an
  About section; its figure is `GROUP_FIGURE`) and ``OUTPUT_DIR/group_desc-qc_dwi.tsv``.
"""

from kwneuro_pydra.report._figures import (
    FA_BINS,
    MD_BINS,
    PNG,
    STATS,
    Png,
    SeriesStats,
    b0_mosaic,
    gradient_sphere,
    group_distributions,
    map_mosaic,
    summarise,
)
from kwneuro_pydra.report._html import GROUP_FIGURE, SeriesReport, StepRecord, write_reports

__all__ = [
    "FA_BINS",
    "GROUP_FIGURE",
    "MD_BINS",
    "PNG",
    "STATS",
    "Png",
    "SeriesReport",
    "SeriesStats",
    "StepRecord",
    "b0_mosaic",
    "gradient_sphere",
    "group_distributions",
    "map_mosaic",
    "summarise",
    "write_reports",
]

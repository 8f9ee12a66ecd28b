"""BIDS input and output: discovery of DWI series (bids2table) and BIDS-Derivatives writing.

- `discover` indexes a dataset and returns its `DwiSeries` (subject x session x acquisition x
  run ...), each with its b-values and b-vectors found by BIDS inheritance;
  `DwiSeries.load` makes the `Dwi` or raises `SeriesError` naming the file.
- `write_derivatives` links a series' cached outputs under BIDS-Derivatives names
  (`DERIVATIVES`), with JSON sidecars; `write_dataset_description` describes the folder.

Imports bids2table only when `discover` runs.
"""

from kwneuro_pydra.bids._derivatives import (
    DERIVATIVES,
    Derivative,
    derivative_path,
    no_link_under,
    place,
    stale_temporaries,
    write_dataset_description,
    write_derivatives,
    write_json,
)
from kwneuro_pydra.bids._discover import (
    BidsError,
    DwiSeries,
    SeriesError,
    discover,
    participants_of,
)

__all__ = [
    "DERIVATIVES",
    "BidsError",
    "Derivative",
    "DwiSeries",
    "SeriesError",
    "derivative_path",
    "discover",
    "no_link_under",
    "participants_of",
    "place",
    "stale_temporaries",
    "write_dataset_description",
    "write_derivatives",
    "write_json",
]

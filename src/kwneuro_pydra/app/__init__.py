"""The DTI BIDS app as a library: what ``kwneuro-pydra run``, ``status`` and ``demo`` call.

- `run_bids_app` discovers the DWI series of a BIDS dataset, serves what the cache holds,
  computes the rest with Pydra, writes BIDS-Derivatives and the reports, and returns an
  `AppRun` (each series' outcome, what each step did, the report, the derivatives).
- `app_status` looks every step of every series up in the cache and returns an `AppStatus`.
- `job_status` and `cancel_jobs`: the Slurm jobs of a run (a detached one, ``detach=True``)
  as they are now, and cancelling those still queued or running.
- `write_demo` and `demo_accuracy` are the demo's dataset of phantoms and its error against
  their ground truth.
- `parameters` describes the pipeline's DTI parameters (the command line makes its options
  from them); `positive_int`, `natural`, `positive_float` convert text to their values and
  `plural` words counts, as the app's messages and the command line do.

Errors in what is asked (the dataset, a label, a folder, an option) raise `BidsError` or
`AppError`; a series that fails is in the result, not raised. The pipeline itself is
`kwneuro_pydra.workflows.bids_app.bids_dti`, a plain function of `cacheable` steps.
"""

from kwneuro_pydra.app._demo import Accuracy, demo_accuracy, write_demo
from kwneuro_pydra.app._errors import AppError, BidsError
from kwneuro_pydra.app._options import (
    OPTIONS_FILE,
    Parameter,
    natural,
    parameters,
    positive_float,
    positive_int,
)
from kwneuro_pydra.app._run import (
    LOAD,
    LOGS,
    WORKERS,
    AppRun,
    Progress,
    SeriesOutcome,
    StepCount,
    StepOutcome,
    run_bids_app,
)
from kwneuro_pydra.app._series import RECORD
from kwneuro_pydra.app._status import (
    JOB_STATES,
    STATES,
    AppStatus,
    JobStatus,
    SeriesJob,
    SeriesStatus,
    app_status,
    cancel_jobs,
    job_status,
)
from kwneuro_pydra.app._words import plural

__all__ = [
    "JOB_STATES",
    "LOAD",
    "LOGS",
    "OPTIONS_FILE",
    "RECORD",
    "STATES",
    "WORKERS",
    "Accuracy",
    "AppError",
    "AppRun",
    "AppStatus",
    "BidsError",
    "JobStatus",
    "Parameter",
    "Progress",
    "SeriesJob",
    "SeriesOutcome",
    "SeriesStatus",
    "StepCount",
    "StepOutcome",
    "app_status",
    "cancel_jobs",
    "demo_accuracy",
    "job_status",
    "natural",
    "parameters",
    "plural",
    "positive_float",
    "positive_int",
    "run_bids_app",
    "write_demo",
]

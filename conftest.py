"""Collection of the modules' doctests: a module of an optional extra that is not installed
is left out (the ``kwneuro`` extra's pipeline and test steps), except under ``CI``, where it
must import."""

import importlib
import os

collect_ignore = []
try:
    importlib.import_module("kwneuro")
except ImportError:
    if os.environ.get("CI"):
        raise
    collect_ignore += [
        "src/kwneuro_pydra/workflows/kwneuro_pipeline.py",
        "tests/_kwneuro_steps.py",
    ]

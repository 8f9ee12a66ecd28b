"""Steps that make the scheduler end their own job (importable by name on the nodes)."""

from __future__ import annotations

import os
import subprocess
import time

from kwneuro_pydra import cacheable
from tests._pydra_steps import double, json_spec


@cacheable(json_spec("cancel_self"))
def cancel_self(x: float) -> float:
    """Cancel the Slurm job running this step (as ``scancel`` from a user would), then wait."""
    subprocess.run(["scancel", os.environ["SLURM_JOB_ID"]], check=True)
    time.sleep(30)
    return x


@cacheable(json_spec("fail_node"))
def fail_node(x: float) -> float:
    """Set the node running this step down (as a failing node would go), then wait."""
    node = os.environ["SLURMD_NODENAME"]
    subprocess.run(
        ["scontrol", "update", f"nodename={node}", "state=down", "reason=kwneuro-test"],
        check=True,
    )
    time.sleep(30)
    return x


@cacheable(json_spec("overrun"))
def overrun(x: float) -> float:
    """Outlast any time limit shorter than two minutes."""
    time.sleep(120)
    return x


@cacheable(json_spec("hungry"))
def hungry(x: float) -> float:
    """Touch 600 MB of memory and hold it for a few seconds."""
    block = bytearray(600 * 10**6)
    block[::4096] = b"x" * len(block[::4096])
    time.sleep(5)
    return x


@cacheable(json_spec("linger"))
def linger(x: float) -> float:
    """Take three seconds."""
    time.sleep(3)
    return x


def cancelled(x: float) -> float:
    """A pipeline whose only step is cancelled by the scheduler."""
    return cancel_self(x)


def starving(x: float) -> float:
    """A pipeline whose only step needs more memory than it asks for."""
    return hungry(x)


def failing_node(x: float) -> float:
    """A pipeline whose only step's node fails under it."""
    return fail_node(x)


def overrunning(x: float) -> float:
    """A pipeline whose only step outlasts its time limit."""
    return overrun(x)


def lingering(x: float) -> float:
    """A pipeline whose first step takes a few seconds."""
    return double(linger(x))


@cacheable(json_spec("environment"))
def environment(x: float) -> str:
    """The job's per-user cache and thread settings, as JSON."""
    import json

    names = ("MPLCONFIGDIR", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    return json.dumps({name: os.environ.get(name) for name in names})


def environmental(x: float) -> str:
    """A pipeline reporting its job's environment."""
    return environment(x)

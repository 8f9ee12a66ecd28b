"""Checks before anything is submitted: each says what is wrong and what to do.

`check_worker` and `check_cache_root` hold for every worker; `check_slurm` for Slurm: the
commands are there, accounting answers (warning), sbatch accepts each job's options (``sbatch
--test-only``), the cache root is on a shared file system when the partitions the jobs go to
have several nodes (warning), and the steps import in a fresh interpreter (how a job loads
them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from kwneuro_pydra.pydra._resources import Request
from kwneuro_pydra.pydra._workarounds import refuse_sge, sbatch_args

__all__ = [
    "LOCAL_FILE_SYSTEMS",
    "ClusterWarning",
    "check_cache_root",
    "check_slurm",
    "check_worker",
    "file_system_of",
    "slurm_unavailable",
]

LOCAL_FILE_SYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "ramfs"}
)
"""File system types that only the machine holding them sees."""
_PARTITION = re.compile(r" in partition (\S+)")
"""Where ``sbatch --test-only`` says a job would run."""

_IMPORT_CHECK = """
import importlib, json, sys
bad = {}
for name, (module, qualname) in json.loads(sys.argv[1]).items():
    try:
        found = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except BaseException as error:
        bad[name] = f"{type(error).__name__}: {error}"
print(json.dumps(bad))
"""


class ClusterWarning(UserWarning):
    """Something that may make jobs fail on a cluster, said before submitting."""


def check_worker(worker: str, available: Iterable[str]) -> None:
    """Refuse an unknown worker and Pydra's unusable ``sge`` worker.

    Raises:
        ValueError: ``worker`` is not one of ``available`` or is ``"sge"``.
    """
    names = sorted(available)
    if worker not in names:
        raise ValueError(f"unknown worker {worker!r}: expected one of {', '.join(names)}")
    if worker == "sge":
        refuse_sge()


def check_cache_root(root: Path) -> None:
    """Create the cache root if needed and make sure files can be written in it.

    Raises:
        ValueError: It cannot be created or written (the message carries the OS error).
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".kwneuro-write-check-"):
            pass
    except OSError as error:
        raise ValueError(f"cache root {root} is not writable: {error}") from None


def file_system_of(path: Path) -> tuple[str, str]:
    """The mount point and file system type holding ``path`` (from ``/proc/self/mounts``)."""
    path = path.resolve()
    best = ("/", "unknown")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        if (path == Path(mount) or Path(mount) in path.parents) and len(mount) >= len(best[0]):
            best = (mount, fields[2])
    return best


def slurm_unavailable() -> str | None:
    """Why this machine cannot run Slurm jobs now, or None.

    It can when Slurm's commands are on PATH, a node of the default partition (of any
    partition when none is the default) is up and accounting answers.
    """
    for command in ("sbatch", "squeue", "scancel", "sacct", "sinfo", "scontrol"):
        if shutil.which(command) is None:
            return f"{command} is not on PATH"
    nodes = _run("sinfo", "-h", "-o", "%P %t")
    states = [line.split() for line in nodes.stdout.splitlines() if len(line.split()) == 2]
    default = [state for partition, state in states if partition.endswith("*")]
    if nodes.returncode or not {"idle", "mix", "alloc"} & set(
        default or [state for _, state in states]
    ):
        return f"no Slurm node is up ({(nodes.stderr or nodes.stdout).strip()})"
    accounting = _run("sacct", "-n", "-X", "-j", "1")
    if accounting.returncode:
        return f"Slurm accounting does not answer ({accounting.stderr.strip()})"
    return None


def check_slurm(
    places: Mapping[str, Path],
    steps: Mapping[str, Callable[..., Any]],
    given_args: str,
    requests: Mapping[str, Request],
) -> None:
    """Check what a Slurm run needs before submitting its first job.

    Args:
        places: Directories the jobs read and write, by what they are (the cache root,
            Pydra's job cache).
        steps: The pipeline's step functions by step name.
        given_args: The user's ``sbatch_args``.
        requests: The per-step requests (keyed by step name); for a job per subject, one
            combined request.

    Raises:
        ValueError: Slurm's commands are missing, no controller answers (``scontrol
            ping``), ``sbatch_args`` holds an option we refuse,
            sbatch rejects the options of a job, or a step does not import in a fresh
            interpreter.

    Warns:
        ClusterWarning: Accounting does not answer, or one of ``places`` is on a local file
            system while the partitions the jobs go to (as ``sbatch --test-only`` says) have
            several nodes.
    """
    missing = [c for c in ("sbatch", "squeue", "scancel", "scontrol") if shutil.which(c) is None]
    if missing:
        raise ValueError(
            f"worker='slurm' needs Slurm's commands on PATH; missing: {', '.join(missing)}"
        )
    ping = _run("scontrol", "ping")  # at once; sbatch would retry for tens of seconds
    if ping.returncode != 0 and " is UP" not in ping.stdout:
        first = ((ping.stdout or ping.stderr).strip().splitlines() or ["failed"])[0]
        raise ValueError(
            f"no Slurm controller reachable (scontrol ping: {first}): "
            "start slurmctld, or point SLURM_CONF (now "
            f"{os.environ.get('SLURM_CONF', 'unset')}) at the cluster's slurm.conf"
        )
    args = sbatch_args(given_args)
    accounting = _run("sacct", "-n", "-X", "-j", "1")
    if accounting.returncode != 0:
        warnings.warn(
            "Slurm accounting unavailable (sacct: "
            f"{(accounting.stderr or accounting.stdout).strip()}): a job's outcome is known "
            "only while the controller remembers it (MinJobAge); set up slurmdbd",
            ClusterWarning,
            stacklevel=3,
        )
    partitions: set[str] = set()
    for name, request in {"every job": Request(), **requests}.items():
        test = _run("sbatch", "--test-only", *args, *request.sbatch_args(), "--wrap", "true")
        if test.returncode != 0:
            said = " ".join(test.stderr.split()) or test.stdout.strip()
            options = " ".join(args + request.sbatch_args())
            raise ValueError(f"Slurm refuses the options of {name} ({options}): {said}")
        partitions.update(_PARTITION.findall(test.stderr + test.stdout))
    # the nodes the jobs may run on: those of the partitions sbatch chose (else all nodes)
    where = ("-p", ",".join(sorted(partitions))) if partitions else ()
    nodes = set(_run("sinfo", "-h", "-N", *where, "-o", "%N").stdout.split())
    cluster = "the cluster"
    if partitions:
        cluster = f"partition{'s' * (len(partitions) > 1)} {', '.join(sorted(partitions))}"
    for what, path in places.items():
        mount, kind = file_system_of(path)
        if len(nodes) > 1 and kind in LOCAL_FILE_SYSTEMS:
            warnings.warn(
                f"{what} {path} is on a local file system ({kind} mounted at {mount}) but the "
                f"jobs may run on any of the {len(nodes)} nodes of {cluster}: jobs on other "
                "nodes will not see it; put it on a shared file system",
                ClusterWarning,
                stacklevel=3,
            )
    _check_imports(steps)


def _check_imports(steps: Mapping[str, Callable[..., Any]]) -> None:
    """Import every step as a job's fresh interpreter will (same cwd and environment)."""
    where = {
        name: (fn.__module__, fn.__qualname__)
        for name, fn in steps.items()
        if fn.__module__ != "__main__"  # those travel by value
    }
    if not where:
        return
    done = _run(sys.executable, "-c", _IMPORT_CHECK, json.dumps(where))
    bad = json.loads(done.stdout) if done.returncode == 0 else {"(all)": done.stderr.strip()}
    if bad:
        lines = "; ".join(
            f"step {name!r} ({'.'.join(where.get(name, ('?', '?')))}): {why}"
            for name, why in sorted(bad.items())
        )
        raise ValueError(
            f"steps cannot be imported in a fresh interpreter, which is how a Slurm job loads "
            f"them: {lines}. Install their package in the environment the jobs use, or put "
            f"its directory on PYTHONPATH (current directory: {os.getcwd()})"
        )


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except OSError as error:
        return subprocess.CompletedProcess(command, 127, "", str(error))

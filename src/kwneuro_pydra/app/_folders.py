"""The app's folders: made and writable, and never inside the raw dataset."""

from __future__ import annotations

import os
from pathlib import Path

from kwneuro_pydra._files import open_new, temporary_name
from kwneuro_pydra.app._errors import AppError, BidsError

__all__ = ["outside_dataset", "writable_folder"]


def outside_dataset(path: Path, bids_dir: Path, what: str) -> None:
    """Refuse a folder the app would write into that lies in the raw dataset.

    The dataset is read-only to the app: ``path`` may not be the dataset's root, nor lie
    anywhere in it except under ``derivatives/<name>``, also when a symbolic link leads there.

    Args:
        path: The folder (it need not exist yet).
        bids_dir: The dataset's root.
        what: How the message names the folder (``OUTPUT_DIR``).

    Raises:
        BidsError: ``path`` lies in the raw dataset (the message says where to write instead).
    """
    root = Path(os.path.realpath(bids_dir))
    target = Path(os.path.realpath(path))
    if target != root and root not in target.parents:
        return
    inside = target.relative_to(root).parts
    if len(inside) >= 2 and inside[0] == "derivatives":
        return
    where = (
        "is the BIDS dataset" if not inside else f"is inside the BIDS dataset ({'/'.join(inside)})"
    )
    through = "" if Path(path).absolute() == target else f" (it resolves to {target})"
    raise BidsError(
        f"{what} {Path(path).absolute()} {where}{through}: the raw dataset is never written; "
        f"use a folder outside it or {root / 'derivatives' / '<name>'}"
    )


def writable_folder(path: Path, what: str) -> Path:
    """``path`` made (with its parents) and writable.

    Args:
        path: The folder.
        what: How the message names it (``OUTPUT_DIR``).

    Returns:
        The folder, absolute.

    Raises:
        AppError: It is a file, or it cannot be made or written (the message names it).
    """
    path = path.absolute()
    if path.exists() and not path.is_dir():
        raise AppError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = temporary_name(path / ".kwneuro-write-test")  # never a guessable name
        os.close(open_new(probe))  # nor through a link planted at it
        probe.unlink()
    except OSError as error:
        raise AppError(f"{what} {path} cannot be written: {error.strerror}") from None
    return path

"""Content digests of directory trees (a BIDS dataset, a FreeSurfer subject).

What counts, walking the tree depth first in name order:

- every entry, hidden ones included, by its path relative to the root and its type;
- a regular file by its content, through the stat-keyed memo of `file_digest`: a warm tree
  costs one ``stat`` per file and no read;
- a directory by its entries (an empty directory counts too);
- a symbolic link as what it points to, inside the tree or outside it: a link to a file by
  that file's content, a link to a directory by that directory's entries. A link back to a
  directory being walked (a cycle) counts as "the directory N levels up" and is not
  followed. A dangling link counts by its target string.

Anything else (a FIFO, a socket, a device) and anything unreadable make the tree
undigestable: `UndigestableTree`, and no fingerprint.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import xxhash

from kwneuro_pydra._filedigest import file_digest

__all__ = ["UndigestableTree", "tree_digest"]


class UndigestableTree(ValueError):
    """A tree holds an entry that has no content digest (a FIFO, an unreadable directory)."""


def tree_digest(root: str | Path) -> str:
    """Return the xxh3-128 hex digest of a directory tree's names, types and contents.

    Two trees with the same relative names, types and file contents digest alike, wherever
    they are; see the module documentation for links.

    Args:
        root: An existing directory.

    Returns:
        32 lowercase hex characters.

    Raises:
        UndigestableTree: The tree holds a special file, or a part of it cannot be read.
        OSError: ``root`` cannot be read, or an entry vanished while the tree was walked.
    """
    hasher = xxhash.xxh3_128()
    st = os.stat(root)
    _walk(os.fspath(root), "", hasher, [(st.st_dev, st.st_ino)])
    return hasher.hexdigest()


def _walk(
    directory: str, prefix: str, hasher: xxhash.xxh3_128, ancestors: list[tuple[int, int]]
) -> None:
    try:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except PermissionError as error:
        raise UndigestableTree(f"cannot list {directory}: {error.strerror}") from error
    for entry in entries:
        relative = prefix + entry.name
        if entry.is_dir():  # follows links, as is_file() below
            st = entry.stat()
            identity = (st.st_dev, st.st_ino)
            if identity in ancestors:
                levels = len(ancestors) - ancestors.index(identity)
                _frame(hasher, b"c", relative, str(levels).encode())
                continue
            _frame(hasher, b"d", relative, b"")
            _walk(entry.path, relative + "/", hasher, [*ancestors, identity])
        elif entry.is_file():
            try:
                digest = file_digest(entry.path)
            except PermissionError as error:
                raise UndigestableTree(f"cannot read {entry.path}") from error
            _frame(hasher, b"f", relative, digest.encode())
        elif entry.is_symlink() and not os.path.exists(entry.path):
            _frame(hasher, b"l", relative, os.fsencode(os.readlink(entry.path)))
        else:
            raise UndigestableTree(f"{entry.path} is not a regular file, directory or link")


def _frame(hasher: xxhash.xxh3_128, kind: bytes, relative: str, payload: bytes) -> None:
    """Feed one entry, length-prefixed so that no two sequences of entries collide."""
    name = os.fsencode(relative)
    hasher.update(kind + struct.pack("<QQ", len(name), len(payload)) + name + payload)

"""Errors of the durable storage, each naming the data file it is about.

These are the failures a node cannot work around: it must stop and tell the operator
which file is at fault. They are distinct from ``boutique.raft.storage.StorageError``
(``CompactedError``, ``UnavailableError``), which are ordinary answers to reads the core
expects and handles. This module must never import sqlite3 or touch a file.
"""

from __future__ import annotations

import os
from pathlib import Path


class DataFileError(Exception):
    """Base class: something is wrong with the data file at ``path``."""

    def __init__(self, path: str | os.PathLike[str], detail: str) -> None:
        self.path = Path(path)
        self.detail = detail
        super().__init__(f"{self.path}: {detail}")


class StorageCorruptError(DataFileError):
    """The file exists but cannot be read as a boutique data file (not a database,
    truncated, damaged pages, wrong schema version, inconsistent rows). The node must not
    start: starting empty over data it could not read would forget promises it made."""


class StorageOpenError(DataFileError):
    """The file or its directory cannot be opened or created (permissions, a path that
    is a file where a directory is needed, the database locked by another process)."""


class StorageFailedError(DataFileError):
    """A commit failed (disk full, I/O error). What was written since the last good
    commit is lost, yet the in-memory image still shows it, so the storage refuses every
    further write: the node must stop and restart from what is on disk."""


class StorageClosedError(DataFileError):
    """A write to a storage that was closed, or to a group that was dropped."""

"""What the Raft core reads from durable storage, and the errors it may meet.

The core never writes: the caller persists what ``Ready`` hands it (see ``rawnode``)
and the core only reads back entries that have left its unstable buffer. Implementations
live in ``boutique.storage``; this module must never import them.
"""

from __future__ import annotations

from typing import Protocol

from .messages import ConfState, Entry, HardState, Snapshot


class StorageError(Exception):
    """Base class of the errors a storage read may raise."""


class CompactedError(StorageError):
    """The requested index lies at or before the snapshot: its entry is gone."""


class UnavailableError(StorageError):
    """The requested index lies beyond the last stored entry."""


class LogStorage(Protocol):
    """The read side of a node's durable log.

    Indices are 1-based. ``first_index() - 1`` is the snapshot index, whose term
    ``term()`` must still answer. With no entries, ``last_index() == first_index() - 1``.
    """

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state and the membership of the latest snapshot."""
        ...

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``. At least one entry is returned even when it alone
        exceeds ``max_size``. Raises ``CompactedError`` if ``lo < first_index()`` and
        ``UnavailableError`` if ``hi > last_index() + 1``."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index``; valid for ``first_index()-1 <= index <=
        last_index()``, else ``CompactedError`` / ``UnavailableError``."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot:
        """The latest snapshot (an empty one at index 0 if none was ever taken)."""
        ...

"""A node's view of its log: what is durable in storage plus what is not yet persisted.

``RaftLog`` joins the stable entries (read through ``LogStorage``) with the *unstable*
tail the core has appended but the caller has not yet persisted, and tracks the commit
and applied indices. It decides what a follower keeps when an AppendRequest overlaps its
log: it truncates only at a real term conflict, never on a mere overlap (§5.3), because
a delayed or duplicated message must not erase entries it does not know about.
"""

from __future__ import annotations

from .messages import Entry, Snapshot
from .storage import CompactedError, LogStorage, UnavailableError


class Unstable:
    """Entries (and possibly a snapshot) accepted in memory but not yet persisted.

    ``offset`` is the index of ``entries[0]``. When an incoming snapshot is pending, it
    precedes the entries.
    """

    __slots__ = ("entries", "offset", "snapshot")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.entries: list[Entry] = []
        self.snapshot: Snapshot | None = None

    def maybe_first_index(self) -> int | None:
        return self.snapshot.meta.index + 1 if self.snapshot is not None else None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.meta.index
        return None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.meta.index == index:
                return self.snapshot.meta.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``index`` are persisted; drop them unless they were replaced."""
        if self.maybe_term(index) == term and index >= self.offset:
            del self.entries[: index + 1 - self.offset]
            self.offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.meta.index == index:
            self.snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.meta.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if first == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif first <= self.offset:
            # Everything unstable is replaced; storage entries from ``first`` on are
            # superseded once the caller persists these (storage truncates on append).
            self.offset = first
            self.entries = list(entries)
        else:
            del self.entries[first - self.offset :]
            self.entries.extend(entries)


class RaftLog:
    """The log of one node: durable storage + unstable tail + commit/applied indices."""

    def __init__(self, storage: LogStorage, applied: int = 0) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        self.committed = first - 1
        self.applied = first - 1
        if applied:
            self.applied = applied
        self.snapshot_index = first - 1

    # --- Reading -----------------------------------------------------------------------

    def first_index(self) -> int:
        index = self.unstable.maybe_first_index()
        return index if index is not None else self.storage.first_index()

    def last_index(self) -> int:
        index = self.unstable.maybe_last_index()
        return index if index is not None else self.storage.last_index()

    def term(self, index: int) -> int:
        """The term at ``index``; 0 for index 0. Raises Compacted/Unavailable."""
        term = self.unstable.maybe_term(index)
        if term is not None:
            return term
        if index == 0:
            return 0
        if index < self.first_index() - 1:
            raise CompactedError(index)
        if index > self.last_index():
            raise UnavailableError(index)
        return self.storage.term(index)

    def term_or_none(self, index: int) -> int | None:
        try:
            return self.term(index)
        except (CompactedError, UnavailableError):
            return None

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        return self.term_or_none(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Is a candidate's log at least as up-to-date as ours (§5.4.1)?"""
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)`` within ``max_size`` bytes (at least one entry)."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        result: list[Entry] = []
        unstable_offset = self.unstable.offset
        if lo < unstable_offset:
            result = self.storage.entries(lo, min(hi, unstable_offset), max_size)
            if len(result) < min(hi, unstable_offset) - lo:
                return result  # size limit reached inside storage
        if hi > unstable_offset:
            start = max(lo, unstable_offset) - unstable_offset
            result = result + self.unstable.entries[start : hi - unstable_offset]
        if max_size is not None:
            return _limit_size(result, max_size)
        return result

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest ``(i, t)`` with ``i <= index`` and ``t <= term`` in our log.

        A follower rejecting ``(index, term)`` answers with this hint so the leader can
        skip past every entry of a conflicting term in one round trip.
        """
        index = min(index, self.last_index())
        while index > 0:
            found = self.term_or_none(index)
            if found is None:
                # Below our snapshot: the leader will have to send one anyway.
                return index, 0
            if found <= term:
                return index, found
            index -= 1
        return 0, 0

    # --- Writing -----------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> int:
        """Leader-side append of new entries at the end of the log."""
        if entries:
            if entries[0].index <= self.committed:
                raise RuntimeError("appending over committed entries")
            self.unstable.truncate_and_append(entries)
        return self.last_index()

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """Follower-side AppendRequest handling. Returns the last index known to match
        the leader, or None if ``(prev_index, prev_term)`` does not match our log."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise RuntimeError(
                    f"entry {conflict} conflicts with committed entry (commit {self.committed})"
                )
            self.truncate_and_append(list(entries[conflict - entries[0].index :]))
        self.commit_to(min(commit, last_new))
        return last_new

    def find_conflict(self, entries: tuple[Entry, ...] | list[Entry]) -> int:
        """Index of the first entry whose term differs from ours, or of the first entry
        past our log; 0 if we already hold every one of them."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def truncate_and_append(self, entries: list[Entry]) -> None:
        self.unstable.truncate_and_append(entries)

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise RuntimeError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def applied_to(self, index: int) -> None:
        if index:
            if index > self.committed or index < self.applied:
                raise RuntimeError(
                    f"applied {index} outside [{self.applied}, committed {self.committed}]"
                )
            self.applied = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the log by ``snapshot`` (follower receiving InstallSnapshot)."""
        self.committed = snapshot.meta.index
        self.unstable.restore(snapshot)
        self.snapshot_index = snapshot.meta.index

    # --- What the caller must persist / apply ---------------------------------------------

    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries)

    def has_next_committed(self) -> bool:
        return self.committed > self.applied and self.unstable.snapshot is None

    def next_committed(self, max_size: int) -> list[Entry]:
        if not self.has_next_committed():
            return []
        lo = max(self.applied + 1, self.first_index())
        return self.slice(lo, self.committed + 1, max_size)


def _limit_size(entries: list[Entry], max_size: int) -> list[Entry]:
    if not entries:
        return entries
    total = entries[0].size()
    for i in range(1, len(entries)):
        total += entries[i].size()
        if total > max_size:
            return entries[:i]
    return entries

"""``MemoryStorage``: a Raft log kept in memory, for tests and for in-memory groups.

It implements the read side the core needs (``boutique.raft.storage.LogStorage``) and
the write side the caller uses to carry out a ``Ready``. A process that restarts with
it starts empty and catches up from its peers, as ``rafted_value`` members do. It is
also the simulator's "disk": what was written here survives a simulated crash.
"""

from __future__ import annotations

from boutique.raft.messages import (
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotData,
    SnapshotMeta,
)
from boutique.raft.storage import CompactedError, UnavailableError


class MemoryStorage:
    """A log whose ``entries[0]`` is a placeholder holding the snapshot's index and term."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self._snapshot = Snapshot()
        self._entries: list[Entry] = [Entry(0, 0)]

    # --- Read side (LogStorage) ---------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.meta.conf

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[0].index + len(self._entries) - 1

    def term(self, index: int) -> int:
        offset = self._entries[0].index
        if index < offset:
            raise CompactedError(index)
        if index - offset >= len(self._entries):
            raise UnavailableError(index)
        return self._entries[index - offset].term

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        offset = self._entries[0].index
        if lo <= offset:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        selected = self._entries[lo - offset : hi - offset]
        if max_size is None or not selected:
            return selected
        total = 0
        for i, entry in enumerate(selected):
            total += entry.size()
            if total > max_size and i > 0:
                return selected[:i]
        return selected

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def clone(self) -> MemoryStorage:
        """An independent copy (entries, hard states and snapshots are immutable, so
        sharing them is safe): what a simulated disk keeps as its synced image."""
        copy = MemoryStorage()
        copy.hard_state = self.hard_state
        copy._snapshot = self._snapshot
        copy._entries = list(self._entries)
        return copy

    # --- Write side ---------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Append, first dropping every stored entry at or after ``entries[0].index``."""
        if not entries:
            return
        offset = self._entries[0].index
        first = entries[0].index
        if first <= offset:
            # Entries the snapshot already covers are dropped.
            entries = entries[offset + 1 - first :]
            if not entries:
                return
            first = entries[0].index
        if first > self.last_index() + 1:
            raise ValueError(f"gap: appending {first} after {self.last_index()}")
        del self._entries[first - offset :]
        self._entries.extend(entries)

    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Install a snapshot received from the leader: the log is replaced by it."""
        if snapshot.meta.index < self._snapshot.meta.index:
            raise ValueError("snapshot is older than the one stored")
        self._snapshot = snapshot
        self._entries = [Entry(snapshot.meta.term, snapshot.meta.index)]

    def create_snapshot(self, index: int, conf: ConfState, data: SnapshotData) -> Snapshot:
        """Record a snapshot of the local state machine taken at applied ``index``."""
        if index <= self._snapshot.meta.index:
            return self._snapshot
        if index > self.last_index():
            raise UnavailableError(index)
        self._snapshot = Snapshot(SnapshotMeta(index, self.term(index), conf), data)
        return self._snapshot

    def stage_snapshot_chunk(self, index: int, piece: bytes, *, first: bool = False) -> None:
        """Nothing to do in memory: ``create_snapshot`` gets the whole data anyway
        (``GroupStorage`` writes a large snapshot ahead, piece by piece)."""

    def compact(self, index: int) -> None:
        """Drop entries up to and including ``index`` (which a snapshot must cover)."""
        offset = self._entries[0].index
        if index <= offset:
            return
        if index > self._snapshot.meta.index:
            raise ValueError("compacting past the latest snapshot")
        self._entries = [Entry(self.term(index), index), *self._entries[index - offset + 1 :]]

    def bootstrap(self, hard_state: HardState, entries: list[Entry]) -> None:
        """Start a founding member: see ``boutique.raft.rawnode.bootstrap``."""
        if self.last_index() != 0:
            raise ValueError("storage is not empty")
        self.append(entries)
        self.hard_state = hard_state


class MemoryNodeStorage:
    """Every group of one node in memory: the in-memory twin of ``SqliteStorage``.

    For groups that need no disk (tests, caches, ``rafted_value``-style members that
    catch up from their peers after a restart). ``commit()`` has nothing to do.
    """

    def __init__(self) -> None:
        self._groups: dict[str, MemoryStorage] = {}

    def group(self, group_id: str) -> MemoryStorage:
        storage = self._groups.get(group_id)
        if storage is None:
            storage = self._groups[group_id] = MemoryStorage()
        return storage

    def groups(self) -> list[str]:
        return sorted(
            name
            for name, storage in self._groups.items()
            if storage.last_index() or storage.hard_state.term
        )

    def drop_group(self, group_id: str) -> None:
        self._groups.pop(group_id, None)

    def pending_writes(self) -> int:
        return 0

    def commit(self) -> None:
        """Nothing to sync: memory is as durable as it gets."""

    def close(self) -> None:
        self._groups.clear()

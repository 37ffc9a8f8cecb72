"""A simulated disk that loses power: after a crash only what was synced is left.

SIGKILL keeps the page cache, so a crash test with real processes cannot tell a
missing fsync from a present one. ``PowerLossDisk`` can. It is one node's disk, and
``open()`` gives a ``PowerLossStorage``: the ``NodeStorage`` a ``RaftHost`` runs on
(same methods as ``MemoryNodeStorage`` and ``SqliteStorage``). Every write lands at once
in the live image the node reads back, and in an unsynced tail; ``commit()`` syncs the
tail into the synced image. ``crash()`` cuts the power: the tail is gone, the open
storage is dead (any further use raises ``PowerLost``), and the next ``open()`` starts
from the synced image, as a restarted node would. ``arm()`` makes the power go out in
the middle of a later write or sync, so a crash can land anywhere in a node's turn.

Two ways to lose the tail:

* whole (the default): the unsynced writes vanish together, as an uncommitted SQLite
  transaction does (``SqliteStorage`` writes nothing to the file before ``commit()``);
* torn, from a seeded ``random.Random``: a prefix of the tail reached the platter in
  order and the last write of it may be cut short (an append keeps only its first
  entries), as with a log file written without a journal. Records are otherwise whole:
  a real log checksums them and drops a half-written one.

Checkers ask ``synced(group)`` "what would survive a power loss now?".

What it must never do: let a write that was not synced survive a crash (beyond the torn
prefix asked for), or share a mutable object between the synced and the live image.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from boutique.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotData
from boutique.storage.memory import MemoryStorage


class PowerLost(Exception):
    """The simulated power went out: this storage (and the node on it) is dead."""


@dataclass(frozen=True, slots=True)
class _Write:
    """One unsynced write, kept to be replayed onto the synced image at ``commit()``."""

    group: str
    kind: str
    args: tuple[Any, ...]


def _replay(groups: dict[str, MemoryStorage], write: _Write) -> None:
    if write.kind == "drop":
        groups.pop(write.group, None)
        return
    storage = groups.get(write.group)
    if storage is None:
        storage = groups[write.group] = MemoryStorage()
    match write.kind, write.args:
        case "append", (list() as entries,):
            storage.append(entries)
        case "hard_state", (HardState() as hard_state,):
            storage.set_hard_state(hard_state)
        case "apply_snapshot", (Snapshot() as snapshot,):
            storage.apply_snapshot(snapshot)
        case "create_snapshot", (int(index), ConfState() as conf, data):
            storage.create_snapshot(index, conf, data)
        case "stage_snapshot_chunk", (int(index), bytes(piece), bool(first)):
            storage.stage_snapshot_chunk(index, piece, first=first)
        case "compact", (int(index),):
            storage.compact(index)
        case "bootstrap", (HardState() as hard_state, list() as entries):
            storage.bootstrap(hard_state, entries)
        case _:
            raise AssertionError(f"unknown write {write!r}")


def _is_empty(storage: MemoryStorage) -> bool:
    return not (storage.last_index() or storage.hard_state.term)


class PowerLossDisk:
    """One node's disk: a synced image, and the live image of the storage open on it."""

    def __init__(self) -> None:
        self._synced: dict[str, MemoryStorage] = {}
        self._live: dict[str, MemoryStorage] = {}
        self._tail: list[_Write] = []
        self._open: PowerLossStorage | None = None
        self._armed: tuple[int, random.Random | None, bool] | None = None
        self.syncs = 0
        """Commits that synced something."""
        self.crashes = 0
        self.lost_writes = 0
        """Unsynced writes a crash (or a close) threw away, over the disk's life."""

    # --- The node's side ----------------------------------------------------------------

    def open(self) -> PowerLossStorage:
        """Start a node on this disk: a storage holding exactly the synced image."""
        if self._open is not None:
            raise RuntimeError("the disk is already in use by a running node")
        self._live = {name: storage.clone() for name, storage in self._synced.items()}
        self._tail = []
        self._open = PowerLossStorage(self)
        return self._open

    # --- The test's side ----------------------------------------------------------------

    def crash(self, tear: random.Random | None = None) -> None:
        """Cut the power now: unsynced writes are lost (a prefix of them survives, its
        last one possibly torn, when ``tear`` is given) and the open storage dies."""
        self._armed = None
        tail, self._tail = self._tail, []
        if tear is not None and tail:
            kept = tear.randint(0, len(tail))
            survivors = tail[:kept]
            if survivors and survivors[-1].kind == "append":
                entries: list[Entry] = survivors[-1].args[0]
                cut = tear.randint(1, len(entries))
                survivors[-1] = _Write(survivors[-1].group, "append", (entries[:cut],))
            for write in survivors:
                _replay(self._synced, write)
            self.lost_writes += len(tail) - kept
        else:
            self.lost_writes += len(tail)
        self.crashes += 1
        self._live = {}
        self._open = None

    def arm(
        self, operations: int, tear: random.Random | None = None, *, syncs_only: bool = False
    ) -> None:
        """Make the power go out at the ``operations``-th write or commit from now
        (1: the very next one; with ``syncs_only``, counting commits only), before it
        takes effect; that call raises ``PowerLost``."""
        if operations < 1:
            raise ValueError("operations must be at least 1")
        self._armed = (operations, tear, syncs_only)

    @property
    def running(self) -> bool:
        """Whether a node has this disk open."""
        return self._open is not None

    def synced(self, group_id: str) -> MemoryStorage | None:
        """What of ``group_id`` would survive a power loss now (do not write to it)."""
        return self._synced.get(group_id)

    def written(self, group_id: str) -> MemoryStorage | None:
        """What the running node wrote of ``group_id``, synced or not (do not write to it)."""
        return self._live.get(group_id)

    def synced_groups(self) -> list[str]:
        return sorted(name for name, s in self._synced.items() if not _is_empty(s))

    # --- Used by PowerLossStorage -------------------------------------------------------

    def _is_open(self, storage: PowerLossStorage) -> bool:
        return self._open is storage

    def _check(self, storage: PowerLossStorage, *, sync: bool) -> None:
        if self._open is not storage:
            raise PowerLost("this storage died with the power (or was closed)")
        if self._armed is not None:
            left, tear, syncs_only = self._armed
            if syncs_only and not sync:
                return
            if left > 1:
                self._armed = (left - 1, tear, syncs_only)
            else:
                self.crash(tear)
                raise PowerLost("the power went out")

    def _write(self, storage: PowerLossStorage, write: _Write) -> None:
        self._check(storage, sync=False)
        # The live image is written first: if the write is refused (a gap, an old
        # snapshot), it raises before anything is queued for the synced image.
        _replay(self._live, write)
        self._tail.append(write)

    def _commit(self, storage: PowerLossStorage) -> None:
        self._check(storage, sync=True)
        if not self._tail:
            return
        for write in self._tail:
            _replay(self._synced, write)
        self._tail = []
        self.syncs += 1

    def _close(self, storage: PowerLossStorage) -> None:
        if self._open is storage:
            # Like SqliteStorage.close: writes not committed are discarded.
            self.lost_writes += len(self._tail)
            self._tail = []
            self._live = {}
            self._open = None


class PowerLossStorage:
    """Every group of one running node on a ``PowerLossDisk`` (a ``NodeStorage``)."""

    def __init__(self, disk: PowerLossDisk) -> None:
        self._disk = disk

    def group(self, group_id: str) -> DiskGroup:
        if not self._disk._is_open(self):
            raise PowerLost("this storage died with the power (or was closed)")
        live = self._disk._live.get(group_id)
        if live is None:
            live = self._disk._live[group_id] = MemoryStorage()
        return DiskGroup(self, group_id, live)

    def groups(self) -> list[str]:
        return sorted(name for name, s in self._disk._live.items() if not _is_empty(s))

    def drop_group(self, group_id: str) -> None:
        if group_id in self._disk._live:
            self._disk._write(self, _Write(group_id, "drop", ()))

    def pending_writes(self) -> int:
        return len(self._disk._tail) if self._disk._is_open(self) else 0

    def commit(self) -> None:
        """Sync: every write made so far survives a later power loss."""
        self._disk._commit(self)

    def close(self) -> None:
        """Stop cleanly; unsynced writes are discarded (as ``SqliteStorage.close``)."""
        self._disk._close(self)


class DiskGroup:
    """One group's storage on a ``PowerLossStorage``: reads from the live image, writes
    through the disk (which keeps them unsynced until the next commit)."""

    def __init__(self, node: PowerLossStorage, group_id: str, live: MemoryStorage) -> None:
        self._node = node
        self._group_id = group_id
        self._live = live

    def _write(self, kind: str, *args: Any) -> None:
        disk = self._node._disk
        if not disk._is_open(self._node):
            raise PowerLost("this storage died with the power (or was closed)")
        if disk._live.get(self._group_id) is not self._live:
            raise ValueError(f"group {self._group_id!r} was dropped from this storage")
        self._node._disk._write(self._node, _Write(self._group_id, kind, args))

    # --- Read side (LogStorage) ---------------------------------------------------------

    @property
    def hard_state(self) -> HardState:
        return self._live.hard_state

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._live.initial_state()

    def first_index(self) -> int:
        return self._live.first_index()

    def last_index(self) -> int:
        return self._live.last_index()

    def term(self, index: int) -> int:
        return self._live.term(index)

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        return self._live.entries(lo, hi, max_size)

    def snapshot(self) -> Snapshot:
        return self._live.snapshot()

    # --- Write side ---------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        if entries:
            self._write("append", list(entries))

    def set_hard_state(self, hard_state: HardState) -> None:
        self._write("hard_state", hard_state)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        self._write("apply_snapshot", snapshot)

    def create_snapshot(self, index: int, conf: ConfState, data: SnapshotData) -> Snapshot:
        if index > self._live.snapshot().meta.index:
            self._write("create_snapshot", index, conf, data)
        return self._live.snapshot()

    def stage_snapshot_chunk(self, index: int, piece: bytes, *, first: bool = False) -> None:
        """A piece of a large snapshot written ahead: nothing a reader sees until
        ``create_snapshot`` (as in ``MemoryStorage``), but a write the power can cut."""
        self._write("stage_snapshot_chunk", index, piece, first)

    def compact(self, index: int) -> None:
        if index > self._live.first_index() - 1:
            self._write("compact", index)

    def bootstrap(self, hard_state: HardState, entries: list[Entry]) -> None:
        self._write("bootstrap", hard_state, list(entries))

"""``SqliteStorage``: the durable Raft state of every group a node hosts, in one SQLite file.

One database file per node holds the log, hard state and latest snapshot of each of its
groups (the meta group and one group per bucket), with the standard library ``sqlite3``
in WAL mode and ``synchronous=FULL``. Each group is reached through a ``GroupStorage``,
which the Raft core reads (``boutique.raft.storage.LogStorage``) and the runtime writes
with the same methods as ``MemoryStorage``.

How a write travels: it is applied at once to the group's in-memory image (a
``MemoryStorage``, so the core reads back what it was handed), and queued. One call to
``SqliteStorage.commit()`` then writes every group's queued writes in ONE transaction
with ONE fsync (group commit). Nothing is durable before ``commit()`` returns, so the
runtime sends ``Ready.persisted_messages`` and client replies only after it.

What this module must never do: pickle anything (entries, hard states and snapshots are
plain SQL columns); write to the file outside ``commit()``; start empty over a file it
could not read (it raises ``StorageCorruptError`` naming the file instead).

Threads: ``commit()`` may run in a worker thread (``trio.to_thread.run_sync``) while the
event loop goes on reading and writing groups; those later writes join the next commit.
Everything but ``commit()`` must be called from one thread.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from boutique.raft.messages import (
    Chunks,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotData,
    SnapshotMeta,
    pieces_of,
)

from .errors import (
    StorageClosedError,
    StorageCorruptError,
    StorageFailedError,
    StorageOpenError,
)
from .memory import MemoryStorage

SCHEMA_VERSION = 2
"""Version 2 added ``snapshot_chunks``; a version 1 file is migrated when opened."""
FORMAT = "boutique-raft-storage"

SWEEP_BYTES = 4 * 1024 * 1024
"""At most about this many bytes of dead rows (entries compacted away, chunks of an
older snapshot) are deleted in one commit: deleting a large row walks all its pages,
so a compaction or snapshot of gigabytes deleted at once would stall a commit for
seconds. Smaller deletions happen at once, in the commit of the write itself."""

SNAPSHOT_CHUNK_BYTES = 16 * 1024 * 1024
"""The largest snapshot chunk row. SQLite refuses a blob over ~1 GB (and a statement
over its length limit), so a large snapshot is never one row; 16 MiB rows keep each
write and read of one row short."""

WAL_AUTOCHECKPOINT_PAGES = 1000
"""Checkpoint the WAL into the database once it holds this many pages (~4 MiB)."""
JOURNAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024
"""After a checkpoint, a WAL grown larger than this (by one big transaction) is cut back."""

_CREATE_CHUNKS = (
    "CREATE TABLE snapshot_chunks ("
    " gid INTEGER NOT NULL, idx INTEGER NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,"
    " PRIMARY KEY (gid, idx, seq))"
)

# ``groups`` holds one row per group: its hard state and its log base, the index and
# term of the entry just before the first stored one (``MemoryStorage``'s placeholder),
# which may lie behind the snapshot when compaction lags it. Rows of the other tables
# point to it by ``gid``, a small integer, so the name is not repeated in every entry.
# ``entries`` is a rowid table with an index on (gid, idx), not a WITHOUT ROWID table:
# those keep whole rows in their b-tree, and rows of 1 KB or more (a bucket value of
# that size) then cost a 4 KB overflow page each and make appends ~7x slower.
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE groups ("
    " gid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    " term INTEGER NOT NULL DEFAULT 0, vote INTEGER NOT NULL DEFAULT 0,"
    " commit_index INTEGER NOT NULL DEFAULT 0,"
    " base_index INTEGER NOT NULL DEFAULT 0, base_term INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE entries ("
    " gid INTEGER NOT NULL, idx INTEGER NOT NULL, term INTEGER NOT NULL,"
    " type INTEGER NOT NULL, data BLOB NOT NULL,"
    " PRIMARY KEY (gid, idx))",
    "CREATE TABLE snapshots ("
    " gid INTEGER PRIMARY KEY, idx INTEGER NOT NULL, term INTEGER NOT NULL,"
    " voters TEXT NOT NULL, learners TEXT NOT NULL, data BLOB NOT NULL)",
    _CREATE_CHUNKS,
)
_TABLES = frozenset({"meta", "groups", "entries", "snapshots", "snapshot_chunks"})
_TABLES_V1 = _TABLES - {"snapshot_chunks"}

INSERT_META = "INSERT INTO meta (key, value) VALUES (?, ?)"
SELECT_META = "SELECT key, value FROM meta"
SELECT_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"
INSERT_GROUP = "INSERT INTO groups (gid, name) VALUES (?, ?)"
SET_HARD_STATE = "UPDATE groups SET term = ?, vote = ?, commit_index = ? WHERE gid = ?"
SET_BASE = "UPDATE groups SET base_index = ?, base_term = ? WHERE gid = ?"
DELETE_GROUP = "DELETE FROM groups WHERE gid = ?"
SELECT_GROUPS = (
    "SELECT gid, name, term, vote, commit_index, base_index, base_term FROM groups ORDER BY gid"
)
INSERT_ENTRY = "INSERT INTO entries (gid, idx, term, type, data) VALUES (?, ?, ?, ?, ?)"
DELETE_ENTRIES_FROM = "DELETE FROM entries WHERE gid = ? AND idx >= ?"
DELETE_ENTRIES_THROUGH = "DELETE FROM entries WHERE gid = ? AND idx <= ?"
DELETE_ALL_ENTRIES = "DELETE FROM entries WHERE gid = ?"
# Entries at or below a group's base are dead (compacted away, their deletion deferred
# to the sweep): they are never loaded.
SELECT_ENTRIES = "SELECT idx, term, type, data FROM entries WHERE gid = ? AND idx > ? ORDER BY idx"
COUNT_ORPHAN_ENTRIES = "SELECT COUNT(*) FROM entries WHERE gid NOT IN (SELECT gid FROM groups)"
DELETE_ENTRIES_AFTER = "DELETE FROM entries WHERE gid = ? AND idx > ?"
SWEEP_ENTRIES = (
    "SELECT rowid, length(data) FROM entries WHERE gid = ?"
    " AND idx <= (SELECT base_index FROM groups WHERE gid = ?) ORDER BY idx LIMIT 256"
)
SWEEP_CHUNKS = (
    "SELECT rowid, length(data) FROM snapshot_chunks WHERE gid = ?"
    " AND idx < (SELECT idx FROM snapshots WHERE gid = ?) LIMIT 64"
)
DELETE_ENTRY_ROW = "DELETE FROM entries WHERE rowid = ?"
DELETE_CHUNK_ROW = "DELETE FROM snapshot_chunks WHERE rowid = ?"
PUT_SNAPSHOT = (
    "INSERT OR REPLACE INTO snapshots (gid, idx, term, voters, learners, data)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
DELETE_SNAPSHOT = "DELETE FROM snapshots WHERE gid = ?"
SELECT_SNAPSHOTS = "SELECT gid, idx, term, voters, learners, data FROM snapshots"
# A snapshot's data is its ``snapshots.data`` (the whole data in files written before
# version 2, empty since) followed by its chunk rows, those of (gid, idx) in ``seq``
# order. Rows of another idx are a snapshot being written ahead (or one a crash cut
# short): they are ignored when loading; rows of an older idx are dead, deleted when
# the next snapshot lands (small ones) or by the sweep (see SWEEP_BYTES).
INSERT_CHUNK = "INSERT OR REPLACE INTO snapshot_chunks (gid, idx, seq, data) VALUES (?, ?, ?, ?)"
DELETE_OLDER_CHUNKS = "DELETE FROM snapshot_chunks WHERE gid = ? AND idx < ?"
DELETE_ALL_CHUNKS = "DELETE FROM snapshot_chunks WHERE gid = ?"
DELETE_CHUNKS_OF = "DELETE FROM snapshot_chunks WHERE gid = ? AND idx = ?"
SELECT_CHUNKS = "SELECT data FROM snapshot_chunks WHERE gid = ? AND idx = ? ORDER BY seq"
MIGRATIONS = {
    "1": (_CREATE_CHUNKS,),
}
"""Statements that bring a file of an older schema version to the current one."""

_Row = tuple[object, ...]
_Op = tuple[str, Sequence[_Row]]
"""One queued statement and its parameter rows, run with ``executemany``."""

_ENTRY_TYPES = {t.value: t for t in EntryType}
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


class SqliteStorage:
    """The data file of one node: every group's Raft state, written by group commit.

    Per event-loop turn the runtime, for each group with a ``Ready``, calls on its
    ``GroupStorage``: ``apply_snapshot(ready.snapshot)`` if any, ``append(ready.entries)``,
    ``set_hard_state(ready.hard_state)`` if any; then ONE ``commit()`` for all groups
    (skippable when no Ready had ``must_sync``: the writes wait for the next one); only
    then sends the ``persisted_messages`` and replies that depend on those writes.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, snapshot_chunk_bytes: int = SNAPSHOT_CHUNK_BYTES
    ) -> None:
        if snapshot_chunk_bytes <= 0:
            raise ValueError(f"snapshot_chunk_bytes must be positive, got {snapshot_chunk_bytes}")
        self.path = Path(path)
        self.snapshot_chunk_bytes = snapshot_chunk_bytes
        self._groups: dict[str, GroupStorage] = {}
        self._next_gid = 1
        self._pending: list[_Op] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._failure: str | None = None
        self._debts: set[int] = set()
        """Groups that may have dead rows left for the sweep (see ``SWEEP_BYTES``)."""
        self._conn: sqlite3.Connection | None = self._open()
        try:
            with _gc_paused():
                self._load(self._conn)
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    # --- Groups -------------------------------------------------------------------------

    def group(self, group_id: str) -> GroupStorage:
        """The storage of ``group_id``; a new, empty one if the group has no state yet."""
        if not isinstance(group_id, str) or not group_id:
            raise ValueError(f"a group id is a non-empty string, not {group_id!r}")
        self._check_usable()
        storage = self._groups.get(group_id)
        if storage is None:
            storage = GroupStorage(self, group_id, self._next_gid, MemoryStorage(), False)
            self._next_gid += 1
            self._groups[group_id] = storage
        return storage

    def groups(self) -> list[str]:
        """Ids of the groups with state (loaded at open, or written since), sorted."""
        return sorted(name for name, group in self._groups.items() if group._persisted)

    def drop_group(self, group_id: str) -> None:
        """Forget a group: its image at once, its rows at the next ``commit()``.

        The dropped ``GroupStorage`` refuses further writes; ``group(group_id)`` later
        starts a new, empty group. Dropping an unknown group does nothing.
        """
        self._check_usable()
        storage = self._groups.pop(group_id, None)
        if storage is None:
            return
        storage._dropped = True
        if storage._persisted:
            key = [(storage._gid,)]
            self._queue(
                [
                    (DELETE_ALL_ENTRIES, key),
                    (DELETE_SNAPSHOT, key),
                    (DELETE_ALL_CHUNKS, key),
                    (DELETE_GROUP, key),
                ]
            )

    # --- Commit and close ---------------------------------------------------------------

    def commit(self) -> None:
        """Write every group's queued writes in one transaction and sync it to disk.

        When this returns, all writes made before the call are durable. If it raises
        ``StorageFailedError`` they are not, and the storage refuses all further use:
        the node must stop and restart from the file.
        """
        with self._commit_lock:
            self._check_usable()
            conn = self._conn
            assert conn is not None
            with self._queue_lock:
                batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
                # One executemany per statement: merging the statements of many groups
                # into fewer calls was measured to gain nothing (the rows cost the time).
                for sql, rows in batch:
                    conn.executemany(sql, rows)
                if self._debts:
                    self._sweep(conn)
                conn.execute("COMMIT")
            except BaseException as exc:
                self._failure = f"a commit failed: {exc!r}"
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StorageFailedError(self.path, self._failure) from exc
                raise

    def _sweep(self, conn: sqlite3.Connection) -> None:
        """Delete up to about ``SWEEP_BYTES`` of dead rows, inside the commit."""
        budget = SWEEP_BYTES
        with self._queue_lock:
            debts = sorted(self._debts)
        for gid in debts[:64]:
            for select, delete in (
                (SWEEP_ENTRIES, DELETE_ENTRY_ROW),
                (SWEEP_CHUNKS, DELETE_CHUNK_ROW),
            ):
                rows = conn.execute(select, (gid, gid)).fetchall()
                doomed = []
                for rowid, size in rows:
                    if budget <= 0:
                        break
                    doomed.append((rowid,))
                    budget -= size or 0
                conn.executemany(delete, doomed)
                if len(doomed) < len(rows):
                    return  # budget spent; the group stays in debt
            with self._queue_lock:
                self._debts.discard(gid)
            if budget <= 0:
                return

    def _owe(self, gid: int) -> None:
        with self._queue_lock:
            self._debts.add(gid)

    def pending_writes(self) -> int:
        """How many statements wait for the next ``commit()`` (0: nothing to sync)."""
        return len(self._pending)

    def close(self) -> None:
        """Close the file. Writes not yet committed are discarded, as in a crash."""
        with self._commit_lock:
            if self._conn is None:
                return
            self._conn.close()
            self._conn = None
            self._pending = []

    def __enter__(self) -> SqliteStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteStorage({str(self.path)!r})"

    # --- Internals ----------------------------------------------------------------------

    def _queue(self, ops: list[_Op]) -> None:
        """Add the statements of one write to the next commit, all together."""
        with self._queue_lock:
            self._pending.extend(ops)

    def _check_usable(self) -> None:
        if self._conn is None:
            raise StorageClosedError(self.path, "the storage is closed")
        if self._failure is not None:
            raise StorageFailedError(self.path, self._failure)

    def _open(self) -> sqlite3.Connection:
        """Open (creating if missing) and validate the file; return the connection."""
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageOpenError(
                path.parent, f"cannot create the data directory: {exc.strerror or exc}"
            ) from exc
        if path.is_dir():
            raise StorageOpenError(path, "is a directory, not a data file")
        if not path.exists():
            wal = path.with_name(path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise StorageCorruptError(
                    path,
                    f"the data file is missing but its write-ahead log {wal.name} is"
                    " there; refusing to start empty (move both away to start afresh)",
                )
            self._create(path)
        size = path.stat().st_size
        if size == 0:
            # A data file is created complete and renamed into place, never empty.
            raise StorageCorruptError(path, "the data file is empty; refusing to start empty")
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _translate(path, exc, "cannot open") from exc
        try:
            _validate(path, conn, size)
            _migrate(path, conn)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StorageOpenError(path, f"cannot switch to WAL journal mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES}")
        except sqlite3.Error as exc:
            conn.close()
            raise _translate(path, exc, "cannot read") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _create(path: Path) -> None:
        """Create a data file with its schema beside ``path``, then rename it into place,
        so a file at ``path`` is always complete (an empty one means damage)."""
        tmp = path.with_name(path.name + ".init")
        try:
            for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
                leftover.unlink(missing_ok=True)
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("BEGIN")
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.executemany(
                    INSERT_META, [("format", FORMAT), ("schema_version", str(SCHEMA_VERSION))]
                )
                conn.execute("COMMIT")
            finally:
                conn.close()
            os.replace(tmp, path)
            _fsync_directory(path.parent)
        except sqlite3.Error as exc:
            raise _translate(tmp, exc, "cannot create") from exc
        except OSError as exc:
            raise StorageOpenError(path, f"cannot create: {exc.strerror or exc}") from exc

    def _load(self, conn: sqlite3.Connection) -> None:
        """Rebuild every group's in-memory image from the file."""
        try:
            snapshots = {
                row[0]: _snapshot_from_row(self.path, row, conn)
                for row in conn.execute(SELECT_SNAPSHOTS).fetchall()
            }
            loaded = 0
            max_gid = 0
            for gid, name, term, vote, commit, base_index, base_term in conn.execute(
                SELECT_GROUPS
            ).fetchall():
                rows = conn.execute(SELECT_ENTRIES, (gid, base_index)).fetchall()
                loaded += len(rows)
                image = _build_image(
                    self.path,
                    name,
                    HardState(term, vote, commit),
                    base_index,
                    base_term,
                    snapshots.pop(gid, None),
                    rows,
                )
                self._groups[name] = GroupStorage(self, name, gid, image, True)
                max_gid = max(max_gid, gid)
            orphans = conn.execute(COUNT_ORPHAN_ENTRIES).fetchone()[0]
        except sqlite3.Error as exc:
            raise _translate(self.path, exc, "cannot read") from exc
        if snapshots:
            raise StorageCorruptError(self.path, f"snapshots of unknown groups {sorted(snapshots)}")
        if orphans:
            raise StorageCorruptError(self.path, f"{orphans} log entries belong to no known group")
        # Dead rows a sweep had not reached before the node stopped.
        self._debts.update(group._gid for group in self._groups.values())
        self._next_gid = max_gid + 1


class GroupStorage:
    """The Raft storage of one group: ``LogStorage`` reads and ``MemoryStorage`` writes.

    Reads answer from the in-memory image, which includes uncommitted writes (the core
    must see what it was handed). Writes change the image at once and become durable at
    the next ``SqliteStorage.commit()``. A write the image refuses (``ValueError``, a gap,
    ``UnavailableError``) queues nothing.
    """

    def __init__(
        self, store: SqliteStorage, group_id: str, gid: int, image: MemoryStorage, persisted: bool
    ) -> None:
        self._store = store
        self._group_id = group_id
        self._gid = gid
        self._image = image
        self._persisted = persisted
        self._dropped = False
        self._staged: tuple[int, int, int] | None = None
        """(index, pieces, bytes) of the snapshot being written ahead, if any."""

    @property
    def group_id(self) -> str:
        return self._group_id

    @property
    def hard_state(self) -> HardState:
        return self._image.hard_state

    def __repr__(self) -> str:
        return f"GroupStorage({self._group_id!r}, {self._store!r})"

    # --- Read side (LogStorage) ---------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._image.initial_state()

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        return self._image.entries(lo, hi, max_size)

    def term(self, index: int) -> int:
        return self._image.term(index)

    def first_index(self) -> int:
        return self._image.first_index()

    def last_index(self) -> int:
        return self._image.last_index()

    def snapshot(self) -> Snapshot:
        return self._image.snapshot()

    # --- Write side ---------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append, first dropping every stored entry at or after ``entries[0].index``."""
        if not entries:
            return
        self._check_writable()
        first = entries[0].index
        if entries[-1].index != first + len(entries) - 1:
            raise ValueError(f"entries {first}..{entries[-1].index} are not contiguous")
        image = self._image
        previous_last = image.last_index()
        image.append(list(entries))
        base = image.first_index() - 1
        if first <= base:
            # The image dropped the entries its snapshot covers; so do we.
            entries = entries[base + 1 - first :]
            if not entries:
                return
            first = entries[0].index
        ops = self._register()
        gid = self._gid
        if first <= previous_last:
            ops.append((DELETE_ENTRIES_FROM, [(gid, first)]))
        ops.append((INSERT_ENTRY, [(gid, e.index, e.term, int(e.type), e.data) for e in entries]))
        self._store._queue(ops)

    def set_hard_state(self, hard_state: HardState) -> None:
        self._check_writable()
        self._image.set_hard_state(hard_state)
        ops = self._register()
        ops.append(
            (SET_HARD_STATE, [(hard_state.term, hard_state.vote, hard_state.commit, self._gid)])
        )
        self._store._queue(ops)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Install a snapshot received from the leader: the log is replaced by it."""
        self._check_writable()
        previous = self._image.snapshot()
        self._image.apply_snapshot(snapshot)
        ops = self._register()
        before = previous
        # Entries after the snapshot conflict with it and go now; those before it (and
        # the older snapshot) are dead, deleted like a compaction's.
        ops.append((DELETE_ENTRIES_AFTER, [(self._gid, snapshot.meta.index)]))
        self._store._owe(self._gid)
        ops.extend(self._snapshot_ops(snapshot, before))
        ops.append((SET_BASE, [(snapshot.meta.index, snapshot.meta.term, self._gid)]))
        self._store._queue(ops)

    def stage_snapshot_chunk(self, index: int, piece: bytes, *, first: bool = False) -> None:
        """Write ahead the next piece of the snapshot at ``index`` that
        ``create_snapshot`` or ``apply_snapshot`` will record, so a large snapshot
        reaches the file over many commits (each short) instead of in one. ``first``
        (or another index) starts afresh, dropping what was staged before."""
        self._check_writable()
        ops = self._register()
        gid = self._gid
        staged = self._staged
        if first or staged is None or staged[0] != index:
            # Rows left by an abandoned build or transfer (or a crash) at this index go.
            ops.append((DELETE_CHUNKS_OF, [(gid, index)]))
            staged = (index, 0, 0)
        _, seq, size = staged
        rows = []
        for part in _split(piece, self._store.snapshot_chunk_bytes):
            rows.append((gid, index, seq, part))
            seq += 1
        ops.append((INSERT_CHUNK, rows))
        self._staged = (index, seq, size + len(piece))
        self._store._queue(ops)

    def create_snapshot(self, index: int, conf: ConfState, data: SnapshotData) -> Snapshot:
        """Record a snapshot of the local state machine taken at applied ``index``.

        The pieces of ``data`` staged ahead for ``index`` (``stage_snapshot_chunk``)
        are not written again: only the rest, and the snapshot's row."""
        self._check_writable()
        before = self._image.snapshot()
        snapshot = self._image.create_snapshot(index, conf, data)
        if snapshot is not before:
            ops = self._register()
            ops.extend(self._snapshot_ops(snapshot, before))
            self._store._queue(ops)
        return snapshot

    def _snapshot_ops(self, snapshot: Snapshot, before: Snapshot) -> list[_Op]:
        """Statements that make ``snapshot`` the group's one snapshot in the file: its
        row (meta only), its chunks (those not staged ahead), no other chunks.

        Staged pieces are taken as the first pieces of ``snapshot.data`` when they were
        staged for its index and their sizes add up to a piece boundary of it (the
        runtime stages exactly the pieces it then records); else all is written anew."""
        gid = self._gid
        index = snapshot.meta.index
        staged, self._staged = self._staged, None
        pieces = pieces_of(snapshot.data)
        skip, seq = 0, 0
        if staged is not None and staged[0] == index:
            covered = 0
            for count, piece in enumerate(pieces, 1):
                covered += len(piece)
                if covered == staged[2]:
                    skip, seq = count, staged[1]
                    break
                if covered > staged[2]:
                    break
        ops: list[_Op] = []
        if len(before.data) <= SWEEP_BYTES:
            ops.append((DELETE_OLDER_CHUNKS, [(gid, index)]))
        else:
            self._store._owe(gid)
        if not skip:
            ops.append((DELETE_CHUNKS_OF, [(gid, index)]))
        rows = []
        for piece in pieces[skip:]:
            for part in _split(piece, self._store.snapshot_chunk_bytes):
                rows.append((gid, index, seq, part))
                seq += 1
        if rows:
            ops.append((INSERT_CHUNK, rows))
        ops.append((PUT_SNAPSHOT, [_snapshot_row(gid, snapshot)]))
        return ops

    def compact(self, index: int) -> None:
        """Drop entries up to and including ``index`` (which a snapshot must cover)."""
        self._check_writable()
        image = self._image
        before = image.first_index()
        # The bytes this compaction frees (only for a valid one; ``compact`` refuses
        # the others below).
        dropped = 0
        if before <= index <= image.snapshot().meta.index:
            dropped = sum(len(e.data) for e in image.entries(before, index + 1))
        image.compact(index)
        base = image.first_index() - 1
        if base + 1 != before:
            ops = self._register()
            if dropped <= SWEEP_BYTES:
                ops.append((DELETE_ENTRIES_THROUGH, [(self._gid, base)]))
            else:
                self._store._owe(self._gid)
            ops.append((SET_BASE, [(base, image.term(base), self._gid)]))
            self._store._queue(ops)

    def bootstrap(self, hard_state: HardState, entries: list[Entry]) -> None:
        """Start a founding member: see ``boutique.raft.rawnode.bootstrap``."""
        self._check_writable()
        if self._image.last_index() != 0:
            raise ValueError("storage is not empty")
        self.append(entries)
        self.set_hard_state(hard_state)

    # --- Internals ----------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._dropped:
            raise StorageClosedError(self._store.path, f"group {self._group_id!r} was dropped")
        self._store._check_usable()

    def _register(self) -> list[_Op]:
        """The ops of a write, starting with the group's row if it has none yet."""
        if self._persisted:
            return []
        self._persisted = True
        return [(INSERT_GROUP, [(self._gid, self._group_id)])]


# --- Helpers ------------------------------------------------------------------------------


def _validate(path: Path, conn: sqlite3.Connection, size: int) -> None:
    """Check the file is an intact boutique data file of the schema version we read."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    if size % page_size:
        raise StorageCorruptError(
            path, f"size {size} is not a whole number of {page_size}-byte pages (truncated?)"
        )
    problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchmany(5)]
    if problems != ["ok"]:
        raise StorageCorruptError(path, "integrity check failed: " + "; ".join(problems))
    tables = {row[0] for row in conn.execute(SELECT_TABLES)}
    if "meta" not in tables:
        raise StorageCorruptError(path, "not a boutique data file (no meta table)")
    meta = dict(conn.execute(SELECT_META).fetchall())
    if meta.get("format") != FORMAT:
        raise StorageCorruptError(path, f"not a boutique data file (format {meta.get('format')!r})")
    if meta.get("schema_version") not in {str(SCHEMA_VERSION), *MIGRATIONS}:
        raise StorageCorruptError(
            path,
            f"schema version {meta.get('schema_version')!r}; this boutique reads version"
            f" {SCHEMA_VERSION}",
        )
    expected = _TABLES if meta["schema_version"] == str(SCHEMA_VERSION) else _TABLES_V1
    if missing := expected - tables:
        raise StorageCorruptError(path, f"tables missing: {sorted(missing)}")


def _migrate(path: Path, conn: sqlite3.Connection) -> None:
    """Bring a file of an older schema version to the current one, in one transaction
    (a crash leaves the old version, migrated again at the next open)."""
    version = dict(conn.execute(SELECT_META).fetchall())["schema_version"]
    if version == str(SCHEMA_VERSION):
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in MIGRATIONS[version]:
            conn.execute(statement)
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _split(piece: bytes, limit: int) -> list[bytes | memoryview]:
    """``piece`` in parts of at most ``limit`` bytes (views, not copies)."""
    if len(piece) <= limit:
        return [piece] if piece else []
    view = memoryview(piece)
    return [view[i : i + limit] for i in range(0, len(piece), limit)]


def _build_image(
    path: Path,
    name: str,
    hard_state: HardState,
    base_index: int,
    base_term: int,
    snapshot: Snapshot | None,
    rows: list[tuple[int, int, int, bytes]],
) -> MemoryStorage:
    """Rebuild the ``MemoryStorage`` a group had, through its public write methods."""
    image = MemoryStorage()
    if rows and (rows[0][0] != base_index + 1 or rows[-1][0] != base_index + len(rows)):
        raise StorageCorruptError(
            path,
            f"group {name!r}: log has holes ({len(rows)} entries between {rows[0][0]} and"
            f" {rows[-1][0]}, after base {base_index})",
        )
    try:
        entries = [Entry(term, index, data, _ENTRY_TYPES[kind]) for index, term, kind, data in rows]
    except KeyError as exc:
        raise StorageCorruptError(path, f"group {name!r}: unknown entry type {exc}") from None
    rows.clear()
    later_snapshot = None
    if snapshot is not None and snapshot.meta.index == base_index:
        if snapshot.meta.term != base_term:
            raise StorageCorruptError(
                path, f"group {name!r}: snapshot term disagrees with log base term"
            )
        image.apply_snapshot(snapshot)
    else:
        if base_index:
            image.apply_snapshot(Snapshot(SnapshotMeta(base_index, base_term)))
        later_snapshot = snapshot
    image.append(entries)
    if later_snapshot is not None:
        meta = later_snapshot.meta
        if not base_index <= meta.index <= image.last_index():
            raise StorageCorruptError(
                path,
                f"group {name!r}: snapshot at {meta.index} outside the log"
                f" {base_index}..{image.last_index()}",
            )
        if image.term(meta.index) != meta.term:
            raise StorageCorruptError(
                path, f"group {name!r}: snapshot term disagrees with the log at {meta.index}"
            )
        image.create_snapshot(meta.index, meta.conf, later_snapshot.data)
    elif base_index and snapshot is None:
        raise StorageCorruptError(path, f"group {name!r}: log compacted but no snapshot")
    image.set_hard_state(hard_state)
    return image


def _snapshot_row(gid: int, snapshot: Snapshot) -> _Row:
    meta = snapshot.meta
    return (
        gid,
        meta.index,
        meta.term,
        json.dumps(sorted(meta.conf.voters)),
        json.dumps(sorted(meta.conf.learners)),
        b"",
    )


def _snapshot_from_row(
    path: Path, row: tuple[int, int, int, str, str, bytes], conn: sqlite3.Connection
) -> Snapshot:
    """The snapshot of a ``snapshots`` row: its own data (a file from before version 2)
    then its chunks, streamed row by row and kept as pieces, never joined."""
    gid, index, term, voters, learners, head = row
    conf = ConfState(_decode_ids(path, gid, voters), _decode_ids(path, gid, learners))
    pieces = [bytes(head)] if head else []
    pieces.extend(bytes(chunk) for (chunk,) in conn.execute(SELECT_CHUNKS, (gid, index)))
    data: SnapshotData = pieces[0] if len(pieces) == 1 else Chunks(pieces)
    if not pieces:
        data = b""
    return Snapshot(SnapshotMeta(index, term, conf), data)


def _decode_ids(path: Path, gid: int, text: str) -> frozenset[int]:
    try:
        ids = json.loads(text)
    except (TypeError, ValueError):
        ids = None
    if not isinstance(ids, list) or not all(type(i) is int for i in ids):
        raise StorageCorruptError(path, f"snapshot of group #{gid}: bad member list {text!r}")
    return frozenset(ids)


def _translate(
    path: Path, exc: sqlite3.Error, doing: str
) -> StorageCorruptError | StorageOpenError:
    """A damaged file is corruption; anything else (permissions, locks) an open error."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _CORRUPT_CODES:
        return StorageCorruptError(path, f"{doing}: {exc}")
    return StorageOpenError(path, f"{doing}: {exc}")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a million entries are created: the
    collections it would run meanwhile find nothing and cost more than the loading."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

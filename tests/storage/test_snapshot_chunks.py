"""Snapshots in the data file as chunk rows: never one blob over the chunk limit, written
ahead over several commits, read back as pieces, and older files (one blob per
snapshot, schema version 1) migrated when opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from boutique.raft.messages import Chunks, ConfState, Entry, HardState, Snapshot, SnapshotMeta
from boutique.storage import sqlite as sqlite_module
from boutique.storage.sqlite import SCHEMA_VERSION, SqliteStorage

CONF = ConfState(frozenset({1, 2, 3}))
LIMIT = 100
"""A tiny chunk limit, so small snapshots span many rows."""


def log(n: int) -> list[Entry]:
    return [Entry(1, i, f"e{i}".encode()) for i in range(1, n + 1)]


def chunk_rows(db: Path) -> list[tuple[int, int, int, int]]:
    """(gid, idx, seq, length) of every chunk row."""
    with sqlite3.connect(db) as conn:
        return [
            (gid, idx, seq, size)
            for gid, idx, seq, size in conn.execute(
                "SELECT gid, idx, seq, length(data) FROM snapshot_chunks ORDER BY gid, idx, seq"
            )
        ]


def test_a_snapshot_is_stored_in_rows_no_larger_than_the_limit(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    data = bytes(range(256)) * 4  # 1024 bytes: 11 rows of at most 100
    with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as store:
        group = store.group("g")
        group.append(log(10))
        group.create_snapshot(8, CONF, data)
        group.set_hard_state(HardState(1, 1, 10))
        store.commit()
    rows = chunk_rows(db)
    assert len(rows) == 11
    assert max(size for *_, size in rows) <= LIMIT
    assert sum(size for *_, size in rows) == len(data)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT length(data) FROM snapshots").fetchall() == [(0,)]
    with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as again:
        snapshot = again.group("g").snapshot()
        assert snapshot.meta == SnapshotMeta(8, 1, CONF)
        assert isinstance(snapshot.data, Chunks)
        assert bytes(snapshot.data) == data


def test_chunked_data_and_a_received_snapshot_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    received = Chunks([b"a" * 150, b"b" * 30, b"c" * 220])
    with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as store:
        group = store.group("g")
        group.apply_snapshot(Snapshot(SnapshotMeta(40, 3, CONF), received))
        group.append([Entry(3, 41, b"x")])
        group.set_hard_state(HardState(3, 1, 41))
        store.commit()
    assert max(size for *_, size in chunk_rows(db)) <= LIMIT
    with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as again:
        group = again.group("g")
        assert group.snapshot() == Snapshot(SnapshotMeta(40, 3, CONF), received)
        assert group.first_index() == 41


def test_staged_pieces_are_written_ahead_and_the_snapshot_lands_at_create(
    tmp_path: Path,
) -> None:
    db = tmp_path / "node.db"
    with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as store:
        group = store.group("g")
        group.append(log(10))
        group.create_snapshot(5, CONF, b"old snapshot")
        store.commit()
        pieces = [b"p" * 120, b"q" * 50, b"r" * 10]
        for piece in pieces:
            group.stage_snapshot_chunk(9, piece)
            store.commit()  # each piece reaches the file in its own commit
        # Before it is recorded, a restart still sees the old snapshot.
        with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as meanwhile:
            assert meanwhile.group("g").snapshot().data == b"old snapshot"
        group.create_snapshot(9, CONF, Chunks(pieces))
        # Only the row is left to write: the pieces are in the file already.
        assert store.pending_writes() == 2  # drop the old chunks, put the row
        store.commit()
    rows = chunk_rows(db)
    assert {idx for _, idx, _, _ in rows} == {9}
    with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as again:
        assert bytes(again.group("g").snapshot().data) == b"".join(pieces)


def test_pieces_staged_for_another_index_are_not_taken_for_the_snapshot(
    tmp_path: Path,
) -> None:
    db = tmp_path / "node.db"
    with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as store:
        group = store.group("g")
        group.append(log(10))
        group.stage_snapshot_chunk(7, b"abandoned")
        store.commit()
        group.create_snapshot(9, CONF, b"the real one")
        store.commit()
    assert {idx for _, idx, _, _ in chunk_rows(db)} == {9}
    with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as again:
        assert again.group("g").snapshot().data == b"the real one"


def test_pieces_left_by_a_crash_mid_build_are_ignored(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as store:
        group = store.group("g")
        group.append(log(10))
        group.create_snapshot(5, CONF, b"kept")
        store.commit()
        group.stage_snapshot_chunk(9, b"half a snapshot")
        store.commit()
    with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as again:
        group = again.group("g")
        assert group.snapshot() == Snapshot(SnapshotMeta(5, 1, CONF), b"kept")
        # The next build at the same index starts afresh, not after the leftovers.
        group.stage_snapshot_chunk(9, b"whole")
        group.create_snapshot(9, CONF, b"whole")
        again.commit()
    with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as third:
        assert third.group("g").snapshot().data == b"whole"


def test_dropping_a_group_drops_its_chunks(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as store:
        group = store.group("g")
        group.append(log(10))
        group.create_snapshot(5, CONF, b"x" * 500)
        store.commit()
        store.drop_group("g")
        store.commit()
    assert chunk_rows(db) == []


def test_bad_chunk_limit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="snapshot_chunk_bytes"):
        SqliteStorage(tmp_path / "node.db", snapshot_chunk_bytes=0)


# --- Migration from schema version 1 ------------------------------------------------------

_V1_SCHEMA = (
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
)


def make_v1_file(db: Path, blob: bytes) -> None:
    """A data file as boutique wrote it before chunks: the snapshot one blob."""
    with sqlite3.connect(db, isolation_level=None) as conn:
        for statement in _V1_SCHEMA:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("format", "boutique-raft-storage"), ("schema_version", "1")],
        )
        conn.execute("INSERT INTO groups VALUES (1, 'g', 2, 1, 12, 8, 2)")
        conn.executemany(
            "INSERT INTO entries VALUES (1, ?, 2, 0, ?)",
            [(i, f"e{i}".encode()) for i in range(9, 13)],
        )
        conn.execute("INSERT INTO snapshots VALUES (1, 10, 2, '[1, 2, 3]', '[]', ?)", (blob,))
    conn.close()


def test_a_version_1_file_opens_migrated_with_its_single_blob_snapshot(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    blob = b"an old snapshot, one blob " * 20
    make_v1_file(db, blob)
    with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as store:
        group = store.group("g")
        assert group.snapshot() == Snapshot(SnapshotMeta(10, 2, CONF), blob)
        assert group.last_index() == 12
        assert group.hard_state == HardState(2, 1, 12)
        # A new snapshot replaces the old blob with chunk rows.
        group.create_snapshot(12, CONF, b"n" * 250)
        store.commit()
    with sqlite3.connect(db) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == (str(SCHEMA_VERSION),)
        assert conn.execute("SELECT length(data) FROM snapshots").fetchall() == [(0,)]
    conn.close()
    with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as again:
        assert again.group("g").snapshot() == Snapshot(SnapshotMeta(12, 2, CONF), b"n" * 250)


# --- Dead rows are deleted a bounded amount per commit ------------------------------------


def count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        n: int = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    conn.close()
    return n


def test_a_big_compaction_and_old_snapshot_are_swept_a_bit_per_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "SWEEP_BYTES", 250)
    db = tmp_path / "node.db"
    with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as store:
        group = store.group("g")
        group.append([Entry(1, i, b"x" * 100) for i in range(1, 41)])
        group.create_snapshot(10, CONF, b"s" * 1000)  # 10 chunk rows
        store.commit()
        group.create_snapshot(35, CONF, b"t" * 300)
        group.compact(30)  # 3000 bytes of entries, over the budget: left to the sweep
        store.commit()
        # At most about the budget was deleted in that commit.
        assert count(db, "entries") >= 40 - 4
        assert count(db, "snapshot_chunks") >= 3 + 10 - 4
        # A restart meanwhile ignores the dead rows.
        with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as meanwhile:
            g = meanwhile.group("g")
            assert (g.first_index(), g.last_index()) == (31, 40)
            assert g.snapshot().data == b"t" * 300
        commits = 0
        while count(db, "entries") > 10 or count(db, "snapshot_chunks") > 3:
            group.set_hard_state(HardState(1, 1, 40))  # any write makes a commit
            store.commit()
            commits += 1
            assert commits < 50
        assert commits >= 5
    with SqliteStorage(db, snapshot_chunk_bytes=LIMIT) as again:
        g = again.group("g")
        assert [e.index for e in g.entries(31, 41)] == list(range(31, 41))


def test_a_small_compaction_is_deleted_at_once(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    with SqliteStorage(db) as store:
        group = store.group("g")
        group.append(log(40))
        group.create_snapshot(35, CONF, b"t")
        group.compact(30)
        store.commit()
    assert count(db, "entries") == 10
